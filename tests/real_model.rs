//! The real pretrained Qwen2.5 0.5B (models/qwen2.5-0.5b, made by tools/fetch-model.sh):
//! our chat template + tokenizer give transformers' prompt ids, and greedy decoding on the CPU
//! reproduces transformers' greedy tokens (fixture from tools/make_fixture_greedy.py).
//! Skipped, with the reason printed, when the model folder is absent.

mod common;

use medqlora::backend::CpuBackend;
use medqlora::chat::ChatTemplate;
use medqlora::generate::{generate, SamplingConfig};
use medqlora::model::{Qwen2ForCausalLM, TextConfig, WeightStore};
use medqlora::tokenizer::Tokenizer;

#[derive(serde::Deserialize)]
struct Case {
    prompt: String,
    chat_text: String,
    prompt_ids: Vec<u32>,
    new_ids: Vec<u32>,
    new_text: String,
}

#[derive(serde::Deserialize)]
struct Fixture {
    max_new_tokens: usize,
    cases: Vec<Case>,
}

#[test]
fn greedy_generation_reproduces_transformers() {
    let Some(dir) = common::real_model_dir() else { return };
    let fixture: Fixture =
        serde_json::from_str(&std::fs::read_to_string(common::fixture("qwen25_05b_greedy.json")).unwrap()).unwrap();
    let tokenizer = Tokenizer::from_model_dir(&dir).unwrap();
    let template = ChatTemplate::from_model_dir(&dir);
    let config = TextConfig::from_dir(&dir).unwrap();
    let device = Default::default();
    let model = Qwen2ForCausalLM::<CpuBackend>::load(&config, &WeightStore::open(&dir).unwrap(), &device).unwrap();
    for case in &fixture.cases {
        let text = template.user_prompt(None, &case.prompt);
        assert_eq!(text, case.chat_text, "chat template differs from the checkpoint's Jinja template");
        let ids = tokenizer.encode(&text).unwrap();
        assert_eq!(ids, case.prompt_ids, "tokenizer ids differ from transformers'");
        let cfg = SamplingConfig::greedy(fixture.max_new_tokens, tokenizer.stop_ids());
        let out = generate(&model, &ids, &cfg, |_| {});
        let text = tokenizer.decode(&out.tokens).unwrap();
        println!("{:?} -> {:?} (decode {:.1} tok/s)", case.prompt, text, out.decode_tokens_per_sec());
        assert_eq!(out.tokens, case.new_ids, "greedy tokens differ from transformers'");
        assert_eq!(text, case.new_text);
    }
}
