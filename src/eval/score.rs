//! Scoring one model answer against a record's target, field by field.
//!
//! - The answer is parsed as JSON; a Markdown fence (```` ```json ... ``` ````) and text
//!   around the outermost `{...}` are tolerated. Anything else is invalid JSON: every field
//!   of that record scores 0 and the record counts as invalid.
//! - Nested objects are flattened to dotted keys (`results.sodium`); lists stay one field.
//! - Strings compare after normalization (lower case, whitespace collapsed, a trailing
//!   period dropped). Numbers, and strings that are a number with a unit (`5.9 mmol/L`),
//!   match when the numbers agree within the relative tolerance and the units are equal
//!   after normalization (a gold value without a unit accepts any unit, e.g. `88` vs
//!   `"88 bpm"`). Lists score the F1 of their normalized element sets (two empty lists: 1).
//!   A field missing from the answer scores 0 (unless the gold value is null or `[]`).

use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Relative tolerance for numbers: 1%.
pub const DEFAULT_REL_TOL: f64 = 0.01;

/// The score of one gold field.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FieldScore {
    /// Dotted key.
    pub key: String,
    /// 0..=1 (list fields can be fractional).
    pub score: f64,
}

/// The score of one answer.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordScore {
    /// The answer parsed as a JSON object.
    pub valid_json: bool,
    /// One entry per gold field, in the gold's (flattened, sorted) key order.
    pub fields: Vec<FieldScore>,
    /// Keys the answer has that the gold does not (after flattening).
    pub extra_keys: Vec<String>,
}

impl RecordScore {
    /// Mean field score (1 for a record without fields).
    pub fn mean(&self) -> f64 {
        if self.fields.is_empty() { 1.0 } else { self.fields.iter().map(|f| f.score).sum::<f64>() / self.fields.len() as f64 }
    }
}

/// Parses a model answer into a JSON object; the error says why not.
pub fn parse_answer(text: &str) -> Result<Map<String, Value>, String> {
    let mut t = text.trim();
    if let Some(rest) = t.strip_prefix("```") {
        let rest = rest.strip_prefix("json").or_else(|| rest.strip_prefix("JSON")).unwrap_or(rest);
        t = rest.trim_start();
        if let Some(end) = t.rfind("```") {
            t = &t[..end];
        }
        t = t.trim();
    }
    let attempt = |s: &str| match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("the answer is JSON but not an object".to_owned()),
        Err(e) => Err(format!("not valid JSON: {e}")),
    };
    match attempt(t) {
        Ok(m) => Ok(m),
        Err(first) => match (t.find('{'), t.rfind('}')) {
            (Some(a), Some(b)) if a < b && (a, b) != (0, t.len() - 1) => attempt(&t[a..=b]).map_err(|_| first),
            _ => Err(first),
        },
    }
}

/// Nested objects to dotted keys; other values (lists included) are leaves.
pub fn flatten(obj: &Map<String, Value>) -> BTreeMap<String, Value> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    walk(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, v, out);
                }
            }
            other => {
                out.insert(prefix.to_owned(), other.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    for (k, v) in obj {
        walk(k, v, &mut out);
    }
    out
}

/// Lower case, whitespace collapsed, one trailing period dropped.
pub fn normalize_text(s: &str) -> String {
    let joined = s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    joined.strip_suffix('.').unwrap_or(&joined).trim_end().to_owned()
}

/// `"5.9 mmol/L"` -> `(5.9, "mmol/l")`, `"97%"` -> `(97, "%")`, `"88"` -> `(88, "")`. A unit
/// glued to the number must start with a letter, `%` or `°` (so `120/80`, `08:00` and dates
/// are not quantities); one after a space must contain a letter or `%`.
pub fn parse_quantity(s: &str) -> Option<(f64, String)> {
    let s = s.trim();
    let end = s
        .char_indices()
        .take_while(|&(i, c)| c.is_ascii_digit() || c == '.' || ((c == '-' || c == '+') && i == 0))
        .last()
        .map(|(i, c)| i + c.len_utf8())?;
    let num: f64 = s[..end].parse().ok()?;
    let rest = &s[end..];
    let unit = rest.trim();
    if unit.is_empty() {
        return Some((num, String::new()));
    }
    let glued = !rest.starts_with(char::is_whitespace);
    let first = unit.chars().next()?;
    let ok = if glued { first.is_alphabetic() || first == '%' || first == '°' } else { unit.chars().any(|c| c.is_alphabetic() || c == '%') };
    ok.then(|| (num, unit.to_lowercase().replace(' ', "")))
}

fn numbers_match(g: f64, p: f64, rel_tol: f64) -> bool {
    (g - p).abs() <= rel_tol * g.abs().max(p.abs()) + 1e-9
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

/// Whether two scalars agree (numbers and quantities within `rel_tol`).
pub fn scalars_match(gold: &Value, pred: &Value, rel_tol: f64) -> bool {
    let (Some(g), Some(p)) = (scalar_text(gold), scalar_text(pred)) else { return false };
    if let (Some((gn, gu)), Some((pn, pu))) = (parse_quantity(&g), parse_quantity(&p)) {
        return numbers_match(gn, pn, rel_tol) && (gu.is_empty() || gu == pu);
    }
    normalize_text(&g) == normalize_text(&p)
}

fn list_key(v: &Value) -> String {
    match v {
        Value::String(s) => normalize_text(s),
        other => normalize_text(&other.to_string()),
    }
}

/// Score of one gold field given the answer's value (if any).
pub fn score_field(gold: &Value, pred: Option<&Value>, rel_tol: f64) -> f64 {
    match (gold, pred) {
        (Value::Null, None | Some(Value::Null)) => 1.0,
        (Value::Array(g), None) if g.is_empty() => 1.0,
        (_, None) => 0.0,
        (Value::Array(g), Some(p)) => {
            let p: Vec<Value> = match p {
                Value::Array(a) => a.clone(),
                Value::Null => vec![],
                other => vec![other.clone()],
            };
            let gs: BTreeSet<String> = g.iter().map(list_key).collect();
            let ps: BTreeSet<String> = p.iter().map(list_key).collect();
            if gs.is_empty() && ps.is_empty() {
                return 1.0;
            }
            // Matches allow the numeric tolerance element-wise.
            let hits = gs.iter().filter(|ge| ps.iter().any(|pe| scalars_match(&Value::String((*ge).clone()), &Value::String(pe.clone()), rel_tol))).count() as f64;
            if hits == 0.0 {
                return 0.0;
            }
            let (prec, rec) = (hits / ps.len() as f64, hits / gs.len() as f64);
            (2.0 * prec * rec / (prec + rec)).min(1.0)
        }
        (g, Some(p)) => f64::from(u8::from(scalars_match(g, p, rel_tol))),
    }
}

/// Scores an answer text against a target object.
pub fn score_answer(target: &Value, answer: &str, rel_tol: f64) -> RecordScore {
    let gold = target.as_object().map(flatten).unwrap_or_default();
    match parse_answer(answer) {
        Ok(obj) => {
            let pred = flatten(&obj);
            let fields = gold.iter().map(|(k, g)| FieldScore { key: k.clone(), score: score_field(g, pred.get(k), rel_tol) }).collect();
            let extra_keys = pred.keys().filter(|k| !gold.contains_key(*k)).cloned().collect();
            RecordScore { valid_json: true, fields, extra_keys }
        }
        Err(_) => RecordScore { valid_json: false, fields: gold.keys().map(|k| FieldScore { key: k.clone(), score: 0.0 }).collect(), extra_keys: vec![] },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("5.9 mmol/L"), Some((5.9, "mmol/l".into())));
        assert_eq!(parse_quantity("97%"), Some((97.0, "%".into())));
        assert_eq!(parse_quantity("7.2 10^3/uL"), Some((7.2, "10^3/ul".into())));
        assert_eq!(parse_quantity("120/80"), None);
        assert_eq!(parse_quantity("2024-03-14 06:10"), None);
        assert_eq!(parse_quantity("08:00"), None);
        assert_eq!(parse_quantity("none"), None);
    }
}
