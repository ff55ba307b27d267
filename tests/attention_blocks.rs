//! Query-block attention on every backend against one block over the whole sequence on the
//! CPU (eager attention), at the tiny fixture model's head shape (2 kv heads x 2, head dim 16)
//! and the prompt lengths of `tests/eval.rs::batch_decoder_logits_equal_full_forwards`, whose
//! CUDA run failed at a 599-token prefill: these tests found the f32 products Burn's autotuning
//! picks wrong on the 599-token tail block on H100s (hence `attention::block_matmul`), and
//! check the fused bf16 forward kernel and the bf16 backward. Lengths cover one block (87, 512), a 512-row block plus a tail
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

/// The fused kernel (`model::attention_kernel`, what every forward without a tape takes on
/// CUDA in bf16) against eager attention in f32 on the CPU of the same bf16-rounded inputs:
/// the tiny model's head shape at the lengths above, the 0.5B's (head dim 64, 7 query heads
/// per kv head) with a per-sequence padded mask, and the 7B's (head dim 128) at 2,048 tokens.
/// Fresh random inputs each run; the kernel must take every case (no silent fallback).
#[test]
fn fused_bf16_attention_equals_eager_attention_on_the_cpu() {
    #[cfg(not(feature = "cuda"))]
    println!("skipped: the fused attention kernel needs a CUDA build and GPU");
    #[cfg(feature = "cuda")]
    {
        use burn::tensor::Bool;
        use medqlora::model::attention_kernel::{fused_causal, set_attention_kernel, AttentionKernel};
        type G = burn::backend::Cuda<half::bf16>;
        type C = medqlora::backend::CpuBackend;
        let gpu = burn::backend::cuda::CudaDevice::new(0);
        let seed: u64 = rand::rng().random();
        println!("cuda bf16: seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        // (batch, kv heads, rep, head dim, length, padding of sequence 1)
        for (b, kvh, rep, d, s, pad) in [(1, 2, 2, 16, 87, 0), (1, 2, 2, 16, 599, 0), (1, 2, 2, 16, 1001, 0), (2, 2, 7, 64, 300, 9), (1, 4, 7, 128, 2048, 0)] {
            let round = |x: Vec<f32>| x.into_iter().map(|v| half::bf16::from_f32(v).to_f32()).collect::<Vec<_>>();
            let (q, k, v) = (round(common::bell(&mut rng, b * kvh * rep * s * d, 1.0)), round(common::bell(&mut rng, b * kvh * s * d, 1.0)), round(common::bell(&mut rng, b * kvh * s * d, 1.0)));
            // Causal; sequence 1 left-padded by `pad` (a padding query sees itself).
            let hidden: Vec<bool> = (0..b).flat_map(|r| (0..s).flat_map(move |i| (0..s).map(move |j| j > i || (r == 1 && j < pad && j != i)))).collect();
            let want = {
                let dev = Default::default();
                let mask = Tensor::<C, 5, Bool>::from_data(TensorData::new(hidden.clone(), [b, 1, 1, s, s]), &dev);
                let q = Tensor::<C, 5>::from_data(TensorData::new(q.clone(), [b, kvh, rep, s, d]), &dev);
                let k = Tensor::<C, 4>::from_data(TensorData::new(k.clone(), [b, kvh, s, d]), &dev);
                let v = Tensor::<C, 4>::from_data(TensorData::new(v.clone(), [b, kvh, s, d]), &dev);
                attend_causal_ops(q, k, v, &mask, s).into_data()
            };
            let mask = Tensor::<G, 5, Bool>::from_data(TensorData::new(hidden, [b, 1, 1, s, s]), &gpu);
            // The dtype is named: without it the device's default applies, which an earlier
            // f32 test on the same device sets to f32.
            let bf16 = (&gpu, burn::tensor::DType::BF16);
            let q = Tensor::<G, 5>::from_data(TensorData::new(q, [b, kvh, rep, s, d]), bf16);
            let k = Tensor::<G, 4>::from_data(TensorData::new(k, [b, kvh, s, d]), bf16);
            let v = Tensor::<G, 4>::from_data(TensorData::new(v, [b, kvh, s, d]), bf16);
            // Both kernels (a process-wide choice, restored below; the device runs these
            // tests one at a time); the one-pass kernel also computing the causal mask where
            // nothing is padded.
            for (kernel, causal_only) in [(AttentionKernel::TwoPass, false), (AttentionKernel::Flash, false), (AttentionKernel::Flash, pad == 0)] {
                set_attention_kernel(kernel);
                let got = fused_causal(q.clone(), k.clone(), v.clone(), &mask, causal_only).unwrap_or_else(|_| panic!("the {kernel:?} kernel refused bf16 {b}x{kvh}x{rep}x{s}x{d}"));
                set_attention_kernel(AttentionKernel::default());
                let e = common::rel_l2(&common::values(&got.into_data()), &common::values(&want));
                let bound = 1e-2;
                println!("cuda bf16 {kernel:?} (mask computed: {causal_only}): batch {b}, kv heads {kvh} x {rep}, head dim {d}, length {s}, pad {pad}: relative L2 {e:.2e} (bound {bound:.0e})");
                assert!(e.is_finite() && e <= bound, "{kernel:?} attention at length {s}, head dim {d}: relative L2 {e:e} > {bound:e} (seed {seed})");
            }
        }
    }
}

/// Each op of every query block at 599 tokens (a 512-row block reading a prefix of the keys,
/// then an 87-row tail that starts at an offset into q and the mask) as the model runs it,
/// against the same op on the CPU, fed the same inputs: the narrowed and regrouped queries,
/// the scores, the masked softmax, the output. A failure names the first op that differs,
/// which the whole-attention test above cannot. Burn's autotuned matmul on the tail block is
/// printed beside the model's product (`attention::block_matmul`): it is why f32 on CUDA takes
/// the fixed kernel (0.997 relative L2 on an H100, 2026-12-06).
#[test]
fn each_op_of_a_block_equals_the_cpu() {
    use medqlora::model::attention::{block_keys, block_matmul, block_rows, query_blocks};
    use medqlora::model::softmax::masked_softmax;
    fn run<B: Backend>(t: common::Target<B>) {
        type C = medqlora::backend::CpuBackend;
        let seed: u64 = rand::rng().random();
        println!("{}: seed {seed}", t.name);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (kvh, rep, d, s) = (2, 2, 16, 599);
        let (q, k, v) = (common::bell(&mut rng, kvh * rep * s * d, 1.0), common::bell(&mut rng, kvh * s * d, 1.0), common::bell(&mut rng, kvh * s * d, 1.0));
        let cpu = Default::default();
        let bound = if t.name == "cpu" { 1e-6 } else { 1e-3 };
        let check = |what: String, got: TensorData, want: TensorData| {
            let e = common::rel_l2(&common::values(&got), &common::values(&want));
            println!("{}: {what}: relative L2 {e:.2e} (bound {bound:.0e})", t.name);
            assert!(e.is_finite() && e <= bound, "{}: {what}: relative L2 {e:e} > {bound:e} (seed {seed})", t.name);
        };
        let (qg, kg, vg) = (
            Tensor::<B, 5>::from_data(TensorData::new(q.clone(), [1, kvh, rep, s, d]), &t.device),
            Tensor::<B, 4>::from_data(TensorData::new(k.clone(), [1, kvh, s, d]), &t.device),
            Tensor::<B, 4>::from_data(TensorData::new(v.clone(), [1, kvh, s, d]), &t.device),
        );
        let (qc, kc, vc) = (
            Tensor::<C, 5>::from_data(TensorData::new(q, [1, kvh, rep, s, d]), &cpu),
            Tensor::<C, 4>::from_data(TensorData::new(k, [1, kvh, s, d]), &cpu),
            Tensor::<C, 4>::from_data(TensorData::new(v, [1, kvh, s, d]), &cpu),
        );
        let (mask_g, mask_c) = (causal_mask::<B>(s, 0, &t.device), causal_mask::<C>(s, 0, &cpu));
        let scale = (d as f64).powf(-0.5);
        for (r0, n, keys) in query_blocks(s, 0, QUERY_BLOCK) {
            let block = format!("block of rows {r0}..{} reading {keys} keys", r0 + n);
            let rows_g = block_rows(&qg, r0, n);
            let rows_c = qc.clone().narrow(3, r0, n).reshape([1, kvh, rep * n, d]);
            check(format!("{block}: narrowed queries"), rows_g.clone().into_data(), rows_c.clone().into_data());
            let scores_c = rows_c.matmul(kc.clone().narrow(2, 0, keys).swap_dims(2, 3));
            let (kb, vb, m_g) = block_keys(&kg, &vg, &mask_g, r0, n, keys);
            // Burn's autotuned matmul, printed only (not the model's path in f32).
            let tuned = rows_g.clone().matmul(kb.clone().swap_dims(2, 3));
            let e = common::rel_l2(&common::values(&tuned.into_data()), &common::values(&scores_c.clone().into_data()));
            println!("{}: {block}: scores by Burn's autotuned matmul (printed only): relative L2 {e:.2e}", t.name);
            check(format!("{block}: scores"), block_matmul(rows_g, kb.swap_dims(2, 3)).into_data(), scores_c.clone().into_data());
            // From here each op gets the CPU's inputs, so an error is that op's own.
            let m_c = mask_c.clone().narrow(3, r0, n).narrow(4, 0, keys);
            check(format!("{block}: mask"), m_g.clone().int().into_data(), m_c.clone().int().into_data());
            let probs_c = masked_softmax(scores_c.clone(), m_c, rep, scale);
            let probs_g = masked_softmax(Tensor::<B, 4>::from_data(scores_c.into_data(), &t.device), m_g, rep, scale);
            check(format!("{block}: masked softmax"), probs_g.into_data(), probs_c.clone().into_data());
            let out_c = probs_c.clone().matmul(vc.clone().narrow(2, 0, keys));
            let out_g = block_matmul(Tensor::<B, 4>::from_data(probs_c.into_data(), &t.device), vb);
            check(format!("{block}: probabilities times values"), out_g.into_data(), out_c.into_data());
        }
    }
    on_every_backend!(run);
}

/// Training's attention backward (`attention_grad::attention_backward`: Burn's autotuned
/// products in bf16, the fused softmax gradient) in bf16 on CUDA against the f32 gradients of
/// the CPU on the same bf16-rounded inputs, at the odd lengths where f32's autotuned products
/// went wrong and at the 0.5B head shape.
#[test]
fn bf16_attention_gradients_equal_the_cpu() {
    #[cfg(not(feature = "cuda"))]
    println!("skipped: the bf16 gradient check runs on a CUDA build and GPU");
    #[cfg(feature = "cuda")]
    {
        type G = burn::backend::Cuda<half::bf16>;
        type C = medqlora::backend::CpuBackend;
        let seed: u64 = rand::rng().random();
        println!("cuda bf16: seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        fn grads<X: Backend>(dev: &X::Device, (q, k, v, dout): (&[f32], &[f32], &[f32], &[f32]), (kvh, rep, s, d): (usize, usize, usize, usize), block: usize) -> [Vec<f32>; 3] {
            // The backend's own float dtype, named (see the fused test above).
            let dtype = (dev, <X::FloatElem as burn::tensor::Element>::dtype());
            let t5 = |x: &[f32]| Tensor::<X, 5>::from_data(TensorData::new(x.to_vec(), [1, kvh, rep, s, d]), dtype);
            let t4 = |x: &[f32]| Tensor::<X, 4>::from_data(TensorData::new(x.to_vec(), [1, kvh, s, d]), dtype);
            let (dq, dk, dv) = attention_backward(t5(q), t4(k), t4(v), causal_mask::<X>(s, 0, dev), t5(dout), block);
            assert_eq!(dq.dtype(), dtype.1, "gradients in the backend's dtype");
            [common::values(&dq.into_data()), common::values(&dk.into_data()), common::values(&dv.into_data())]
        }
        for (kvh, rep, d, s) in [(2, 2, 16, 599), (2, 2, 16, 600), (2, 2, 16, 1001), (2, 7, 64, 777)] {
            let round = |x: Vec<f32>| x.into_iter().map(|v| half::bf16::from_f32(v).to_f32()).collect::<Vec<_>>();
            let n5 = kvh * rep * s * d;
            let (q, k, v, dout) = (round(common::bell(&mut rng, n5, 1.0)), round(common::bell(&mut rng, kvh * s * d, 1.0)), round(common::bell(&mut rng, kvh * s * d, 1.0)), round(common::bell(&mut rng, n5, 1.0)));
            let inputs = (&q[..], &k[..], &v[..], &dout[..]);
            let got = grads::<G>(&burn::backend::cuda::CudaDevice::new(0), inputs, (kvh, rep, s, d), QUERY_BLOCK);
            let want = grads::<C>(&Default::default(), inputs, (kvh, rep, s, d), s);
            let bound = 3e-2;
            for (name, g, w) in [("dq", &got[0], &want[0]), ("dk", &got[1], &want[1]), ("dv", &got[2], &want[2])] {
                let e = common::rel_l2(g, w);
                println!("cuda bf16: kv heads {kvh} x {rep}, head dim {d}, length {s}: {name} relative L2 {e:.2e} (bound {bound:.0e})");
                assert!(e.is_finite() && e <= bound, "bf16 length {s}: {name} relative L2 {e:e} > {bound:e} (seed {seed})");
            }
        }
    }
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
