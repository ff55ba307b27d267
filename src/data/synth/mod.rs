//! Synthetic structured clinical documents with their ground truth.
//!
//! Four kinds (ICU flowsheet, cardiology note, lab panel, operative note), each with three
//! layouts and several phrasings, built as a list of [`Block`]s: the same blocks become the
//! text form ([`Doc::to_text`]) and, with `--render`, a PNG ([`render`]). Every target value
//! is written in the document (the model can extract it) and answers stay small (4-11 keys,
//! short values). A seeded SplitMix64 stream (ours, so output never changes with a crate
//! update) drives everything: same seed and count, byte-identical files.

pub mod cardiology;
pub mod icu_flowsheet;
pub mod lab_panel;
pub mod operative_note;
pub mod render;

use super::record::{write_jsonl, Record};
use super::split::{assign, fnv1a64, Split, SplitRatio};
use super::DataError;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// Which document kind to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SynthKind {
    /// ICU vital-sign flowsheet with infusions and allergies.
    IcuFlowsheet,
    /// Cardiology consult / echo report / clinic letter.
    Cardiology,
    /// Laboratory panel with reference ranges and H/L flags.
    LabPanel,
    /// Operative note.
    OperativeNote,
    /// All four, `n` documents each.
    All,
}

impl SynthKind {
    /// The four concrete kinds.
    pub const CONCRETE: [SynthKind; 4] = [SynthKind::IcuFlowsheet, SynthKind::Cardiology, SynthKind::LabPanel, SynthKind::OperativeNote];

    /// The `doc_type` of the records.
    pub fn doc_type(self) -> &'static str {
        match self {
            SynthKind::IcuFlowsheet => "icu_flowsheet",
            SynthKind::Cardiology => "cardiology",
            SynthKind::LabPanel => "lab_panel",
            SynthKind::OperativeNote => "operative_note",
            SynthKind::All => "all",
        }
    }

    fn kinds(self) -> Vec<SynthKind> {
        if self == SynthKind::All { Self::CONCRETE.to_vec() } else { vec![self] }
    }
}

/// SplitMix64: a tiny, fixed, seedable generator.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A stream from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform integer in `lo..=hi`.
    pub fn int(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % ((hi - lo + 1) as u64)) as i64
    }
    /// Uniform float in `[lo, hi)` rounded to `decimals`.
    pub fn float(&mut self, lo: f64, hi: f64, decimals: u32) -> f64 {
        round(lo + self.unit() * (hi - lo), decimals)
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    /// One element.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next_u64() % items.len() as u64) as usize]
    }
    /// `k` distinct elements in their original order.
    pub fn sample<T: Clone>(&mut self, items: &[T], k: usize) -> Vec<T> {
        let mut idx: Vec<usize> = (0..items.len()).collect();
        for i in 0..k.min(idx.len()) {
            let j = i + (self.next_u64() % (idx.len() - i) as u64) as usize;
            idx.swap(i, j);
        }
        let mut chosen: Vec<usize> = idx[..k.min(items.len())].to_vec();
        chosen.sort_unstable();
        chosen.into_iter().map(|i| items[i].clone()).collect()
    }
}

/// `x` rounded to `decimals` places.
pub fn round(x: f64, decimals: u32) -> f64 {
    let f = 10f64.powi(decimals as i32);
    (x * f).round() / f
}

/// A number as the document prints it (fixed decimals).
pub fn fmt_num(x: f64, decimals: u32) -> String {
    format!("{x:.*}", decimals as usize)
}

/// A JSON number: integer when `decimals` is 0.
pub fn json_num(x: f64, decimals: u32) -> Value {
    if decimals == 0 { Value::from(x.round() as i64) } else { Value::from(round(x, decimals)) }
}

/// One visual element of a document.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    /// Large centered title.
    Title(String),
    /// Bold section heading.
    Heading(String),
    /// A line (or paragraph, wrapped when rendered).
    Line(String),
    /// `label: value` rows, labels aligned.
    Fields(Vec<(String, String)>),
    /// A table with a header row.
    Table {
        /// Column names.
        header: Vec<String>,
        /// Cells, one vector per row.
        rows: Vec<Vec<String>>,
    },
    /// Vertical space.
    Gap,
}

/// A generated document and its answer.
#[derive(Debug, Clone)]
pub struct Doc {
    /// Blocks in reading order.
    pub blocks: Vec<Block>,
    /// The ground truth.
    pub target: Value,
    /// Which layout produced it (0, 1, 2).
    pub layout: usize,
}

impl Doc {
    /// Plain-text form: tables as `|`-separated aligned columns.
    pub fn to_text(&self) -> String {
        let mut lines: Vec<String> = Vec::new();
        for b in &self.blocks {
            match b {
                Block::Title(t) => {
                    lines.push(t.clone());
                    lines.push(String::new());
                }
                Block::Heading(h) => lines.push(h.clone()),
                Block::Line(l) => lines.push(l.clone()),
                Block::Fields(f) => {
                    let w = f.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
                    lines.extend(f.iter().map(|(k, v)| format!("{:<w$} {v}", format!("{k}:"), w = w + 1)));
                }
                Block::Table { header, rows } => {
                    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
                    for r in rows {
                        for (i, c) in r.iter().enumerate() {
                            widths[i] = widths[i].max(c.chars().count());
                        }
                    }
                    let fmt = |cells: &Vec<String>| {
                        cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect::<Vec<_>>().join(" | ").trim_end().to_owned()
                    };
                    lines.push(fmt(header));
                    for r in rows {
                        lines.push(fmt(r));
                    }
                }
                Block::Gap => lines.push(String::new()),
            }
        }
        let mut text = lines.join("\n");
        while text.ends_with('\n') {
            text.pop();
        }
        text
    }
}

/// Shared vocabulary: people, allergies.
pub mod vocab {
    /// Given names.
    pub const FIRST: &[&str] = &[
        "Maria", "James", "Aisha", "Robert", "Chen", "Linda", "Omar", "Patricia", "David", "Sofia", "Kwame", "Elena", "Thomas",
        "Priya", "Michael", "Hannah", "Luis", "Grace", "Ivan", "Fatima",
    ];
    /// Family names.
    pub const LAST: &[&str] = &[
        "Garcia", "Nguyen", "Okafor", "Smith", "Kowalski", "Haddad", "Johnson", "Patel", "Rossi", "Kim", "Mensah", "Novak",
        "Brown", "Silva", "Larsen", "Cohen", "Murphy", "Tanaka", "Dubois", "Ahmed",
    ];
    /// Drug and other allergies.
    pub const ALLERGIES: &[&str] = &["penicillin", "sulfa", "latex", "morphine", "iodinated contrast", "codeine", "amoxicillin", "aspirin", "shellfish"];
}

/// `First Last`.
pub fn person(rng: &mut Rng) -> String {
    format!("{} {}", rng.pick(vocab::FIRST), rng.pick(vocab::LAST))
}

/// 0-2 allergies (half the patients have none).
pub fn allergies(rng: &mut Rng) -> Vec<String> {
    if rng.chance(0.5) {
        return vec![];
    }
    let k = rng.int(1, 2) as usize;
    rng.sample(vocab::ALLERGIES, k).into_iter().map(str::to_owned).collect()
}

/// How the document writes an allergy list.
pub fn allergy_text(rng: &mut Rng, list: &[String]) -> String {
    if list.is_empty() {
        rng.pick(&["NKDA", "No known drug allergies", "None known"]).to_string()
    } else {
        list.join(", ")
    }
}

/// A date `(year, month, day)` in 2023-2025.
pub fn date(rng: &mut Rng) -> (i64, i64, i64) {
    (rng.int(2023, 2025), rng.int(1, 12), rng.int(1, 28))
}

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// A date in one of three printed styles.
pub fn date_text(rng: &mut Rng, (y, m, d): (i64, i64, i64)) -> String {
    match rng.int(0, 2) {
        0 => format!("{y}-{m:02}-{d:02}"),
        1 => format!("{m:02}/{d:02}/{y}"),
        _ => format!("{d:02}-{}-{y}", MONTHS[(m - 1) as usize]),
    }
}

/// One document of `kind` from its own stream.
pub fn generate_doc(kind: SynthKind, rng: &mut Rng) -> Doc {
    match kind {
        SynthKind::IcuFlowsheet => icu_flowsheet::generate(rng),
        SynthKind::Cardiology => cardiology::generate(rng),
        SynthKind::LabPanel => lab_panel::generate(rng),
        SynthKind::OperativeNote => operative_note::generate(rng),
        SynthKind::All => unreachable!("generate_doc takes a concrete kind"),
    }
}

/// Records `0..n` of `kind` (each concrete kind for `All`) for `seed`: document `i` depends
/// only on `(kind, seed, i)`. Ids are `<doc_type>-s<seed>-<i>`.
pub fn generate(kind: SynthKind, n: usize, seed: u64) -> Vec<(Record, Doc)> {
    let mut out = Vec::new();
    for k in kind.kinds() {
        for i in 0..n {
            let stream = fnv1a64(format!("{}/{seed}/{i}", k.doc_type()).as_bytes());
            let doc = generate_doc(k, &mut Rng::new(stream));
            let rec = Record {
                id: format!("{}-s{seed}-{i:05}", k.doc_type()),
                doc_type: k.doc_type().to_owned(),
                text: Some(doc.to_text()),
                image: None,
                instruction: None,
                target: doc.target.clone(),
            };
            out.push((rec, doc));
        }
    }
    out
}

/// Counts of one synth run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SynthStats {
    /// Records per split.
    pub written: BTreeMap<String, usize>,
    /// Records per doc_type and layout.
    pub layouts: BTreeMap<String, [usize; 3]>,
    /// PNG files written.
    pub images: usize,
}

/// `medqlora datasets synth`: writes `train/val/test.jsonl` (split by a hash of the id),
/// with `render` also `images/<id>.png` and `train/val/test.image.jsonl` (image records),
/// plus `stats.json`.
pub fn write(kind: SynthKind, n: usize, seed: u64, out: &Path, render_opts: Option<&render::RenderOptions>) -> Result<SynthStats, DataError> {
    if n == 0 {
        return Err(DataError::Invalid("--n must be at least 1".into()));
    }
    std::fs::create_dir_all(out).map_err(|e| DataError::io(out, e))?;
    let docs = generate(kind, n, seed);
    let mut stats = SynthStats::default();
    let mut by_split: BTreeMap<Split, (Vec<Record>, Vec<Record>)> = BTreeMap::new();
    if render_opts.is_some() {
        let dir = out.join("images");
        std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
    }
    for (rec, doc) in &docs {
        let split = assign(&rec.id, SplitRatio::default());
        stats.layouts.entry(rec.doc_type.clone()).or_default()[doc.layout] += 1;
        let entry = by_split.entry(split).or_default();
        entry.0.push(rec.clone());
        if let Some(opts) = render_opts {
            let path = out.join("images").join(format!("{}.png", rec.id));
            let stream = fnv1a64(format!("render/{}", rec.id).as_bytes());
            render::render_png(&doc.blocks, opts, &mut Rng::new(stream), &path)?;
            stats.images += 1;
            entry.1.push(Record { text: None, image: Some(path), ..rec.clone() });
        }
    }
    for split in Split::ALL {
        let (text, image) = by_split.remove(&split).unwrap_or_default();
        stats.written.insert(split.name().to_owned(), text.len());
        write_jsonl(&out.join(format!("{split}.jsonl")), &text)?;
        if render_opts.is_some() {
            write_jsonl(&out.join(format!("{split}.image.jsonl")), &image)?;
        }
    }
    let path = out.join("stats.json");
    std::fs::write(&path, serde_json::to_string_pretty(&stats).expect("stats serialize") + "\n").map_err(|e| DataError::io(&path, e))?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_fixed() {
        // SplitMix64 reference output for seed 0.
        let mut r = Rng::new(0);
        assert_eq!(r.next_u64(), 0xe220a8397b1dcdaf);
        assert_eq!(r.next_u64(), 0x6e789e6aa1b965f4);
        let s = Rng::new(5).sample(&[1, 2, 3, 4, 5], 3);
        assert_eq!(s.len(), 3);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
    }
}
