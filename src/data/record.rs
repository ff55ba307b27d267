//! The one record format of every dataset: JSON Lines, one document per line.
//!
//! ```json
//! {"id":"icu-000017","doc_type":"icu_flowsheet","text":"...","target":{"hr_bpm":88,"...":"..."}}
//! {"id":"lab-000003","doc_type":"lab_panel","image":"images/lab-000003.png","target":{...}}
//! ```
//!
//! `id` and `doc_type` are required non-empty strings, `target` a JSON object, and at least one
//! of `text` / `image` must be given (`image` is a path relative to the JSONL file; it is
//! resolved when read). `instruction` is optional: [`super::schema::default_instruction`] fills
//! it in from the `doc_type`. Every problem names the file and line; with `skip_bad` the bad
//! lines are collected in [`Dataset::skipped`] and the rest of the file still loads.

use super::DataError;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// One document with its ground truth.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Unique within a file.
    pub id: String,
    /// Kind of document (`icu_flowsheet`, `mtsamples_sections`, ...); picks the default
    /// instruction and the key order of the answer.
    pub doc_type: String,
    /// The document as text.
    pub text: Option<String>,
    /// The document as an image; absolute (or relative to the working directory) once read.
    pub image: Option<PathBuf>,
    /// What to extract; `None` means the doc_type's default instruction.
    pub instruction: Option<String>,
    /// The expected JSON answer (an object).
    pub target: Value,
}

/// A line that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// The JSONL file.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for BadLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.reason)
    }
}

/// The records of one JSONL file plus the lines skipped with `--skip-bad`.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    /// Usable records, in file order.
    pub records: Vec<Record>,
    /// Lines that were skipped (only non-empty when read with `skip_bad`).
    pub skipped: Vec<BadLine>,
}

/// Reads a JSONL dataset. Without `skip_bad` the first bad line is an error
/// ([`DataError::BadLine`]); with it, bad lines are collected and the rest loads. Blank lines
/// are ignored. A file without a single usable record is an error either way.
pub fn read_jsonl(path: &Path, skip_bad: bool) -> Result<Dataset, DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut out = Dataset::default();
    let mut first_line_of: HashMap<String, usize> = HashMap::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line_no = i + 1;
        let parsed = match line {
            Ok(l) if l.trim().is_empty() => continue,
            Ok(l) => parse_line(&l, &base).and_then(|r| match first_line_of.get(&r.id) {
                Some(first) => Err(format!("duplicate id \"{}\" (first used on line {first}); ids must be unique within a file", r.id)),
                None => Ok(r),
            }),
            Err(e) => Err(format!("cannot read the line: {e} (is the file UTF-8 text?)")),
        };
        match parsed {
            Ok(r) => {
                first_line_of.insert(r.id.clone(), line_no);
                out.records.push(r);
            }
            Err(reason) => {
                let bad = BadLine { file: path.to_owned(), line: line_no, reason };
                if !skip_bad {
                    return Err(DataError::BadLine { file: bad.file, line: bad.line, reason: bad.reason });
                }
                out.skipped.push(bad);
            }
        }
    }
    if out.records.is_empty() {
        return Err(DataError::NoRecords { file: path.to_owned(), skipped: out.skipped.len() });
    }
    Ok(out)
}

/// Parses one JSONL line; `base` resolves relative image paths.
pub fn parse_line(line: &str, base: &Path) -> Result<Record, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON ({e})"))?;
    let Value::Object(mut obj) = v else {
        return Err("a record must be a JSON object {\"id\":..,\"doc_type\":..,\"text\"|\"image\":..,\"target\":{..}}".into());
    };
    let id = required_str(&mut obj, "id")?;
    let doc_type = required_str(&mut obj, "doc_type")?;
    let text = optional_str(&mut obj, "text")?;
    let image = optional_str(&mut obj, "image")?.map(|p| base.join(p));
    let instruction = optional_str(&mut obj, "instruction")?;
    if text.is_none() && image.is_none() {
        return Err(format!("record \"{id}\" has neither \"text\" nor \"image\": give the document as one of them"));
    }
    let target = obj.remove("target").ok_or_else(|| format!("record \"{id}\" has no \"target\" (the expected JSON answer)"))?;
    if !target.is_object() {
        return Err(format!("record \"{id}\": \"target\" must be a JSON object, found {}", kind_of(&target)));
    }
    if let Some(extra) = obj.keys().next() {
        return Err(format!("record \"{id}\": unknown field \"{extra}\" (allowed: id, doc_type, text, image, instruction, target)"));
    }
    Ok(Record { id, doc_type, text, image, instruction, target })
}

fn required_str(obj: &mut Map<String, Value>, key: &str) -> Result<String, String> {
    match obj.remove(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(Value::String(_)) => Err(format!("\"{key}\" is empty")),
        Some(other) => Err(format!("\"{key}\" must be a string, found {}", kind_of(&other))),
        None => Err(format!("missing \"{key}\"")),
    }
}

fn optional_str(obj: &mut Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match obj.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("\"{key}\" must be a string, found {}", kind_of(&other))),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Record {
    /// The record as one JSONL line (no newline). `image` is written relative to `base` when
    /// it lies under it. Keys in a fixed order, target keys in the doc_type's order.
    pub fn to_json_line(&self, base: &Path) -> String {
        let mut parts = vec![format!("\"id\":{}", json_str(&self.id)), format!("\"doc_type\":{}", json_str(&self.doc_type))];
        if let Some(t) = &self.text {
            parts.push(format!("\"text\":{}", json_str(t)));
        }
        if let Some(img) = &self.image {
            let rel = img.strip_prefix(base).unwrap_or(img);
            parts.push(format!("\"image\":{}", json_str(&rel.to_string_lossy().replace('\\', "/"))));
        }
        if let Some(ins) = &self.instruction {
            parts.push(format!("\"instruction\":{}", json_str(ins)));
        }
        parts.push(format!("\"target\":{}", super::schema::canonical_json(&self.target, &self.doc_type)));
        format!("{{{}}}", parts.join(","))
    }
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings always serialize")
}

/// Writes records as JSONL to `path` (image paths relative to its folder).
pub fn write_jsonl(path: &Path, records: &[Record]) -> Result<(), DataError> {
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| DataError::io(path, e))?);
    for r in records {
        writeln!(out, "{}", r.to_json_line(&base)).map_err(|e| DataError::io(path, e))?;
    }
    out.flush().map_err(|e| DataError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_lines() {
        let base = Path::new("/data");
        let r = parse_line(r#"{"id":"a","doc_type":"lab_panel","image":"img/a.png","target":{"x":1}}"#, base).unwrap();
        assert_eq!(r.image.as_deref(), Some(Path::new("/data/img/a.png")));
        assert_eq!(r.to_json_line(base), r#"{"id":"a","doc_type":"lab_panel","image":"img/a.png","target":{"x":1}}"#);
        for (line, want) in [
            ("{", "not valid JSON"),
            ("[1]", "must be a JSON object"),
            (r#"{"doc_type":"x","text":"t","target":{}}"#, "missing \"id\""),
            (r#"{"id":"a","doc_type":"x","target":{}}"#, "neither \"text\" nor \"image\""),
            (r#"{"id":"a","doc_type":"x","text":"t"}"#, "no \"target\""),
            (r#"{"id":"a","doc_type":"x","text":"t","target":[1]}"#, "found an array"),
            (r#"{"id":"a","doc_type":"x","text":5,"target":{}}"#, "\"text\" must be a string"),
            (r#"{"id":"a","doc_type":"x","text":"t","target":{},"lbl":1}"#, "unknown field \"lbl\""),
        ] {
            let e = parse_line(line, base).unwrap_err();
            assert!(e.contains(want), "{line}: {e}");
        }
    }
}
