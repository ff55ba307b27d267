//! The evaluation report: totals, by doc_type, by field, per record; written as
//! `report.json` (read back as a `--compare` baseline) and `report.md` (side by side with the
//! baseline when given). No timings in it, so the same model and data give the same file.

use super::score::{FieldScore, RecordScore};
use super::EvalError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Totals of a group of records.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupStats {
    /// Records.
    pub records: usize,
    /// Records whose answer parsed as a JSON object.
    pub valid_json: usize,
    /// Gold fields scored.
    pub fields: usize,
    /// Sum of field scores.
    pub field_score_sum: f64,
    /// Records with every field right.
    pub exact: usize,
}

impl GroupStats {
    /// Mean field score.
    pub fn field_accuracy(&self) -> f64 {
        if self.fields == 0 { 0.0 } else { self.field_score_sum / self.fields as f64 }
    }
    /// Share of answers that were valid JSON objects.
    pub fn json_validity(&self) -> f64 {
        if self.records == 0 { 0.0 } else { self.valid_json as f64 / self.records as f64 }
    }
    /// Share of records with every field right.
    pub fn exact_match(&self) -> f64 {
        if self.records == 0 { 0.0 } else { self.exact as f64 / self.records as f64 }
    }
    fn add(&mut self, s: &RecordScore) {
        self.records += 1;
        self.valid_json += usize::from(s.valid_json);
        self.fields += s.fields.len();
        self.field_score_sum += s.fields.iter().map(|f| f.score).sum::<f64>();
        self.exact += usize::from(s.valid_json && s.fields.iter().all(|f| f.score >= 1.0));
    }
}

/// One field's totals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FieldStats {
    /// Times the field was in a target.
    pub count: usize,
    /// Sum of its scores.
    pub score_sum: f64,
}

impl FieldStats {
    /// Mean score.
    pub fn accuracy(&self) -> f64 {
        if self.count == 0 { 0.0 } else { self.score_sum / self.count as f64 }
    }
}

/// How the generation of one answer ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerEnd {
    /// Tokens generated (the stop token not counted).
    pub new_tokens: usize,
    /// True when the answer was cut at `--max-new-tokens` rather than ended by a stop token.
    pub hit_budget: bool,
}

/// One record's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordResult {
    /// Record id.
    pub id: String,
    /// Its doc_type.
    pub doc_type: String,
    /// The answer parsed.
    pub valid_json: bool,
    /// Mean field score.
    pub score: f64,
    /// Per-field scores.
    pub fields: Vec<FieldScore>,
    /// Keys in the answer but not in the target.
    pub extra_keys: Vec<String>,
    /// The model's answer text.
    pub output: String,
    /// How its generation ended (absent in reports written before it was recorded).
    #[serde(default)]
    pub end: AnswerEnd,
}

/// The whole evaluation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Free-form description of what was evaluated (model, adapter, data).
    pub label: String,
    /// Relative tolerance used for numbers.
    pub rel_tol: f64,
    /// All records.
    pub overall: GroupStats,
    /// By doc_type.
    pub by_doc_type: BTreeMap<String, GroupStats>,
    /// By doc_type, then dotted field key.
    pub by_field: BTreeMap<String, BTreeMap<String, FieldStats>>,
    /// Every record, in input order.
    pub records: Vec<RecordResult>,
}

impl EvalReport {
    /// Adds one scored record.
    pub fn add(&mut self, id: &str, doc_type: &str, score: &RecordScore, output: &str, end: AnswerEnd) {
        self.overall.add(score);
        self.by_doc_type.entry(doc_type.to_owned()).or_default().add(score);
        let fields = self.by_field.entry(doc_type.to_owned()).or_default();
        for f in &score.fields {
            let e = fields.entry(f.key.clone()).or_default();
            e.count += 1;
            e.score_sum += f.score;
        }
        self.records.push(RecordResult {
            id: id.to_owned(),
            doc_type: doc_type.to_owned(),
            valid_json: score.valid_json,
            score: score.mean(),
            fields: score.fields.clone(),
            extra_keys: score.extra_keys.clone(),
            output: output.to_owned(),
            end,
        });
    }

    /// Mean field score over every field of every record.
    pub fn field_accuracy(&self) -> f64 {
        self.overall.field_accuracy()
    }

    /// Reads a `report.json` (or the `report.json` inside a folder).
    pub fn read(path: &Path) -> Result<Self, EvalError> {
        let file = if path.is_dir() { path.join("report.json") } else { path.to_owned() };
        let text = std::fs::read_to_string(&file).map_err(|e| EvalError::Report { path: file.clone(), reason: e.to_string() })?;
        serde_json::from_str(&text).map_err(|e| EvalError::Report { path: file, reason: format!("not an evaluation report.json: {e}") })
    }

    /// Writes `report.json` and `report.md` into `dir`.
    pub fn write(&self, dir: &Path, baseline: Option<&EvalReport>) -> Result<(), EvalError> {
        let err = |p: &Path, e: std::io::Error| EvalError::Report { path: p.to_owned(), reason: e.to_string() };
        std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
        let json = dir.join("report.json");
        std::fs::write(&json, serde_json::to_string_pretty(self).expect("report serializes") + "\n").map_err(|e| err(&json, e))?;
        let md = dir.join("report.md");
        std::fs::write(&md, self.to_markdown(baseline)).map_err(|e| err(&md, e))
    }

    /// The Markdown summary; with a baseline, each figure side by side with its change.
    pub fn to_markdown(&self, baseline: Option<&EvalReport>) -> String {
        let pct = |x: f64| format!("{:.1}%", 100.0 * x);
        let cols = |now: f64, base: Option<f64>| match base {
            Some(b) => format!("{} | {} | {:+.1}", pct(b), pct(now), 100.0 * (now - b)),
            None => pct(now),
        };
        let head = |first: &str| match baseline {
            Some(_) => format!("| {first} | n | baseline | this | change (points) |\n| --- | ---: | ---: | ---: | ---: |\n"),
            None => format!("| {first} | n | value |\n| --- | ---: | ---: |\n"),
        };
        let mut md = format!("# Evaluation: {}\n\n", self.label);
        if let Some(b) = baseline {
            md += &format!("Baseline: {}\n\n", b.label);
        }
        md += &format!("Numbers match within {} relative; lists score set F1.\n\n", pct(self.rel_tol));
        md += &head("metric");
        let o = &self.overall;
        let bo = baseline.map(|b| &b.overall);
        md += &format!("| field accuracy | {} | {} |\n", o.fields, cols(o.field_accuracy(), bo.map(GroupStats::field_accuracy)));
        md += &format!("| JSON validity | {} | {} |\n", o.records, cols(o.json_validity(), bo.map(GroupStats::json_validity)));
        md += &format!("| exact match | {} | {} |\n\n", o.records, cols(o.exact_match(), bo.map(GroupStats::exact_match)));
        md += "## By doc_type (field accuracy)\n\n";
        md += &head("doc_type");
        for (d, g) in &self.by_doc_type {
            let b = baseline.and_then(|b| b.by_doc_type.get(d)).map(GroupStats::field_accuracy);
            md += &format!("| {d} | {} | {} |\n", g.records, cols(g.field_accuracy(), b));
        }
        md += "\n## By field\n\n";
        for (d, fields) in &self.by_field {
            md += &format!("### {d}\n\n");
            md += &head("field");
            for (k, f) in fields {
                let b = baseline.and_then(|b| b.by_field.get(d)).and_then(|m| m.get(k)).map(FieldStats::accuracy);
                md += &format!("| {k} | {} | {} |\n", f.count, cols(f.accuracy(), b));
            }
            md += "\n";
        }
        let invalid: Vec<&RecordResult> = self.records.iter().filter(|r| !r.valid_json).collect();
        if !invalid.is_empty() {
            let cut = invalid.iter().filter(|r| r.end.hit_budget).count();
            md += &format!("## Invalid JSON answers ({} of {}; {cut} cut at the token budget; first 10, 200 characters each)\n\n", invalid.len(), self.records.len());
            for r in invalid.into_iter().take(10) {
                let shown: String = r.output.chars().take(200).collect();
                let how = if r.end.hit_budget { "cut at the budget" } else { "stopped" };
                md += &format!("- `{}` ({} tokens, {how}): {:?}\n", r.id, r.end.new_tokens, shown);
            }
        }
        md
    }
}
