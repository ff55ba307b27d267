//! Datasets: JSONL reading with bad lines, MTSamples conversion (real CSV from ../shared when
//! present, plus hand-made bad CSVs), the synthetic generator (determinism, layouts, targets
//! written in the text), and chat encoding with the loss mask on the real tokenizer.

mod common;

use medqlora::chat::ChatTemplate;
use medqlora::data::mtsamples::{self, Task};
use medqlora::data::prompt::TRUNCATION_MARK;
use medqlora::data::synth::{self, SynthKind};
use medqlora::data::{encode_record, prompt_text, read_jsonl, target_text, DataError, Record};
use medqlora::eval::score::flatten;
use medqlora::tokenizer::Tokenizer;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("medqlora-ds-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn mtsamples_csv() -> Option<PathBuf> {
    let p = common::root().join("../shared/data/mtsamples.csv.gz");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("SKIPPED: MTSamples CSV not found at {}", p.display());
        None
    }
}

#[test]
fn jsonl_bad_lines_name_file_and_line() {
    let d = tmp("jsonl");
    let f = d.join("data.jsonl");
    std::fs::write(
        &f,
        [
            r#"{"id":"a","doc_type":"lab_panel","text":"Na 134","target":{"panel":"BMP"}}"#,
            "",
            r#"{"id":"b","doc_type":"lab_panel","text":"K 5.9","target":"oops"}"#,
            r#"{"id":"c","doc_type":"lab_panel","image":"img/c.png","target":{}}"#,
            r#"{"id":"a","doc_type":"lab_panel","text":"dup","target":{}}"#,
            "not json",
        ]
        .join("\n"),
    )
    .unwrap();
    match read_jsonl(&f, false) {
        Err(DataError::BadLine { file, line, reason }) => {
            assert_eq!((file.as_path(), line), (f.as_path(), 3));
            assert!(reason.contains("\"target\" must be a JSON object"), "{reason}");
        }
        other => panic!("expected a bad line error, got {other:?}"),
    }
    let msg = read_jsonl(&f, false).unwrap_err().to_string();
    assert!(msg.contains("data.jsonl:3:") && msg.contains("--skip-bad"), "{msg}");
    let ds = read_jsonl(&f, true).unwrap();
    assert_eq!(ds.records.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["a", "c"]);
    assert_eq!(ds.records[1].image.as_deref(), Some(d.join("img/c.png").as_path()), "image paths resolve against the file");
    assert_eq!(ds.skipped.iter().map(|b| b.line).collect::<Vec<_>>(), [3, 5, 6]);
    assert!(ds.skipped[1].reason.contains("duplicate id \"a\" (first used on line 1)"), "{}", ds.skipped[1].reason);
    // Missing file and an all-bad file.
    let missing = read_jsonl(&d.join("nope.jsonl"), true).unwrap_err().to_string();
    assert!(missing.contains("nope.jsonl"), "{missing}");
    std::fs::write(d.join("bad.jsonl"), "{}\n").unwrap();
    assert!(matches!(read_jsonl(&d.join("bad.jsonl"), true), Err(DataError::NoRecords { skipped: 1, .. })));
}

#[test]
fn bad_csv_is_reported_with_its_line() {
    let d = tmp("csv");
    let no_col = d.join("nocol.csv");
    std::fs::write(&no_col, "note_id,text\n1,hello\n").unwrap();
    let e = mtsamples::convert(&no_col, Task::Sections, &d.join("o1"), false).unwrap_err().to_string();
    assert!(e.contains("nocol.csv:1") && e.contains("no \"medical_specialty\" column"), "{e}");
    let ragged = d.join("ragged.csv");
    std::fs::write(
        &ragged,
        "note_id,medical_specialty,transcription\n1,Surgery,\"PROCEDURE: , Appendectomy.,ANESTHESIA: , General.\"\n2,Urology\n,Surgery,\"ALLERGIES: , None.\"\n",
    )
    .unwrap();
    let e = mtsamples::convert(&ragged, Task::Sections, &d.join("o2"), false).unwrap_err().to_string();
    assert!(e.contains("ragged.csv:3"), "{e}");
    let s = mtsamples::convert(&ragged, Task::Sections, &d.join("o3"), true).unwrap();
    assert_eq!(s.bad_rows.len(), 2, "{:?}", s.bad_rows);
    assert!(s.bad_rows[1].contains("ragged.csv:4: empty note_id"), "{:?}", s.bad_rows);
    let written: usize = s.written.values().sum();
    assert_eq!(written, 1);
    let all: Vec<Record> = ["train", "val", "test"].iter().flat_map(|p| read_jsonl(&d.join("o3").join(format!("{p}.jsonl")), false).map(|d| d.records).unwrap_or_default()).collect();
    assert_eq!(all[0].target, json!({"procedure": "Appendectomy.", "anesthesia": "General."}));
    let missing = mtsamples::convert(&d.join("absent.csv.gz"), Task::Sections, &d.join("o4"), false).unwrap_err().to_string();
    assert!(missing.contains("absent.csv.gz"), "{missing}");
}

fn read_splits(dir: &Path) -> BTreeMap<String, Vec<Record>> {
    ["train", "val", "test"].iter().map(|s| (s.to_string(), read_jsonl(&dir.join(format!("{s}.jsonl")), false).unwrap().records)).collect()
}

#[test]
fn mtsamples_sections_and_specialty() {
    let Some(csv) = mtsamples_csv() else { return };
    let d = tmp("mts");
    let s = mtsamples::convert(&csv, Task::Sections, &d.join("sections"), false).unwrap();
    assert_eq!((s.rows, s.empty_rows, s.documents), (4999, 33, 2355));
    let splits = read_splits(&d.join("sections"));
    let total: usize = splits.values().map(Vec::len).sum();
    assert_eq!(total, s.written.values().sum::<usize>());
    assert!(total > 1500, "{total} documents with sections");
    let train = splits["train"].len() as f64 / total as f64;
    assert!((0.74..0.86).contains(&train), "train share {train}");
    let mut texts = HashSet::new();
    for rec in splits.values().flatten() {
        let text = rec.text.as_deref().unwrap();
        assert!(texts.insert(text.to_owned()), "{}: the same text in two records", rec.id);
        let t = rec.target.as_object().unwrap();
        assert!(!t.is_empty());
        for (k, v) in t {
            assert!(mtsamples::SECTION_KEYS.contains(&k.as_str()));
            let v = v.as_str().unwrap();
            assert!(v.chars().count() <= mtsamples::MAX_SECTION_CHARS);
            assert!(text.contains(v), "{}: {k} value is not verbatim in the text", rec.id);
        }
    }
    // Deterministic: a second conversion writes the same bytes.
    mtsamples::convert(&csv, Task::Sections, &d.join("again"), false).unwrap();
    for f in ["train.jsonl", "val.jsonl", "test.jsonl", "stats.json"] {
        assert_eq!(std::fs::read(d.join("sections").join(f)).unwrap(), std::fs::read(d.join("again").join(f)).unwrap(), "{f}");
    }
    let s = mtsamples::convert(&csv, Task::Specialty, &d.join("spec"), false).unwrap();
    assert_eq!(s.written.values().sum::<usize>(), 2355);
    assert!(s.unknown_labels.is_empty(), "{:?}", s.unknown_labels);
    let spec = read_splits(&d.join("spec"));
    let multi = spec.values().flatten().filter(|r| r.target["specialties"].as_array().unwrap().len() > 1).count();
    assert!(multi > 2000, "most texts are listed under several specialties: {multi}");
    // A note id lands in the same split for both tasks.
    let split_of = |m: &BTreeMap<String, Vec<Record>>, id: &str| m.iter().find(|(_, v)| v.iter().any(|r| r.id == id)).map(|(k, _)| k.clone());
    let some = &splits["val"][0].id;
    assert_eq!(split_of(&spec, some).as_deref(), Some("val"));
}

fn dir_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in walk(dir) {
        out.insert(e.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&e).unwrap());
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { v.extend(walk(&p)) } else { v.push(p) }
    }
    v
}

#[test]
fn synth_is_deterministic_and_rendered() {
    let d = tmp("synth");
    let opts = synth::render::RenderOptions::default();
    let s = synth::write(SynthKind::All, 3, 7, &d.join("a"), Some(&opts)).unwrap();
    assert_eq!(s.images, 12);
    synth::write(SynthKind::All, 3, 7, &d.join("b"), Some(&opts)).unwrap();
    let (a, b) = (dir_bytes(&d.join("a")), dir_bytes(&d.join("b")));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    assert!(a == b, "same seed must give byte-identical files");
    assert_eq!(a.keys().filter(|k| k.ends_with(".png")).count(), 12);
    let png = a.iter().find(|(k, _)| k.ends_with(".png")).unwrap().1;
    assert_eq!(&png[1..4], b"PNG");
    // Image records point at the PNGs.
    let images: Vec<Record> = ["train", "val", "test"]
        .iter()
        .filter_map(|p| read_jsonl(&d.join("a").join(format!("{p}.image.jsonl")), false).ok())
        .flat_map(|ds| ds.records)
        .collect();
    assert_eq!(images.len(), 12);
    assert!(images.iter().all(|r| r.text.is_none() && r.image.as_ref().unwrap().exists()));
    synth::write(SynthKind::LabPanel, 3, 8, &d.join("c"), None).unwrap();
    let c = dir_bytes(&d.join("c"));
    assert!(!c.keys().any(|k| k.ends_with(".png")));
    let lab = |m: &BTreeMap<String, Vec<u8>>| m.iter().filter(|(k, _)| k.ends_with(".jsonl") && !k.contains("image")).flat_map(|(_, v)| v.clone()).collect::<Vec<u8>>();
    assert_ne!(lab(&a), lab(&c), "another seed gives other documents");
}

/// A larger `--n` extends a smaller one: its first documents are the same, and each keeps its
/// split. So the full recipe can train on 400 documents per kind while the 150-per-kind test
/// split stays unseen (recipes/qwen2.5-0.5b-clinical-full.toml).
#[test]
fn synth_larger_n_keeps_the_smaller_test_split_out_of_training() {
    let d = tmp("synth-n");
    synth::write(SynthKind::All, 30, 7, &d.join("n30"), None).unwrap();
    synth::write(SynthKind::All, 80, 7, &d.join("n80"), None).unwrap();
    let by_id = |recs: &[Record]| -> BTreeMap<String, Record> { recs.iter().map(|r| (r.id.clone(), r.clone())).collect() };
    let (small, large) = (read_splits(&d.join("n30")), read_splits(&d.join("n80")));
    let (large_train, large_test) = (by_id(&large["train"]), by_id(&large["test"]));
    assert!(!small["test"].is_empty() && large_train.len() > 100);
    for rec in &small["test"] {
        assert!(!large_train.contains_key(&rec.id), "{}: a test record of --n 30 is in the train split of --n 80", rec.id);
        assert_eq!(large_test.get(&rec.id), Some(rec), "{}: not the same test record in --n 80", rec.id);
    }
    std::fs::remove_dir_all(&d).unwrap();
}

/// Every kind shows all three layouts, answers are small, and the answer's values are
/// written in the document.
#[test]
fn synth_targets_are_in_the_text() {
    let docs = synth::generate(SynthKind::All, 60, 3);
    let mut layouts: BTreeMap<String, [usize; 3]> = BTreeMap::new();
    let low = |s: &str| s.to_lowercase();
    for (rec, doc) in &docs {
        layouts.entry(rec.doc_type.clone()).or_default()[doc.layout] += 1;
        let text = low(rec.text.as_deref().unwrap());
        let t = &rec.target;
        let flat = flatten(t.as_object().unwrap());
        assert!((5..=12).contains(&flat.len()), "{}: {} fields", rec.id, flat.len());
        let has = |v: &Value| {
            let s = match v {
                Value::String(s) => low(s),
                other => other.to_string(),
            };
            text.contains(&s)
        };
        let must: Vec<&str> = match rec.doc_type.as_str() {
            "icu_flowsheet" => vec!["mrn", "hr_bpm", "bp_mmhg", "spo2_pct", "gcs"],
            "cardiology" => vec!["age", "rhythm", "hr_bpm", "bp_mmhg", "lvef_pct"],
            "lab_panel" => vec!["panel"],
            "operative_note" => vec!["preoperative_diagnosis", "postoperative_diagnosis", "procedure", "surgeon", "anesthesia", "estimated_blood_loss_ml"],
            other => panic!("unexpected doc_type {other}"),
        };
        for k in must {
            assert!(has(&t[k]), "{}: {k} = {} not in the text:\n{text}", rec.id, t[k]);
        }
        for list in ["infusions", "diagnoses", "allergies"] {
            for v in t.get(list).and_then(Value::as_array).into_iter().flatten() {
                assert!(has(v), "{}: {list} item {v} not in the text", rec.id);
            }
        }
        if let Some(results) = t.get("results").and_then(Value::as_object) {
            for v in results.values() {
                let number = v.as_str().unwrap().split(' ').next().unwrap();
                assert!(text.contains(number), "{}: result {v} not in the text", rec.id);
            }
        }
        assert_eq!(target_text(rec), medqlora::data::schema::canonical_json(t, &rec.doc_type));
    }
    assert_eq!(layouts.len(), 4);
    for (k, counts) in &layouts {
        assert!(counts.iter().all(|&c| c > 0), "{k}: every layout is used: {counts:?}");
    }
}

fn record(id: &str, text: &str) -> Record {
    Record {
        id: id.into(),
        doc_type: "icu_flowsheet".into(),
        text: Some(text.into()),
        image: None,
        instruction: None,
        target: json!({"mrn": "123", "hr_bpm": 88, "infusions": ["propofol 20 mcg/kg/min"], "allergies": []}),
    }
}

#[test]
fn loss_mask_on_the_real_tokenizer() {
    let Some(dir) = common::real_model_dir() else { return };
    let tok = Tokenizer::from_model_dir(&dir).unwrap();
    let template = ChatTemplate::from_model_dir(&dir);
    let rec = record("r1", "ICU FLOWSHEET\nMRN: 123\n08:00 HR 88 bpm.");
    let enc = encode_record(&tok, &template, &rec, 4096).unwrap();
    assert_eq!(enc.input_ids.len(), enc.loss_mask.len());
    let prompt = prompt_text(&template, &rec);
    let answer = target_text(&rec);
    // Separate pieces tokenize exactly like the whole conversation.
    assert_eq!(enc.input_ids, tok.encode(&format!("{prompt}{answer}<|im_end|>\n")).unwrap());
    let n_prompt = tok.encode(&prompt).unwrap().len();
    assert!(enc.loss_mask[..n_prompt].iter().all(|&m| !m));
    let trained: Vec<u32> = enc.input_ids.iter().zip(&enc.loss_mask).filter(|(_, &m)| m).map(|(&i, _)| i).collect();
    assert_eq!(*trained.last().unwrap(), tok.token_id("<|im_end|>").unwrap());
    assert_eq!(tok.decode(&trained).unwrap(), answer, "the masked tokens are exactly the answer (+ <|im_end|>, dropped by decode)");
    assert!(!enc.loss_mask.last().unwrap(), "the closing newline is template");
    // Too long: the document is cut, the answer kept whole.
    let long = record("long", &"Patient stable overnight, vitals unchanged. ".repeat(200));
    let full = encode_record(&tok, &template, &long, 100_000).unwrap().input_ids.len();
    let cut = encode_record(&tok, &template, &long, 300).unwrap();
    assert!(full > 300 && cut.input_ids.len() <= 300 && cut.input_ids.len() > 280, "{full} -> {}", cut.input_ids.len());
    let cut_trained: Vec<u32> = cut.input_ids.iter().zip(&cut.loss_mask).filter(|(_, &m)| m).map(|(&i, _)| i).collect();
    assert_eq!(cut_trained, trained);
    assert!(tok.decode(&cut.input_ids).unwrap().contains(TRUNCATION_MARK.trim()));
    match encode_record(&tok, &template, &long, 40) {
        Err(e @ DataError::TooLong { .. }) => assert!(e.to_string().contains("record \"long\""), "{e}"),
        other => panic!("expected TooLong, got {other:?}"),
    }
}

#[test]
fn loss_mask_on_the_tiny_fixture_tokenizer() {
    let dir = common::fixture("qwen2_tiny");
    if !dir.join("tokenizer.json").exists() {
        eprintln!("SKIPPED: {} has no tokenizer.json", dir.display());
        return;
    }
    let tok = Tokenizer::from_model_dir(&dir).unwrap();
    let enc = encode_record(&tok, &ChatTemplate::from_model_dir(&dir), &record("t", "HR 88"), 4096).unwrap();
    assert!(enc.loss_mask.iter().any(|&m| m) && !enc.loss_mask[0]);
}

/// The subcommands end to end through the binary: synth + check work, and bad input ends
/// with a message naming the file and line (exit code 1, no panic) before any model loads.
#[test]
fn cli_datasets_and_eval_errors() {
    let bin = env!("CARGO_BIN_EXE_medqlora");
    let d = tmp("cli");
    let run = |args: &[&str]| std::process::Command::new(bin).args(args).output().unwrap();
    let out = d.join("syn");
    let o = run(&["datasets", "synth", "--kind", "cardiology", "--n", "4", "--seed", "3", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["datasets", "check", out.join("train.jsonl").to_str().unwrap()]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("cardiology"), "{o:?}");
    let bad = d.join("bad.jsonl");
    std::fs::write(&bad, "{\"id\":\"x\",\"doc_type\":\"t\",\"text\":\"a\",\"target\":{}}\n{oops\n").unwrap();
    let model = common::fixture("qwen2_tiny");
    let o = run(&["eval", "--model", model.to_str().unwrap(), "--data", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("bad.jsonl:2: not valid JSON") && err.contains("--skip-bad") && !err.contains("panicked"), "{err}");
    let o = run(&["datasets", "mtsamples", "--csv", d.join("none.csv").to_str().unwrap(), "--task", "sections", "--out", d.join("m").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("none.csv"));
    let o = run(&["datasets", "synth", "--kind", "all", "--n", "0", "--out", d.join("z").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--n must be at least 1"));
}
