//! `medqlora datasets`: build JSONL datasets (MTSamples, synthetic documents) and check files.

use crate::data::mtsamples::{self, Task};
use crate::data::read_jsonl;
use crate::data::synth::{self, render::RenderOptions, SynthKind};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Dataset commands.
#[derive(clap::Subcommand, Debug)]
pub enum DatasetsCommand {
    /// MTSamples CSV(.gz) -> train/val/test.jsonl + stats (split by a hash of note_id).
    Mtsamples(MtsamplesArgs),
    /// Synthetic clinical documents with ground truth (split by a hash of the record id).
    Synth(SynthArgs),
    /// Validate a JSONL dataset and count its records.
    Check(CheckArgs),
}

/// `datasets mtsamples` flags.
#[derive(clap::Args, Debug)]
pub struct MtsamplesArgs {
    /// mtsamples.csv or mtsamples.csv.gz.
    #[arg(long)]
    pub csv: PathBuf,
    /// sections (section extraction) or specialty (classification).
    #[arg(long, value_enum)]
    pub task: Task,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Skip malformed CSV rows (listed in stats.json) instead of stopping.
    #[arg(long)]
    pub skip_bad: bool,
}

/// `datasets synth` flags.
#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    /// icu_flowsheet, cardiology, lab_panel, operative_note, or all.
    #[arg(long, value_enum)]
    pub kind: SynthKind,
    /// Documents per kind.
    #[arg(long)]
    pub n: usize,
    /// Seed: same seed and n, byte-identical output.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Also draw every document to images/<id>.png and write <split>.image.jsonl.
    #[arg(long)]
    pub render: bool,
    /// Largest page rotation in degrees (0: none).
    #[arg(long, default_value_t = 1.5)]
    pub max_skew: f32,
    /// Pixel noise amplitude, fraction of full scale (0: none).
    #[arg(long, default_value_t = 0.04)]
    pub noise: f32,
}

/// `datasets check` flags.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// A JSONL dataset.
    pub file: PathBuf,
    /// Report bad lines and count the rest instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
    /// Also tokenize every text record with this model folder's tokenizer and chat template
    /// and print sequence / answer lengths.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Token budget to check against (records longer than this get their document cut).
    #[arg(long, default_value_t = 2048)]
    pub max_len: usize,
}

/// Prints token-length percentiles of full sequences and answers, and how many records the
/// budget cuts or cannot hold.
fn token_lengths(records: &[crate::data::Record], model: &std::path::Path, max_len: usize) -> anyhow::Result<()> {
    let tok = crate::tokenizer::Tokenizer::from_model_dir(model)?;
    let template = crate::chat::ChatTemplate::from_model_dir(model);
    let (mut total, mut answer, mut too_long) = (Vec::new(), Vec::new(), 0usize);
    for r in records.iter().filter(|r| r.image.is_none()) {
        let enc = crate::data::encode_record(&tok, &template, r, usize::MAX)?;
        total.push(enc.input_ids.len());
        answer.push(enc.loss_mask.iter().filter(|&&m| m).count());
        if let Err(crate::data::DataError::TooLong { .. }) = crate::data::encode_record(&tok, &template, r, max_len) {
            too_long += 1;
        }
    }
    anyhow::ensure!(!total.is_empty(), "no text records to tokenize");
    let pct = |v: &mut Vec<usize>, p: f64| {
        v.sort_unstable();
        v[((v.len() - 1) as f64 * p).round() as usize]
    };
    let over = total.iter().filter(|&&n| n > max_len).count();
    println!(
        "tokens per record: median {}, p90 {}, max {}; answer tokens: median {}, p90 {}, max {}",
        pct(&mut total, 0.5),
        pct(&mut total, 0.9),
        pct(&mut total, 1.0),
        pct(&mut answer, 0.5),
        pct(&mut answer, 0.9),
        pct(&mut answer, 1.0)
    );
    println!("{over} of {} records exceed {max_len} tokens (document cut); {too_long} cannot fit at all", total.len());
    Ok(())
}

/// Entry point of `medqlora datasets`.
pub fn run(cmd: DatasetsCommand) -> anyhow::Result<()> {
    match cmd {
        DatasetsCommand::Mtsamples(a) => {
            let s = mtsamples::convert(&a.csv, a.task, &a.out, a.skip_bad)?;
            eprintln!(
                "{} rows, {} distinct documents ({} listed more than once), {} empty; written {:?} to {}",
                s.rows,
                s.documents,
                s.duplicated_documents,
                s.empty_rows,
                s.written,
                a.out.display()
            );
            for b in &s.bad_rows {
                eprintln!("skipped {b}");
            }
        }
        DatasetsCommand::Synth(a) => {
            anyhow::ensure!(a.max_skew >= 0.0 && a.max_skew <= 15.0, "--max-skew must be in 0..=15 degrees");
            anyhow::ensure!(a.noise >= 0.0 && a.noise <= 1.0, "--noise must be in 0..=1");
            let opts = RenderOptions { max_skew_deg: a.max_skew, noise: a.noise, ..Default::default() };
            let s = synth::write(a.kind, a.n, a.seed, &a.out, a.render.then_some(&opts))?;
            eprintln!("written {:?} ({} images) to {}; layouts per kind {:?}", s.written, s.images, a.out.display(), s.layouts);
        }
        DatasetsCommand::Check(a) => {
            let ds = read_jsonl(&a.file, a.skip_bad)?;
            let mut by_type: BTreeMap<&str, usize> = BTreeMap::new();
            for r in &ds.records {
                *by_type.entry(&r.doc_type).or_default() += 1;
            }
            println!("{}: {} records {:?}, {} bad lines", a.file.display(), ds.records.len(), by_type, ds.skipped.len());
            for b in &ds.skipped {
                println!("bad: {b}");
            }
            if let Some(model) = &a.model {
                token_lengths(&ds.records, model, a.max_len)?;
            }
        }
    }
    Ok(())
}
