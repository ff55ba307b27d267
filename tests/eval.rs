//! The evaluator: field scoring (normalization, units, lists, nesting, invalid JSON), the
//! report and its comparison, batched greedy generation against one-prompt generation on the
//! tiny fixture model, and `evaluate` end to end with a byte-level tokenizer for that model.

mod common;

use medqlora::backend::CpuBackend;
use medqlora::chat::ChatTemplate;
use medqlora::data::synth::{self, SynthKind};
use medqlora::data::Record;
use medqlora::eval::score::{parse_answer, score_answer, score_field};
use medqlora::eval::report::AnswerEnd;
use medqlora::eval::{evaluate, EvalOptions, EvalReport};
use medqlora::generate::{generate, generate_batch, SamplingConfig, StopReason};
use medqlora::model::{Qwen2ForCausalLM, TextConfig, WeightStore};
use medqlora::tokenizer::Tokenizer;
use serde_json::json;
use std::path::PathBuf;

type B = CpuBackend;

/// The tiny fixture model on `device`, dense or quantized to NF4 on load.
fn tiny_on<T: burn::tensor::backend::Backend>(device: &T::Device, nf4: bool) -> Qwen2ForCausalLM<T> {
    let dir = common::fixture("qwen2_tiny");
    let config = TextConfig::from_dir(&dir).unwrap();
    let q = nf4.then(medqlora::model::QuantizeOnLoad::default);
    Qwen2ForCausalLM::<T>::load_with(&config, &WeightStore::open(&dir).unwrap(), device, q.as_ref()).unwrap()
}

fn tiny() -> Qwen2ForCausalLM<B> {
    tiny_on::<B>(&Default::default(), false)
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
    base.add("r1", "t", &score_answer(&target, "oops", 0.01), "oops", AnswerEnd::default());
    base.add("r2", "t", &score_answer(&target, r#"{"a":"x"}"#, 0.01), r#"{"a":"x"}"#, AnswerEnd::default());
    assert_eq!((base.overall.valid_json, base.field_accuracy()), (1, 0.25));
    let mut now = EvalReport { label: "tuned".into(), rel_tol: 0.01, ..Default::default() };
    now.add("r1", "t", &score_answer(&target, r#"{"a":"x","b":2}"#, 0.01), "", AnswerEnd::default());
    now.add("r2", "t", &score_answer(&target, r#"{"a":"X","b":"2"}"#, 0.01), "", AnswerEnd::default());
    assert_eq!((now.field_accuracy(), now.overall.exact_match()), (1.0, 1.0));
    let dir = std::env::temp_dir().join(format!("medqlora-eval-report-{}", std::process::id()));
    base.write(&dir, None).unwrap();
    let back = EvalReport::read(&dir).unwrap();
    assert_eq!(back, base);
    let md = now.to_markdown(Some(&back));
    assert!(md.contains("| field accuracy | 4 | 25.0% | 100.0% | +75.0 |"), "{md}");
    assert!(md.contains("| b | 2 | 0.0% | 100.0% | +100.0 |"), "{md}");
    assert!(base.to_markdown(None).contains("Invalid JSON answers (1 of 2; 0 cut at the token budget"));
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

/// The batch decoder's logits, teacher-forced with each row's own greedy continuation, equal
/// full (uncached, unpadded) forwards of each prompt on the CPU: rows of very different lengths
/// (heavy left padding, one prompt past attention's 512-row query block), more rows than the
/// NF4 GEMV takes (the decode steps run the fused GEMM on CUDA), on every backend; on CUDA also
/// in bf16 with NF4 weights, as the evaluator runs on the GPU.
#[test]
fn batch_decoder_logits_equal_full_forwards() {
    use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
    use medqlora::generate::BatchDecoder;

    const STEPS: usize = 6;
    // Long beside short (the 583-token padding that broke the padded prefill on CUDA), lengths
    // 1 and 2, and one near-tie (600/599). Each length is a new shape on the GPU: few of them.
    let lens = [600usize, 1, 250, 17, 599, 2];
    let prompts: Vec<Vec<u32>> = lens.iter().enumerate().map(|(r, &n)| (0..n).map(|i| ((i * 37 + r * 101 + 5) % 512) as u32).collect()).collect();

    fn rows<B: Backend>(logits: Tensor<B, 2>) -> Vec<Vec<f32>> {
        let [_, v] = logits.dims();
        logits.into_data().convert::<f32>().to_vec::<f32>().unwrap().chunks(v).map(<[f32]>::to_vec).collect()
    }
    // Reference: each prompt with its continuation, one full forward on the CPU; the logits
    // at the last prompt position and the STEPS after it.
    let reference = |nf4: bool| -> (Vec<Vec<u32>>, Vec<Vec<Vec<f32>>>) {
        let model = tiny_on::<B>(&Default::default(), nf4);
        let mut conts = Vec::new();
        let mut want = Vec::new();
        for p in &prompts {
            let cont = generate(&model, p, &SamplingConfig::greedy(STEPS, vec![]), |_| {}).tokens;
            let all: Vec<i64> = p.iter().chain(&cont).map(|&t| t as i64).collect();
            let n = all.len();
            let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(all, [1, n]), &Default::default());
            let logits = model.forward(ids, false).logits;
            let v = logits.dims()[2];
            let at: Vec<Vec<f32>> = rows(logits.reshape([n, v])).into_iter().skip(p.len() - 1).take(STEPS).collect();
            conts.push(cont);
            want.push(at);
        }
        (conts, want)
    };
    fn check<B: Backend>(name: &str, device: &B::Device, nf4: bool, bound: f64, prompts: &[Vec<u32>], conts: &[Vec<u32>], want: &[Vec<Vec<f32>>]) {
        let t0 = std::time::Instant::now();
        let model = tiny_on::<B>(device, nf4);
        let (mut dec, mut logits) = BatchDecoder::prefill(&model, prompts);
        println!("{name}: prefill of {} prompts: {:.1} s (kernel compilation included)", prompts.len(), t0.elapsed().as_secs_f64());
        let mut worst = (0f64, 0, 0);
        for step in 0..STEPS {
            for (r, got) in rows(logits.clone()).iter().enumerate() {
                assert!(got.iter().all(|x| x.is_finite()), "{name}: row {r} step {step}: non-finite logits");
                let e = common::rel_l2(got, &want[r][step]);
                if e > worst.0 {
                    worst = (e, r, step);
                }
            }
            if step + 1 < STEPS {
                logits = dec.step(&conts.iter().map(|c| c[step]).collect::<Vec<_>>());
            }
        }
        println!("{name}: {:.1} s in all", t0.elapsed().as_secs_f64());
        println!("{name}: worst relative L2 {:.2e} (row {}, prompt length {}, step {})", worst.0, worst.1, prompts[worst.1].len(), worst.2);
        assert!(worst.0 <= bound, "{name}: row {} (prompt length {}) step {}: relative L2 {:.3e} > {bound:e}", worst.1, prompts[worst.1].len(), worst.2, worst.0);
    }
    let (conts, want) = reference(false);
    // f32 on the CPU: same products, different grouping (cache, padding, blocks).
    check::<B>("cpu f32", &Default::default(), false, 1e-5, &prompts, &conts, &want);
    #[cfg(feature = "cuda")]
    {
        common::gpu_runtime_once();
        let dev = burn::backend::cuda::CudaDevice::new(0);
        // TF32 tensor-core products (see common::CUDA_F32_LOGITS_TOL).
        check::<burn::backend::Cuda<f32>>("cuda f32", &dev, false, 1e-2, &prompts, &conts, &want);
        let (conts, want) = reference(true);
        // bf16 activations and weights (2^-9 per rounding) through two layers.
        check::<burn::backend::Cuda<half::bf16>>("cuda bf16 nf4", &dev, true, 5e-2, &prompts, &conts, &want);
    }
    #[cfg(not(feature = "cuda"))]
    println!("SKIPPED: the CUDA cases of this test need a `--features cuda` build and a GPU");
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
    // How each answer ended is recorded: within the budget, and cut exactly at it when it
    // did not stop on its own.
    assert!(report.records.iter().all(|r| r.end.new_tokens <= 6 && (!r.end.hit_budget || r.end.new_tokens == 6)));
    assert!(report.records.iter().any(|r| r.end.new_tokens > 0));
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
