//! What each `doc_type` asks for: the answer's keys in their fixed order and the default
//! instruction, plus the compact JSON writer that puts keys in that order (serde_json's map
//! is sorted, so the order has to come from here).

use serde_json::Value;

/// The answer layout of one document type.
#[derive(Debug, Clone, Copy)]
pub struct DocSchema {
    /// `doc_type` value in the records.
    pub doc_type: &'static str,
    /// Top-level keys of the answer, in answer order.
    pub keys: &'static [&'static str],
    /// The instruction given when a record has none.
    pub instruction: &'static str,
}

/// Every document type the project generates.
pub const SCHEMAS: &[DocSchema] = &[
    DocSchema {
        doc_type: "icu_flowsheet",
        keys: &["mrn", "time", "hr_bpm", "bp_mmhg", "rr_per_min", "spo2_pct", "temp_c", "gcs", "infusions", "allergies"],
        instruction: "Extract the most recent vital signs from this ICU flowsheet. Return compact JSON with exactly these keys: \
mrn, time, hr_bpm, bp_mmhg, rr_per_min, spo2_pct, temp_c, gcs, infusions, allergies. time is the HH:MM of the latest charted \
values; bp_mmhg is \"sys/dia\"; temp_c is in Celsius; infusions is a list of \"drug rate unit\"; allergies is a list ([] if none known).",
    },
    DocSchema {
        doc_type: "cardiology",
        keys: &["age", "sex", "rhythm", "hr_bpm", "bp_mmhg", "lvef_pct", "diagnoses", "medications", "allergies"],
        instruction: "Extract from this cardiology note. Return compact JSON with exactly these keys: age, sex, rhythm, hr_bpm, \
bp_mmhg, lvef_pct, diagnoses, medications, allergies. sex is \"M\" or \"F\"; bp_mmhg is \"sys/dia\"; diagnoses is a list; medications \
is a list of \"drug dose route frequency\"; allergies is a list ([] if none known).",
    },
    DocSchema {
        doc_type: "lab_panel",
        keys: &["panel", "collected", "results", "abnormal"],
        instruction: "Extract this laboratory report. Return compact JSON with exactly these keys: panel, collected, results, abnormal. \
collected is \"YYYY-MM-DD HH:MM\"; results maps each analyte to \"value unit\"; abnormal lists \"analyte H\" or \"analyte L\" for \
flagged results ([] if none).",
    },
    DocSchema {
        doc_type: "operative_note",
        keys: &[
            "preoperative_diagnosis",
            "postoperative_diagnosis",
            "procedure",
            "surgeon",
            "anesthesia",
            "estimated_blood_loss_ml",
            "complications",
            "specimens",
            "drains",
        ],
        instruction: "Extract from this operative note. Return compact JSON with exactly these keys: preoperative_diagnosis, \
postoperative_diagnosis, procedure, surgeon, anesthesia, estimated_blood_loss_ml, complications, specimens, drains. \
estimated_blood_loss_ml is a number; use \"none\" where the note says there were none.",
    },
    DocSchema {
        doc_type: "mtsamples_sections",
        keys: super::mtsamples::SECTION_KEYS,
        instruction: "Copy the text of these sections of the medical note into compact JSON, using only the keys whose section \
the note has: chief_complaint, preoperative_diagnosis, postoperative_diagnosis, procedure, anesthesia, estimated_blood_loss, \
complications, specimens, drains, allergies, medications, impression.",
    },
    DocSchema {
        doc_type: "mtsamples_specialty",
        keys: &["specialties"],
        instruction: super::mtsamples::SPECIALTY_INSTRUCTION,
    },
];

/// The schema of a known `doc_type`.
pub fn schema(doc_type: &str) -> Option<&'static DocSchema> {
    SCHEMAS.iter().find(|s| s.doc_type == doc_type)
}

/// The instruction for a record without one: the doc_type's, or for an unknown doc_type a
/// generic one naming the target's keys.
pub fn default_instruction(doc_type: &str, target: &Value) -> String {
    match schema(doc_type) {
        Some(s) => s.instruction.to_owned(),
        None => {
            let keys: Vec<&str> = target.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
            format!("Extract the information from this document. Return compact JSON with keys: {}.", keys.join(", "))
        }
    }
}

/// Compact JSON (no spaces) with the top-level keys in the doc_type's order (keys it does
/// not list follow, sorted) and nested object keys sorted: the same value always gives the
/// same text.
pub fn canonical_json(value: &Value, doc_type: &str) -> String {
    let mut out = String::new();
    let order = schema(doc_type).map(|s| s.keys).unwrap_or(&[]);
    write_value(&mut out, value, order);
    out
}

fn write_value(out: &mut String, v: &Value, order: &[&str]) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            let rank = |k: &str| order.iter().position(|o| *o == k).unwrap_or(usize::MAX);
            keys.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b)));
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&super::record::json_str(k));
                out.push(':');
                write_value(out, &map[k.as_str()], &[]);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item, &[]);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_follow_the_schema_order() {
        let v = json!({"temp_c": 37.9, "mrn": "A1", "zz": [1, {"b": 2, "a": "x y"}], "hr_bpm": 88});
        assert_eq!(canonical_json(&v, "icu_flowsheet"), r#"{"mrn":"A1","hr_bpm":88,"temp_c":37.9,"zz":[1,{"a":"x y","b":2}]}"#);
        assert_eq!(canonical_json(&v, "unknown"), r#"{"hr_bpm":88,"mrn":"A1","temp_c":37.9,"zz":[1,{"a":"x y","b":2}]}"#);
        assert!(default_instruction("unknown", &v).ends_with("keys: hr_bpm, mrn, temp_c, zz."));
        for s in SCHEMAS {
            for k in s.keys {
                assert!(s.instruction.contains(k), "{}: the instruction must name {k}", s.doc_type);
            }
        }
        // Section extraction names its 12 keys and nothing else that looks like one.
        let named = SCHEMAS.iter().find(|s| s.doc_type == "mtsamples_sections").unwrap().instruction;
        let listed = named.rsplit(": ").next().unwrap().trim_end_matches('.');
        assert_eq!(listed.split(", ").collect::<Vec<_>>(), super::super::mtsamples::SECTION_KEYS);
    }
}
