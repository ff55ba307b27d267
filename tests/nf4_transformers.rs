//! transformers + bitsandbytes load the checkpoint `medqlora quantize` wrote
//! (tests/fixtures/qwen2_tiny_nf4) as Linear4bit layers, and their logits equal medqlora's NF4
//! forward. The reference logits were computed on the H200 by tools/check_bnb_roundtrip.py
//! (f32 compute, so the only differences are summation order).

mod common;

use common::{fixture, ids, max_abs_diff, reference};
use medqlora::backend::CpuBackend;
use medqlora::model::{Qwen2ForCausalLM, TextConfig, WeightStore};

#[test]
fn transformers_loads_our_nf4_checkpoint_with_the_same_logits() {
    let dir = fixture("qwen2_tiny_nf4");
    let path = dir.join("reference.safetensors");
    let meta = common::metadata(path.clone());
    assert_eq!(meta["loaded_as"], "Linear4bit");
    let r = reference(path);
    let device = Default::default();
    let model = Qwen2ForCausalLM::<CpuBackend>::load(&TextConfig::from_dir(&dir).unwrap(), &WeightStore::open(&dir).unwrap(), &device).unwrap();
    let logits = model.forward(ids(&r["input_ids"], &device), false).logits.into_data();
    let err = max_abs_diff(&logits, &r["logits"]);
    println!("medqlora NF4 vs transformers {} + bitsandbytes {}: logits max-abs {err:.2e}", meta["transformers"], meta["bitsandbytes"]);
    assert!(err <= 1e-3, "logits differ by {err}");
}
