//! The evaluator: field scoring (normalization, units, lists, nesting, invalid JSON), the
//! report and its comparison, batched greedy generation against one-prompt generation on the
//! tiny fixture model, and `evaluate` end to end with a byte-level tokenizer for that model.

mod common;

use medqlora::backend::CpuBackend;
use medqlora::chat::ChatTemplate;
use medqlora::data::synth::{self, SynthKind};
use medqlora::data::Record;
use medqlora::eval::score::{parse_answer, score_answer, score_field};
use medqlora::eval::{evaluate, EvalOptions, EvalReport};
use medqlora::generate::{generate, generate_batch, SamplingConfig, StopReason};
use medqlora::model::{Qwen2ForCausalLM, TextConfig, WeightStore};
use medqlora::tokenizer::Tokenizer;
use serde_json::json;
use std::path::PathBuf;

type B = CpuBackend;

fn tiny() -> Qwen2ForCausalLM<B> {
    let dir = common::fixture("qwen2_tiny");
    let config = TextConfig::from_dir(&dir).unwrap();
    Qwen2ForCausalLM::<B>::load(&config, &WeightStore::open(&dir).unwrap(), &Default::default()).unwrap()
}

#[test]
fn scoring_rules() {
    let target = json!({
        "hr_bpm": 88, "bp_mmhg": "132/84", "temp_c": 37.9, "rhythm": "Atrial fibrillation",
        "allergies": ["penicillin", "sulfa"], "results": {"sodium": "134 mmol/L", "potassium": "5.9 mmol/L"}, "abnormal": [],
    });
    let perfect = r#"{"hr_bpm":"88 bpm","bp_mmhg":"132/84","temp_c":37.9,"rhythm":"atrial  fibrillation.","allergies":["Sulfa","penicillin"],"results":{"sodium":"134.0 mmol/l","potassium":"5.9 mmol/L"},"abnormal":[]}"#;
    let s = score_answer(&target, perfect, 0.01);
    assert!(s.valid_json && s.fields.len() == 8 && s.mean() == 1.0, "{s:?}");
    // A fence and chatter around the object are tolerated.
    let fenced = format!("```json\n{perfect}\n```");
    assert_eq!(score_answer(&target, &fenced, 0.01).mean(), 1.0);
    assert!(parse_answer(&format!("Here it is: {perfect} Done.")).is_ok());
    // Wrong values, a missing field, a wrong unit, half a list.
    let partial = r#"{"hr_bpm":90,"bp_mmhg":"130/84","temp_c":"37.95","rhythm":"sinus rhythm","allergies":["penicillin"],"results":{"sodium":"134 mg/dL"},"extra":1}"#;
    let s = score_answer(&target, partial, 0.01);
    let by: std::collections::BTreeMap<_, _> = s.fields.iter().map(|f| (f.key.as_str(), f.score)).collect();
    assert_eq!(by["hr_bpm"], 0.0, "88 vs 90 is beyond 1%");
    assert_eq!(by["temp_c"], 1.0, "37.9 vs 37.95 is within 1%");
    assert_eq!(by["bp_mmhg"], 0.0);
    assert_eq!(by["results.sodium"], 0.0, "same number, other unit");
    assert_eq!(by["results.potassium"], 0.0, "missing");
    assert!((by["allergies"] - 2.0 / 3.0).abs() < 1e-9, "set F1 of 1 hit, 1 predicted, 2 gold");
    assert_eq!(by["abnormal"], 1.0, "gold [] and the key missing");
    assert_eq!(s.extra_keys, ["extra"]);
    // Invalid JSON: counted, every field wrong.
    for bad in ["", "{\"hr_bpm\": 88", "[1,2]", "The patient is stable."] {
        let s = score_answer(&target, bad, 0.01);
        assert!(!s.valid_json && s.fields.len() == 8 && s.mean() == 0.0, "{bad:?}: {s:?}");
    }
    assert_eq!(score_field(&json!(0), Some(&json!(0.0)), 0.01), 1.0);
    assert_eq!(score_field(&json!("none"), Some(&json!(null)), 0.01), 0.0);
}

#[test]
fn report_compares_with_a_baseline() {
    let target = json!({"a": "x", "b": 2});
    let mut base = EvalReport { label: "base".into(), rel_tol: 0.01, ..Default::default() };
    base.add("r1", "t", &score_answer(&target, "oops", 0.01), "oops");
    base.add("r2", "t", &score_answer(&target, r#"{"a":"x"}"#, 0.01), r#"{"a":"x"}"#);
    assert_eq!((base.overall.valid_json, base.field_accuracy()), (1, 0.25));
    let mut now = EvalReport { label: "tuned".into(), rel_tol: 0.01, ..Default::default() };
    now.add("r1", "t", &score_answer(&target, r#"{"a":"x","b":2}"#, 0.01), "");
    now.add("r2", "t", &score_answer(&target, r#"{"a":"X","b":"2"}"#, 0.01), "");
    assert_eq!((now.field_accuracy(), now.overall.exact_match()), (1.0, 1.0));
    let dir = std::env::temp_dir().join(format!("medqlora-eval-report-{}", std::process::id()));
    base.write(&dir, None).unwrap();
    let back = EvalReport::read(&dir).unwrap();
    assert_eq!(back, base);
    let md = now.to_markdown(Some(&back));
    assert!(md.contains("| field accuracy | 4 | 25.0% | 100.0% | +75.0 |"), "{md}");
    assert!(md.contains("| b | 2 | 0.0% | 100.0% | +100.0 |"), "{md}");
    assert!(base.to_markdown(None).contains("Invalid JSON answers"));
    assert!(EvalReport::read(&dir.join("missing.json")).unwrap_err().to_string().contains("missing.json"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn batched_greedy_equals_one_prompt_at_a_time() {
    let model = tiny();
    let prompts: Vec<Vec<u32>> = vec![
        (0..23).map(|i| (i * 37 + 5) % 512).collect(),
        vec![7, 300, 12],
        (0..11).map(|i| (i * 101 + 9) % 512).collect(),
        vec![42],
    ];
    // A stop id that the model emits for some prompt, so rows stop at different steps.
    let free = SamplingConfig::greedy(12, vec![]);
    let runs: Vec<Vec<u32>> = prompts.iter().map(|p| generate(&model, p, &free, |_| {}).tokens).collect();
    let stop = runs[1][4];
    let cfg = SamplingConfig::greedy(12, vec![stop]);
    let single: Vec<_> = prompts.iter().map(|p| generate(&model, p, &cfg, |_| {})).collect();
    let batched = generate_batch(&model, &prompts, &cfg);
    assert_eq!(batched.len(), prompts.len());
    for (i, (s, b)) in single.iter().zip(&batched).enumerate() {
        assert_eq!(b.tokens, s.tokens, "row {i} (prompt length {})", prompts[i].len());
        assert_eq!(b.stop, s.stop, "row {i}");
        assert_eq!(b.prompt_tokens, prompts[i].len());
    }
    assert!(batched.iter().any(|g| g.stop == StopReason::StopToken) && batched.iter().any(|g| g.stop == StopReason::Length));
    assert!(generate_batch(&model, &[], &cfg).is_empty());
}

/// A byte-level BPE tokenizer.json (256 byte tokens + the Qwen specials) for the 512-token
/// fixture model, written next to a copy of its weights.
fn tiny_with_tokenizer() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("medqlora-eval-tiny-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(common::fixture("qwen2_tiny").join(f), dir.join(f)).unwrap();
    }
    // GPT-2's bytes_to_unicode.
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let vocab: serde_json::Map<String, serde_json::Value> =
        printable.iter().zip(&chars).map(|(&b, &c)| (char::from_u32(c).unwrap().to_string(), json!(b))).collect();
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"];
    let added: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"id": 256 + i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": []},
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    dir
}

#[test]
fn evaluate_end_to_end_on_the_tiny_model() {
    let dir = tiny_with_tokenizer();
    let tok = Tokenizer::from_model_dir(&dir).unwrap();
    assert_eq!(tok.encode("<|im_end|>ab").unwrap(), [258, 97, 98]);
    let template = ChatTemplate::from_model_dir(&dir);
    let model = tiny();
    let records: Vec<Record> = synth::generate(SynthKind::All, 2, 11).into_iter().map(|(r, _)| r).collect();
    let opts = EvalOptions { max_new_tokens: 6, batch_size: 3, max_prompt_tokens: 700, label: "tiny".into(), ..Default::default() };
    let report = evaluate(&model, &tok, &template, &records, &opts).unwrap();
    assert_eq!(report.overall.records, 8);
    assert_eq!(report.by_doc_type.len(), 4);
    assert_eq!(report.records.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), records.iter().map(|r| r.id.as_str()).collect::<Vec<_>>());
    // A random model does not answer in JSON: counted as invalid, its fields wrong.
    assert_eq!(report.overall.valid_json, 0);
    assert_eq!(report.field_accuracy(), 0.0);
    let fields: usize = records.iter().map(|r| medqlora::eval::score::flatten(r.target.as_object().unwrap()).len()).sum();
    assert_eq!(report.overall.fields, fields);
    // Deterministic, and independent of the batch size.
    let again = evaluate(&model, &tok, &template, &records, &EvalOptions { batch_size: 1, ..opts.clone() }).unwrap();
    assert_eq!(again, report);
    // Limit, and image records are refused by name.
    let one = evaluate(&model, &tok, &template, &records, &EvalOptions { limit: Some(1), ..opts.clone() }).unwrap();
    assert_eq!(one.overall.records, 1);
    let mut img = records[0].clone();
    img.image = Some("x.png".into());
    let e = evaluate(&model, &tok, &template, &[img], &opts).unwrap_err().to_string();
    assert!(e.contains(&records[0].id) && e.contains("image"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
