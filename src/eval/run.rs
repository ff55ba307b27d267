//! Runs a model over records: prompts in batches (sorted by length so a batch pads little),
//! batched greedy generation, answers scored into an [`EvalReport`]. Deterministic: greedy
//! decoding, fixed order, no timings in the report.

use super::report::{AnswerEnd, EvalReport};
use super::score::{score_answer, DEFAULT_REL_TOL};
use super::EvalError;
use crate::chat::ChatTemplate;
use crate::data::{encode_record, Record};
use crate::generate::{generate_batch, SamplingConfig, StopReason};
use crate::model::Qwen2ForCausalLM;
use crate::tokenizer::Tokenizer;
use burn::tensor::backend::Backend;

/// How to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalOptions {
    /// Answer budget in tokens.
    pub max_new_tokens: usize,
    /// Prompts per generation batch.
    pub batch_size: usize,
    /// Evaluate only the first `limit` records.
    pub limit: Option<usize>,
    /// Prompt budget in tokens: longer documents are cut as in training.
    pub max_prompt_tokens: usize,
    /// Relative tolerance for numbers.
    pub rel_tol: f64,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Label stored in the report (model, adapter, data).
    pub label: String,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self { max_new_tokens: 256, batch_size: 8, limit: None, max_prompt_tokens: 2048, rel_tol: DEFAULT_REL_TOL, progress: false, label: String::new() }
    }
}

/// The prompt ids of a record: its training encoding without the answer (so documents are
/// truncated exactly as in training).
fn prompt_ids(tok: &Tokenizer, template: &ChatTemplate, rec: &Record, max_prompt_tokens: usize) -> Result<Vec<u32>, EvalError> {
    // Budget the answer's own length on top, so only the prompt is held to max_prompt_tokens.
    let answer = tok.encode(&crate::data::target_text(rec)).map_err(|e| EvalError::Decode { id: rec.id.clone(), problem: e.to_string() })?.len() + 2;
    let enc = encode_record(tok, template, rec, max_prompt_tokens + answer)?;
    let n = enc.loss_mask.iter().position(|&m| m).unwrap_or(enc.input_ids.len());
    Ok(enc.input_ids[..n].to_vec())
}

/// Generates an answer for every record (greedy, batched) and scores it.
pub fn evaluate<B: Backend>(
    model: &Qwen2ForCausalLM<B>,
    tok: &Tokenizer,
    template: &ChatTemplate,
    records: &[Record],
    opts: &EvalOptions,
) -> Result<EvalReport, EvalError> {
    if opts.batch_size == 0 || opts.max_new_tokens == 0 {
        return Err(EvalError::Options("batch size and max new tokens must be at least 1".into()));
    }
    let records = &records[..opts.limit.unwrap_or(records.len()).min(records.len())];
    if records.is_empty() {
        return Err(EvalError::Empty);
    }
    let mut prompts = Vec::with_capacity(records.len());
    for rec in records {
        if rec.image.is_some() {
            return Err(EvalError::ImageRecord { id: rec.id.clone() });
        }
        prompts.push(prompt_ids(tok, template, rec, opts.max_prompt_tokens)?);
    }
    let mut order: Vec<usize> = (0..records.len()).collect();
    order.sort_by_key(|&i| (prompts[i].len(), i));
    let cfg = SamplingConfig::greedy(opts.max_new_tokens, tok.stop_ids());
    let bar = if opts.progress { indicatif::ProgressBar::new(records.len() as u64) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("eval {bar:30} {pos}/{len} records [{elapsed_precise} < {eta_precise}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut answers: Vec<Option<(String, AnswerEnd)>> = vec![None; records.len()];
    let batches = records.len().div_ceil(opts.batch_size);
    for (b, chunk) in order.chunks(opts.batch_size).enumerate() {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
        let t0 = std::time::Instant::now();
        let gens = generate_batch(model, &batch, &cfg);
        if opts.progress && bar.is_hidden() {
            // Logs and device runs have no terminal for the bar: a line per batch tells where
            // the time goes (the first GPU batches compile kernels).
            let new_tokens: usize = gens.iter().map(|g| g.tokens.len()).sum();
            eprintln!(
                "eval batch {}/{batches}: {} prompts of {}-{} tokens, {new_tokens} answer tokens in {:.1} s",
                b + 1,
                chunk.len(),
                batch.first().map_or(0, Vec::len),
                batch.last().map_or(0, Vec::len),
                t0.elapsed().as_secs_f64()
            );
        }
        for (&i, g) in chunk.iter().zip(gens) {
            let text = tok.decode(&g.tokens).map_err(|e| EvalError::Decode { id: records[i].id.clone(), problem: e.to_string() })?;
            answers[i] = Some((text, AnswerEnd { new_tokens: g.tokens.len(), hit_budget: g.stop == StopReason::Length }));
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let mut report = EvalReport { label: opts.label.clone(), rel_tol: opts.rel_tol, ..Default::default() };
    for (rec, answer) in records.iter().zip(answers) {
        let (answer, end) = answer.unwrap_or_default();
        report.add(&rec.id, &rec.doc_type, &score_answer(&rec.target, &answer, opts.rel_tol), &answer, end);
    }
    Ok(report)
}
