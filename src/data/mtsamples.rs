//! MTSamples (medical transcription samples, CSV or CSV.gz) to JSONL records.
//!
//! Facts that shape the conversion (measured on the 4,999-row file; see datasets/README.md):
//! - The same transcription is listed under several specialties (2,355 distinct non-empty
//!   texts in 4,966 non-empty rows; a note under "Surgery" and "Urology" appears twice).
//!   Rows are grouped by their cleaned text: one document per distinct text, id and split from the
//!   group's smallest `note_id`, so no text lands in two splits.
//! - Line breaks were flattened to commas: `...obesity.,POSTOPERATIVE DIAGNOSIS:  ,Morbid`.
//!   [`clean_text`] puts them back (before an upper-case header, after a period, before a
//!   numbered item) and collapses runs of spaces, so section values are verbatim substrings.
//!
//! Tasks: `sections` (the text of up to 12 frequent, short sections, keys in
//! [`SECTION_KEYS`]) and `specialty` (every specialty the text is listed under).

use super::record::{write_jsonl, Record};
use super::split::{assign, Split, SplitRatio};
use super::DataError;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Answer keys of the `sections` task, in answer order.
pub const SECTION_KEYS: &[&str] = &[
    "chief_complaint",
    "preoperative_diagnosis",
    "postoperative_diagnosis",
    "procedure",
    "anesthesia",
    "estimated_blood_loss",
    "complications",
    "specimens",
    "drains",
    "allergies",
    "medications",
    "impression",
];

/// Upper-case headers (after trimming) and the key each fills; the first header of a key in
/// a note wins.
pub const SECTION_HEADERS: &[(&str, &str)] = &[
    ("CHIEF COMPLAINT", "chief_complaint"),
    ("CC", "chief_complaint"),
    ("PREOPERATIVE DIAGNOSIS", "preoperative_diagnosis"),
    ("PREOPERATIVE DIAGNOSES", "preoperative_diagnosis"),
    ("PRE-OPERATIVE DIAGNOSIS", "preoperative_diagnosis"),
    ("POSTOPERATIVE DIAGNOSIS", "postoperative_diagnosis"),
    ("POSTOPERATIVE DIAGNOSES", "postoperative_diagnosis"),
    ("POST-OPERATIVE DIAGNOSIS", "postoperative_diagnosis"),
    ("PROCEDURE", "procedure"),
    ("PROCEDURES", "procedure"),
    ("PROCEDURE PERFORMED", "procedure"),
    ("PROCEDURES PERFORMED", "procedure"),
    ("OPERATION", "procedure"),
    ("OPERATION PERFORMED", "procedure"),
    ("OPERATIVE PROCEDURE", "procedure"),
    ("NAME OF PROCEDURE", "procedure"),
    ("TITLE OF OPERATION", "procedure"),
    ("ANESTHESIA", "anesthesia"),
    ("TYPE OF ANESTHESIA", "anesthesia"),
    ("ESTIMATED BLOOD LOSS", "estimated_blood_loss"),
    ("EBL", "estimated_blood_loss"),
    ("BLOOD LOSS", "estimated_blood_loss"),
    ("COMPLICATIONS", "complications"),
    ("SPECIMEN", "specimens"),
    ("SPECIMENS", "specimens"),
    ("DRAINS", "drains"),
    ("DRAIN", "drains"),
    ("ALLERGIES", "allergies"),
    ("ALLERGY", "allergies"),
    ("DRUG ALLERGIES", "allergies"),
    ("MEDICATIONS", "medications"),
    ("CURRENT MEDICATIONS", "medications"),
    ("MEDS", "medications"),
    ("HOME MEDICATIONS", "medications"),
    ("IMPRESSION", "impression"),
];

/// A note is left out of the `sections` task when one of its chosen sections is longer
/// than this (narratives under a `PROCEDURE:` header): answers stay short and every
/// present section is in the answer.
pub const MAX_SECTION_CHARS: usize = 400;

/// The 40 `medical_specialty` labels of MTSamples.
pub const SPECIALTIES: &[&str] = &[
    "Allergy / Immunology", "Autopsy", "Bariatrics", "Cardiovascular / Pulmonary", "Chiropractic",
    "Consult - History and Phy.", "Cosmetic / Plastic Surgery", "Dentistry", "Dermatology", "Diets and Nutritions",
    "Discharge Summary", "ENT - Otolaryngology", "Emergency Room Reports", "Endocrinology", "Gastroenterology",
    "General Medicine", "Hematology - Oncology", "Hospice - Palliative Care", "IME-QME-Work Comp etc.", "Lab Medicine - Pathology",
    "Letters", "Nephrology", "Neurology", "Neurosurgery", "Obstetrics / Gynecology", "Office Notes", "Ophthalmology",
    "Orthopedic", "Pain Management", "Pediatrics - Neonatal", "Physical Medicine - Rehab", "Podiatry",
    "Psychiatry / Psychology", "Radiology", "Rheumatology", "SOAP / Chart / Progress Notes", "Sleep Medicine",
    "Speech - Language", "Surgery", "Urology",
];

/// Default instruction of the `specialty` task (names every label).
pub const SPECIALTY_INSTRUCTION: &str = "Classify this medical note. Return compact JSON with key specialties: the list of every \
MTSamples specialty it belongs to, from: Allergy / Immunology, Autopsy, Bariatrics, Cardiovascular / Pulmonary, Chiropractic, \
Consult - History and Phy., Cosmetic / Plastic Surgery, Dentistry, Dermatology, Diets and Nutritions, Discharge Summary, \
ENT - Otolaryngology, Emergency Room Reports, Endocrinology, Gastroenterology, General Medicine, Hematology - Oncology, \
Hospice - Palliative Care, IME-QME-Work Comp etc., Lab Medicine - Pathology, Letters, Nephrology, Neurology, Neurosurgery, \
Obstetrics / Gynecology, Office Notes, Ophthalmology, Orthopedic, Pain Management, Pediatrics - Neonatal, \
Physical Medicine - Rehab, Podiatry, Psychiatry / Psychology, Radiology, Rheumatology, SOAP / Chart / Progress Notes, \
Sleep Medicine, Speech - Language, Surgery, Urology.";

/// Which target to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Task {
    /// Section extraction (`mtsamples_sections`).
    Sections,
    /// Specialty classification (`mtsamples_specialty`).
    Specialty,
}

/// One distinct transcription with every row that lists it.
#[derive(Debug, Clone)]
pub struct Note {
    /// The smallest `note_id` of the group: record id and split key.
    pub note_id: String,
    /// Every `note_id` with this text.
    pub note_ids: Vec<String>,
    /// Sorted, distinct specialty labels.
    pub specialties: Vec<String>,
    /// The raw transcription.
    pub raw: String,
}

/// Counts gathered while reading and converting.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MtStats {
    /// CSV data rows read (bad rows included).
    pub rows: usize,
    /// Rows skipped as malformed (`--skip-bad`), as `file:line: reason`.
    pub bad_rows: Vec<String>,
    /// Rows with an empty transcription.
    pub empty_rows: usize,
    /// Distinct non-empty transcriptions.
    pub documents: usize,
    /// Documents listed under more than one row.
    pub duplicated_documents: usize,
    /// Documents written, per split.
    pub written: BTreeMap<String, usize>,
    /// Documents with none of the chosen sections (sections task).
    pub no_sections: usize,
    /// Documents left out because a chosen section exceeds [`MAX_SECTION_CHARS`], by key.
    pub too_long: BTreeMap<String, usize>,
    /// Written documents that have each answer key (sections) or label (specialty).
    pub field_counts: BTreeMap<String, usize>,
    /// Distinct documents with each upper-case header (all headers, top 40), for choosing keys.
    pub top_headers: Vec<(String, usize)>,
    /// Labels not in [`SPECIALTIES`] (still used).
    pub unknown_labels: BTreeSet<String>,
}

fn open_csv(path: &Path) -> Result<Box<dyn Read>, DataError> {
    let mut file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut magic = [0u8; 2];
    let n = file.read(&mut magic).map_err(|e| DataError::io(path, e))?;
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    Ok(if n == 2 && magic == [0x1f, 0x8b] { Box::new(flate2::read::GzDecoder::new(file)) } else { Box::new(file) })
}

/// Reads the CSV (gzip detected from the content) and groups rows by transcription.
/// Needs the columns `note_id`, `medical_specialty`, `transcription`. A malformed row stops
/// the read with its line unless `skip_bad`.
pub fn read_notes(path: &Path, skip_bad: bool, stats: &mut MtStats) -> Result<Vec<Note>, DataError> {
    let csv_err = |line: usize, reason: String| DataError::Csv { file: path.to_owned(), line, reason };
    let mut rdr = csv::ReaderBuilder::new().from_reader(open_csv(path)?);
    let headers = rdr.headers().map_err(|e| csv_err(1, format!("cannot read the header row: {e}")))?.clone();
    let col = |name: &str| {
        headers.iter().position(|h| h.trim() == name).ok_or_else(|| {
            csv_err(1, format!("no \"{name}\" column (found: {}); an MTSamples CSV has note_id, medical_specialty, transcription", headers.iter().collect::<Vec<_>>().join(", ")))
        })
    };
    let (c_id, c_spec, c_text) = (col("note_id")?, col("medical_specialty")?, col("transcription")?);
    let mut groups: HashMap<String, Note> = HashMap::new();
    for row in rdr.records() {
        stats.rows += 1;
        let checked = row.map_err(|e| (e.position().map_or(stats.rows + 1, |p| p.line() as usize), e.to_string())).and_then(|r| {
            let line = r.position().map_or(stats.rows + 1, |p| p.line() as usize);
            let id = r.get(c_id).unwrap_or("").trim().to_owned();
            if id.is_empty() {
                return Err((line, "empty note_id".to_owned()));
            }
            Ok((id, r.get(c_spec).unwrap_or("").trim().to_owned(), r.get(c_text).unwrap_or("").trim().to_owned()))
        });
        let (id, spec, text) = match checked {
            Ok(v) => v,
            Err((line, reason)) if skip_bad => {
                stats.bad_rows.push(format!("{}:{line}: {reason}", path.display()));
                continue;
            }
            Err((line, reason)) => return Err(csv_err(line, format!("{reason}; fix the row or pass --skip-bad"))),
        };
        if text.is_empty() {
            stats.empty_rows += 1;
            continue;
        }
        // Texts that differ only in flattened line breaks or spacing are the same document.
        let note = groups.entry(clean_text(&text)).or_insert_with(|| Note { note_id: id.clone(), note_ids: vec![], specialties: vec![], raw: text });
        if id_key(&id) < id_key(&note.note_id) {
            note.note_id = id.clone();
        }
        note.note_ids.push(id);
        if !spec.is_empty() && !note.specialties.contains(&spec) {
            note.specialties.push(spec);
        }
    }
    let mut notes: Vec<Note> = groups.into_values().collect();
    for n in &mut notes {
        n.specialties.sort();
    }
    notes.sort_by_key(|n| id_key(&n.note_id));
    stats.documents = notes.len();
    stats.duplicated_documents = notes.iter().filter(|n| n.note_ids.len() > 1).count();
    Ok(notes)
}

/// Numeric ids sort numerically, others after them as text.
fn id_key(id: &str) -> (u64, String) {
    (id.parse::<u64>().unwrap_or(u64::MAX), id.to_owned())
}

/// Length of an upper-case header (`HEADER:` incl. the colon) starting at `s`, if any.
fn header_len(s: &str) -> Option<(usize, &str)> {
    let colon = s.find(':')?;
    let name = &s[..colon];
    let ok = name.len() <= 60
        && name.starts_with(|c: char| c.is_ascii_uppercase())
        && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || " &/()-'".contains(c))
        && name.chars().filter(char::is_ascii_uppercase).count() >= 2;
    ok.then(|| (colon + 1, name.trim()))
}

/// `1. ` / `12. ` at the start of `s`.
fn numbered(s: &str) -> bool {
    s.find(". ").is_some_and(|i| i > 0 && i <= 2 && s[..i].chars().all(|d| d.is_ascii_digit()))
}

/// Restores the line breaks MTSamples flattened to commas and collapses spaces; section
/// headers start lines.
pub fn clean_text(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    let mut after_header = false;
    let mut comma_after_header = false;
    while let Some(c) = rest.chars().next() {
        let next = &rest[c.len_utf8()..];
        if after_header {
            if c == ',' || c.is_whitespace() {
                comma_after_header |= c == ',';
                rest = next;
                continue;
            }
            let new_line = comma_after_header && (numbered(rest) || header_len(rest).is_some());
            out.push(if new_line { '\n' } else { ' ' });
            after_header = false;
            comma_after_header = false;
        }
        let at_line_start = out.is_empty() || out.ends_with('\n');
        if at_line_start {
            if let Some((n, _)) = header_len(rest) {
                out.push_str(&rest[..n]);
                rest = &rest[n..];
                after_header = true;
                continue;
            }
        }
        if c == ',' {
            let ahead = next.trim_start_matches(' ');
            let break_here = header_len(ahead).is_some() || numbered(ahead) || (out.ends_with('.') && !next.starts_with(' '));
            if break_here {
                while out.ends_with(' ') {
                    out.pop();
                }
                out.push('\n');
                rest = ahead;
                continue;
            }
        }
        if c.is_whitespace() {
            if !(out.ends_with(' ') || out.ends_with('\n') || out.is_empty()) {
                out.push(if c == '\n' { '\n' } else { ' ' });
            }
        } else {
            out.push(c);
        }
        rest = next;
    }
    out.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("\n")
}

/// `(header, value)` of every section of a cleaned text, in order.
pub fn sections(clean: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in clean.lines() {
        match header_len(line) {
            Some((n, name)) => out.push((name.to_owned(), line[n..].trim().to_owned())),
            None => {
                if let Some((_, v)) = out.last_mut() {
                    if !v.is_empty() {
                        v.push('\n');
                    }
                    v.push_str(line.trim());
                }
            }
        }
    }
    out
}

/// The `sections` answer of a cleaned text: chosen keys with non-empty values.
pub fn section_target(clean: &str) -> Map<String, Value> {
    let mut target = Map::new();
    for (header, value) in sections(clean) {
        let Some(&(_, key)) = SECTION_HEADERS.iter().find(|(h, _)| *h == header) else { continue };
        if !value.is_empty() && !target.contains_key(key) {
            target.insert(key.to_owned(), Value::String(value));
        }
    }
    target
}

/// Builds the task's records, each with its split (from the group's note_id).
pub fn build_records(notes: &[Note], task: Task, stats: &mut MtStats) -> Vec<(Split, Record)> {
    let mut header_docs: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for note in notes {
        let text = clean_text(&note.raw);
        let distinct: BTreeSet<String> = sections(&text).into_iter().map(|(h, _)| h).collect();
        for h in distinct {
            *header_docs.entry(h).or_default() += 1;
        }
        let (doc_type, target) = match task {
            Task::Sections => {
                let t = section_target(&text);
                if t.is_empty() {
                    stats.no_sections += 1;
                    continue;
                }
                let long: Vec<&String> = t.iter().filter(|(_, v)| v.as_str().is_some_and(|s| s.chars().count() > MAX_SECTION_CHARS)).map(|(k, _)| k).collect();
                if !long.is_empty() {
                    for k in long {
                        *stats.too_long.entry(k.clone()).or_default() += 1;
                    }
                    continue;
                }
                for k in t.keys() {
                    *stats.field_counts.entry(k.clone()).or_default() += 1;
                }
                ("mtsamples_sections", Value::Object(t))
            }
            Task::Specialty => {
                for s in &note.specialties {
                    *stats.field_counts.entry(s.clone()).or_default() += 1;
                    if !SPECIALTIES.contains(&s.as_str()) {
                        stats.unknown_labels.insert(s.clone());
                    }
                }
                ("mtsamples_specialty", json!({ "specialties": note.specialties }))
            }
        };
        let split = assign(&note.note_id, SplitRatio::default());
        *stats.written.entry(split.name().to_owned()).or_default() += 1;
        let rec = Record { id: format!("mts-{}", note.note_id), doc_type: doc_type.into(), text: Some(text), image: None, instruction: None, target };
        out.push((split, rec));
    }
    let mut top: Vec<(String, usize)> = header_docs.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    top.truncate(40);
    stats.top_headers = top;
    out
}

/// `medqlora datasets mtsamples`: reads `csv`, writes `train/val/test.jsonl`, `stats.json`
/// and `stats.md` under `out`; returns the stats.
pub fn convert(csv: &Path, task: Task, out: &Path, skip_bad: bool) -> Result<MtStats, DataError> {
    let mut stats = MtStats::default();
    let notes = read_notes(csv, skip_bad, &mut stats)?;
    let records = build_records(&notes, task, &mut stats);
    std::fs::create_dir_all(out).map_err(|e| DataError::io(out, e))?;
    for split in Split::ALL {
        let part: Vec<Record> = records.iter().filter(|(s, _)| *s == split).map(|(_, r)| r.clone()).collect();
        write_jsonl(&out.join(format!("{split}.jsonl")), &part)?;
    }
    let json_path = out.join("stats.json");
    let text = serde_json::to_string_pretty(&stats).expect("stats serialize");
    std::fs::write(&json_path, text + "\n").map_err(|e| DataError::io(&json_path, e))?;
    let md_path: PathBuf = out.join("stats.md");
    std::fs::write(&md_path, stats_markdown(&stats, csv, task)).map_err(|e| DataError::io(&md_path, e))?;
    Ok(stats)
}

/// A human-readable summary of [`MtStats`].
pub fn stats_markdown(s: &MtStats, csv: &Path, task: Task) -> String {
    let mut md = format!("# MTSamples -> {task:?}\n\nsource: {}\n\n", csv.display());
    md += &format!(
        "- rows: {} ({} empty transcriptions, {} bad rows skipped)\n- distinct documents: {} ({} listed under several rows)\n",
        s.rows, s.empty_rows, s.bad_rows.len(), s.documents, s.duplicated_documents
    );
    if task == Task::Sections {
        md += &format!("- left out: {} without any chosen section, over {MAX_SECTION_CHARS} chars: {:?}\n", s.no_sections, s.too_long);
    }
    md += &format!("- written: {}\n\n| key | documents |\n| --- | ---: |\n", s.written.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "));
    let mut fields: Vec<_> = s.field_counts.iter().collect();
    fields.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (k, v) in fields {
        md += &format!("| {k} | {v} |\n");
    }
    md += "\n## Most frequent headers (distinct documents)\n\n| header | documents |\n| --- | ---: |\n";
    for (h, n) in &s.top_headers {
        md += &format!("| {h} | {n} |\n");
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restores_lines_and_reads_sections() {
        let raw = "PREOPERATIVE DIAGNOSIS: , Morbid obesity.,POSTOPERATIVE DIAGNOSIS:  ,Morbid obesity.,PROCEDURE: , Laparoscopic bypass, with EEA.,PLAN:,1.  Zyrtec.,2.  Nasonex two sprays.";
        let clean = clean_text(raw);
        assert_eq!(
            clean,
            "PREOPERATIVE DIAGNOSIS: Morbid obesity.\nPOSTOPERATIVE DIAGNOSIS: Morbid obesity.\nPROCEDURE: Laparoscopic bypass, with EEA.\nPLAN:\n1. Zyrtec.\n2. Nasonex two sprays."
        );
        let t = section_target(&clean);
        assert_eq!(t["procedure"], "Laparoscopic bypass, with EEA.");
        assert_eq!(t.len(), 3, "PLAN is not a chosen key: {t:?}");
        assert_eq!(sections(&clean)[3], ("PLAN".to_owned(), "1. Zyrtec.\n2. Nasonex two sprays.".to_owned()));
        assert!(header_len("Vitals: 120").is_none() && header_len("I: x").is_none());
    }
}
