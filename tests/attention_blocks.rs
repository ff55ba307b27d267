//! Query-block attention on every backend against one block over the whole sequence on the
//! CPU (eager attention), at the tiny fixture model's head shape (2 kv heads x 2, head dim 16)
//! and the prompt lengths of `tests/eval.rs::batch_decoder_logits_equal_full_forwards`, whose
//! CUDA run fails at a 599-token prefill: this localizes whether attention's blocks are where
//! the CUDA prefill goes wrong. Lengths cover one block (87, 512), a 512-row block plus a tail
//! (599, 1,001), and the three equal blocks (600, 1,024). Fresh random inputs each run. On
//! CUDA the blocks' softmax and its gradient are the fused kernels (`model::softmax`), so these
//! tests also check them in the model's layout against the CPU's tensor ops. The last test
//! follows the tiny model's prefill layer by layer at the same lengths.

mod common;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use medqlora::model::attention::{attend_causal_ops, QUERY_BLOCK};
use medqlora::model::attention_grad::attention_backward;
use medqlora::model::text::causal_mask;
use rand::{Rng, SeedableRng};

#[test]
fn blocked_attention_equals_eager_attention_on_the_cpu() {
    fn run<B: Backend>(t: common::Target<B>) {
        let seed: u64 = rand::rng().random();
        println!("{}: seed {seed}", t.name);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (kvh, rep, d) = (2, 2, 16);
        for s in [87, 512, 599, 600, 1001, 1024] {
            let (q, k, v) = (common::bell(&mut rng, kvh * rep * s * d, 1.0), common::bell(&mut rng, kvh * s * d, 1.0), common::bell(&mut rng, kvh * s * d, 1.0));
            let on = |dev: &B::Device| {
                let q = Tensor::<B, 5>::from_data(TensorData::new(q.clone(), [1, kvh, rep, s, d]), dev);
                let k = Tensor::<B, 4>::from_data(TensorData::new(k.clone(), [1, kvh, s, d]), dev);
                let v = Tensor::<B, 4>::from_data(TensorData::new(v.clone(), [1, kvh, s, d]), dev);
                attend_causal_ops(q, k, v, &causal_mask::<B>(s, 0, dev), QUERY_BLOCK).into_data()
            };
            let want = {
                type C = medqlora::backend::CpuBackend;
                let dev = Default::default();
                let q = Tensor::<C, 5>::from_data(TensorData::new(q.clone(), [1, kvh, rep, s, d]), &dev);
                let k = Tensor::<C, 4>::from_data(TensorData::new(k.clone(), [1, kvh, s, d]), &dev);
                let v = Tensor::<C, 4>::from_data(TensorData::new(v.clone(), [1, kvh, s, d]), &dev);
                attend_causal_ops(q, k, v, &causal_mask::<C>(s, 0, &dev), s).into_data()
            };
            let e = common::rel_l2(&common::values(&on(&t.device)), &common::values(&want));
            let bound = if t.name == "cpu" { 1e-5 } else { 1e-2 };
            println!("{}: length {s}: blocks {:?}: relative L2 {e:.2e} (bound {bound:.0e})", t.name, medqlora::model::attention::query_blocks(s, 0, QUERY_BLOCK));
            assert!(e.is_finite() && e <= bound, "{}: length {s}: relative L2 {e:e} > {bound:e} (seed {seed})", t.name);
        }
    }
    on_every_backend!(run);
}

#[test]
fn blocked_attention_gradients_equal_eager_gradients_on_the_cpu() {
    fn run<B: Backend>(t: common::Target<B>) {
        let seed: u64 = rand::rng().random();
        println!("{}: seed {seed}", t.name);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (kvh, rep, d) = (2, 2, 16);
        for s in [87, 599, 600, 1001] {
            let n5 = kvh * rep * s * d;
            let (q, k, v, dout) = (common::bell(&mut rng, n5, 1.0), common::bell(&mut rng, kvh * s * d, 1.0), common::bell(&mut rng, kvh * s * d, 1.0), common::bell(&mut rng, n5, 1.0));
            fn grads<C: Backend>(dev: &C::Device, (q, k, v, dout): (&[f32], &[f32], &[f32], &[f32]), (kvh, rep, s, d): (usize, usize, usize, usize), block: usize) -> [Vec<f32>; 3] {
                let t5 = |x: &[f32]| Tensor::<C, 5>::from_data(TensorData::new(x.to_vec(), [1, kvh, rep, s, d]), dev);
                let t4 = |x: &[f32]| Tensor::<C, 4>::from_data(TensorData::new(x.to_vec(), [1, kvh, s, d]), dev);
                let (dq, dk, dv) = attention_backward(t5(q), t4(k), t4(v), causal_mask::<C>(s, 0, dev), t5(dout), block);
                [common::values(&dq.into_data()), common::values(&dk.into_data()), common::values(&dv.into_data())]
            }
            let inputs = (&q[..], &k[..], &v[..], &dout[..]);
            let got = grads::<B>(&t.device, inputs, (kvh, rep, s, d), QUERY_BLOCK);
            let want = grads::<medqlora::backend::CpuBackend>(&Default::default(), inputs, (kvh, rep, s, d), s);
            let bound = if t.name == "cpu" { 1e-5 } else { 1e-2 };
            for (name, g, w) in [("dq", &got[0], &want[0]), ("dk", &got[1], &want[1]), ("dv", &got[2], &want[2])] {
                let e = common::rel_l2(g, w);
                println!("{}: length {s}: {name} relative L2 {e:.2e} (bound {bound:.0e})", t.name);
                assert!(e.is_finite() && e <= bound, "{}: length {s}: {name} relative L2 {e:e} > {bound:e} (seed {seed})", t.name);
            }
        }
    }
    on_every_backend!(run);
}

/// The tiny fixture model's prefill (`forward_cached` on an empty cache, what the batched
/// decoder runs) against the CPU's full forward at the batch-decoder test's prompt lengths:
/// every layer's hidden state, then the last position's logits. Prints each layer's error, so
/// a failure shows the first layer that goes wrong. On the CPU this checks the cached path
/// against the uncached one.
#[test]
fn prefill_layers_equal_the_cpu_forward() {
    use burn::tensor::Int;
    use medqlora::model::{Qwen2ForCausalLM, TextConfig, WeightStore};
    fn run<B: Backend>(t: common::Target<B>) {
        type C = medqlora::backend::CpuBackend;
        let dir = common::fixture("qwen2_tiny");
        let config = TextConfig::from_dir(&dir).unwrap();
        let store = WeightStore::open(&dir).unwrap();
        let cpu = Qwen2ForCausalLM::<C>::load(&config, &store, &Default::default()).unwrap();
        let model = Qwen2ForCausalLM::<B>::load(&config, &store, &t.device).unwrap();
        for (r, s) in [17usize, 599, 600].into_iter().enumerate() {
            let ids: Vec<i64> = (0..s).map(|i| ((i * 37 + r * 101 + 5) % 512) as i64).collect();
            let want = cpu.forward(Tensor::<C, 2, Int>::from_data(TensorData::new(ids.clone(), [1, s]), &Default::default()), true);
            let got = model.forward(Tensor::<B, 2, Int>::from_data(TensorData::new(ids.clone(), [1, s]), &t.device), true);
            for (layer, (g, w)) in got.hidden_states.iter().zip(&want.hidden_states).enumerate() {
                let e = common::rel_l2(&common::values(&g.clone().into_data()), &common::values(&w.clone().into_data()));
                println!("{}: length {s}: hidden state {layer}: relative L2 {e:.2e}", t.name);
            }
            let mut cache = model.new_cache();
            let last = model.forward_cached(Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, s]), &t.device), &mut cache);
            let v = config.vocab_size;
            let want_last: Vec<f32> = common::values(&want.logits.into_data())[(s - 1) * v..].to_vec();
            let e = common::rel_l2(&common::values(&last.into_data()), &want_last);
            let bound = if t.name == "cpu" { 1e-5 } else { 1e-2 };
            println!("{}: length {s}: prefill's last logits relative L2 {e:.2e} (bound {bound:.0e})", t.name);
            assert!(e.is_finite() && e <= bound, "{}: length {s}: prefill logits relative L2 {e:e} > {bound:e}", t.name);
        }
    }
    on_every_backend!(run);
}
