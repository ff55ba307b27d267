//! Parity with transformers on tiny random checkpoints (fixtures from
//! tools/make_fixtures_qwen2.py): logits and per-layer hidden states, tied embeddings,
//! Qwen2.5-VL's M-RoPE with distinct 3-D positions, and KV-cache decoding.

mod common;

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use common::{fixture, ids, max_abs_diff, reference, Target};
use medqlora::model::{PositionIds, Qwen2ForCausalLM, TextConfig, WeightStore};

fn load<B: Backend>(name: &str, device: &B::Device) -> Qwen2ForCausalLM<B> {
    let dir = fixture(name);
    let config = TextConfig::from_dir(&dir).unwrap();
    Qwen2ForCausalLM::load(&config, &WeightStore::open(&dir).unwrap(), device).unwrap()
}

fn check_logits_and_hidden<B: Backend>(t: Target<B>, name: &str) {
    let model = load::<B>(name, &t.device);
    let r = reference(fixture(name).join("reference.safetensors"));
    let (normed, hidden) = model.decode(model.embed(ids(&r["input_ids"], &t.device)), None, None, true);
    let n = model.config.num_hidden_layers;
    for (i, h) in hidden.iter().take(n).enumerate() {
        let err = max_abs_diff(&h.to_data(), &r[&format!("hidden.{i}")]);
        assert!(err <= t.logits_tol, "{name} on {}: hidden state {i} max-abs error {err} > {}", t.name, t.logits_tol);
    }
    // transformers' last hidden state is after the final norm.
    let err = max_abs_diff(&normed.to_data(), &r[&format!("hidden.{n}")]);
    assert!(err <= t.logits_tol, "{name} on {}: final hidden max-abs error {err}", t.name);
    let logits = model.project(normed).into_data();
    let err = max_abs_diff(&logits, &r["logits"]);
    println!("{name} on {}: logits max-abs error {err:.2e} (bound {:.0e})", t.name, t.logits_tol);
    assert!(err <= t.logits_tol, "{name} on {}: logits max-abs error {err} > {}", t.name, t.logits_tol);
}

#[test]
fn qwen2_logits_and_hidden_states_match_transformers() {
    fn run<B: Backend>(t: Target<B>) {
        check_logits_and_hidden(t, "qwen2_tiny");
    }
    on_every_backend!(run);
}

#[test]
fn tied_embeddings_match_transformers() {
    fn run<B: Backend>(t: Target<B>) {
        check_logits_and_hidden(t, "qwen2_tiny_tied");
    }
    on_every_backend!(run);
}

#[test]
fn qwen25_vl_text_path_with_3d_positions_matches_transformers() {
    fn run<B: Backend>(t: Target<B>) {
        let model = load::<B>("qwen25_vl_tiny", &t.device);
        assert_eq!(model.config.mrope_section, Some(vec![2, 3, 3]));
        let r = reference(fixture("qwen25_vl_tiny").join("reference.safetensors"));
        let pos = r["position_ids"].to_vec::<i64>().unwrap();
        let seq = r["position_ids"].shape[2];
        let rows = [0, 1, 2].map(|k| vec![pos[k * seq..(k + 1) * seq].to_vec()]);
        assert_ne!(rows[0], rows[2], "the fixture must exercise distinct M-RoPE rows");
        let positions = PositionIds { rows };
        let (h, _) = model.decode(model.embed(ids(&r["input_ids"], &t.device)), Some(&positions), None, false);
        let err = max_abs_diff(&model.project(h).into_data(), &r["logits"]);
        println!("qwen25_vl_tiny on {}: logits max-abs error {err:.2e}", t.name);
        assert!(err <= t.logits_tol, "qwen25_vl_tiny on {}: logits max-abs error {err} > {}", t.name, t.logits_tol);
        // Text positions give clearly different logits: the 3-D rows really are used.
        let (h_text, _) = model.decode(model.embed(ids(&r["input_ids"], &t.device)), None, None, false);
        let moved = max_abs_diff(&model.project(h_text).into_data(), &r["logits"]);
        assert!(moved > 0.1 && moved > 10.0 * err, "{}: text positions moved the logits by only {moved}", t.name);
    }
    on_every_backend!(run);
}

#[test]
fn kv_cache_decoding_equals_full_recompute() {
    fn run<B: Backend>(t: Target<B>) {
        let model = load::<B>("qwen2_tiny", &t.device);
        let r = reference(fixture("qwen2_tiny").join("reference.safetensors"));
        let all: Tensor<B, 2, Int> = ids(&r["input_ids"], &t.device);
        let [b, s] = all.dims();
        let full = model.forward(all.clone(), false).logits;
        // Prefill 5 tokens, then 3 one at a time, then the rest as a chunk of 4.
        let mut cache = model.new_cache();
        let mut start = 0;
        for chunk in [5, 1, 1, 1, 4] {
            let last = model.forward_cached(all.clone().narrow(1, start, chunk), &mut cache);
            start += chunk;
            assert_eq!(cache.seq_len(), start);
            let want = full.clone().narrow(1, start - 1, 1).reshape([b, model.config.vocab_size]);
            let err = max_abs_diff(&last.into_data(), &want.into_data());
            assert!(err <= t.logits_tol, "{}: cached step ending at {start} differs by {err}", t.name);
        }
        assert_eq!(start, s);
    }
    on_every_backend!(run);
}

/// A sequence longer than one attention query block (512 rows) goes through the blocked path
/// when it attends to itself; chunks of at most one block after a cache prefix do not. Both
/// must give the same next-token logits.
#[test]
fn long_sequences_in_query_blocks_equal_short_cached_chunks() {
    fn run<B: Backend>(t: Target<B>) {
        let model = load::<B>("qwen2_tiny", &t.device);
        let (s, vocab) = (700usize, model.config.vocab_size as i64);
        let tokens: Vec<i64> = (0..s as i64).map(|i| (i * 7919 + 13) % vocab).collect();
        let all = Tensor::<B, 2, Int>::from_data(TensorData::new(tokens, [1, s]), &t.device);
        assert!(s > medqlora::model::attention::QUERY_BLOCK, "the test needs the blocked path");
        let full = model.forward(all.clone(), false).logits;
        let mut cache = model.new_cache();
        let mut start = 0;
        for chunk in [400, 300] {
            let last = model.forward_cached(all.clone().narrow(1, start, chunk), &mut cache);
            start += chunk;
            let want = full.clone().narrow(1, start - 1, 1).reshape([1, model.config.vocab_size]);
            let err = max_abs_diff(&last.into_data(), &want.into_data());
            assert!(err <= t.logits_tol, "{}: cached chunk ending at {start} differs from the blocked forward by {err}", t.name);
        }
    }
    on_every_backend!(run);
}

#[test]
fn loader_names_the_bad_tensor() {
    let src = fixture("qwen2_tiny");
    let dir = std::env::temp_dir().join(format!("medqlora-loader-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A config that disagrees with the weights: the error names the first tensor that differs.
    let cfg = std::fs::read_to_string(src.join("config.json")).unwrap().replace("\"intermediate_size\": 128", "\"intermediate_size\": 96");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let device = Default::default();
    let load_err = |dir: &std::path::Path| {
        let config = TextConfig::from_dir(dir).unwrap();
        let store = WeightStore::open(dir).unwrap();
        Qwen2ForCausalLM::<medqlora::backend::CpuBackend>::load(&config, &store, &device).unwrap_err().to_string()
    };
    let e = load_err(&dir);
    assert!(e.contains("model.layers.0.mlp.gate_proj.weight") && e.contains("[128, 64]") && e.contains("[96, 64]"), "{e}");
    // A checkpoint without one tensor: the error names it.
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> =
        st.tensors().into_iter().filter(|(n, _)| n != "model.layers.1.self_attn.k_proj.bias").collect();
    safetensors::serialize_to_file(kept, None, &dir.join("model.safetensors")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.layers.1.self_attn.k_proj.bias") && e.contains("missing"), "{e}");
    // No weights at all.
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let e = WeightStore::open(&dir).err().unwrap().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sharded_checkpoints_load_like_single_files() {
    let src = fixture("qwen2_tiny");
    let dir = std::env::temp_dir().join(format!("medqlora-shards-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (a, b): (Vec<_>, Vec<_>) = st.tensors().into_iter().partition(|(n, _)| n.contains("layers.0") || n.contains("embed"));
    let mut map = serde_json::Map::new();
    for (file, part) in [("model-00001-of-00002.safetensors", &a), ("model-00002-of-00002.safetensors", &b)] {
        for (n, _) in part.iter() {
            map.insert(n.clone(), file.into());
        }
        safetensors::serialize_to_file(part.clone(), None, &dir.join(file)).unwrap();
    }
    std::fs::write(dir.join("model.safetensors.index.json"), serde_json::json!({"metadata": {}, "weight_map": map}).to_string()).unwrap();
    let device = Default::default();
    let sharded = load::<medqlora::backend::CpuBackend>("qwen2_tiny", &device);
    let config = TextConfig::from_dir(&dir).unwrap();
    let other = Qwen2ForCausalLM::<medqlora::backend::CpuBackend>::load(&config, &WeightStore::open(&dir).unwrap(), &device).unwrap();
    let x = Tensor::<medqlora::backend::CpuBackend, 2, Int>::from_data(TensorData::new(vec![1i64, 5, 9, 300], [1, 4]), &device);
    let d = max_abs_diff(&sharded.forward(x.clone(), false).logits.into_data(), &other.forward(x, false).logits.into_data());
    assert_eq!(d, 0.0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn generation_stops_at_stop_tokens_and_respects_the_budget() {
    use medqlora::generate::{generate, SamplingConfig, StopReason};
    let device = Default::default();
    let model = load::<medqlora::backend::CpuBackend>("qwen2_tiny", &device);
    let prompt = [3u32, 141, 59, 26];
    let free = generate(&model, &prompt, &SamplingConfig::greedy(6, vec![]), |_| {});
    assert_eq!((free.tokens.len(), free.stop), (6, StopReason::Length));
    // Greedy decoding is a function of the prompt: the KV-cache path picks the argmax of the
    // full forward's last logits at every step.
    let mut seq: Vec<u32> = prompt.to_vec();
    for &t in &free.tokens {
        let x = Tensor::<medqlora::backend::CpuBackend, 2, Int>::from_data(
            TensorData::new(seq.iter().map(|&v| v as i64).collect::<Vec<_>>(), [1, seq.len()]),
            &device,
        );
        let logits = model.forward(x, false).logits.narrow(1, seq.len() - 1, 1).into_data().to_vec::<f32>().unwrap();
        assert_eq!(medqlora::generate::argmax(&logits), t);
        seq.push(t);
    }
    // A stop token ends generation before it is emitted.
    let stop_at = free.tokens[2];
    let first = free.tokens.iter().position(|&t| t == stop_at).unwrap();
    let stopped = generate(&model, &prompt, &SamplingConfig::greedy(6, vec![stop_at]), |_| {});
    assert_eq!(stopped.stop, StopReason::StopToken);
    assert_eq!(stopped.tokens, free.tokens[..first].to_vec());
}
