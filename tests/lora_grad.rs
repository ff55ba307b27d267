//! Gradients flow through NF4 and dense bases into the LoRA adapters only (frozen bases get
//! none), and match central finite differences of the loss on the CPU; a training step's
//! gradients through the NF4 base equal the dense path's on the same values (CPU, and the NF4
//! kernels on the GPU in CUDA builds: tools/device/gpu-tests.txt).

mod common;

use burn::backend::Autodiff;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::module::Param;
use burn::tensor::{Distribution, Tensor};
use common::{fixture, ids, reference, rel_l2};
use medqlora::backend::CpuBackend;
use medqlora::lora::LoraSpec;
use medqlora::model::{QuantizeOnLoad, Qwen2ForCausalLM, TextConfig, WeightStore};

type AD = Autodiff<CpuBackend>;

fn loss(model: &Qwen2ForCausalLM<AD>, x: &Tensor<AD, 2, burn::tensor::Int>) -> Tensor<AD, 1> {
    // A smooth scalar of all logits (no saturation), enough to exercise every path.
    let logits = model.forward(x.clone(), false).logits;
    (logits.clone() * logits).mean().reshape([1])
}

/// [`loss`] reduced in f64 on the host: the f32 mean over all logits resolves only ~1e-7, which
/// divided by the step 2h = 2e-2 is 6e-6 per ulp and a few ulps of summation noise, more than
/// the numeric side may err for the small gradient entries.
fn loss_f64(model: &Qwen2ForCausalLM<AD>, x: &Tensor<AD, 2, burn::tensor::Int>) -> f64 {
    let logits = model.forward(x.clone(), false).logits.into_data().to_vec::<f32>().unwrap();
    logits.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / logits.len() as f64
}

#[test]
fn lora_gradients_match_finite_differences_through_nf4() {
    let dir = fixture("qwen2_tiny");
    let config = TextConfig::from_dir(&dir).unwrap();
    let device = Default::default();
    for quantize in [None, Some(QuantizeOnLoad::default())] {
        let mut model = Qwen2ForCausalLM::<AD>::load_with(&config, &WeightStore::open(&dir).unwrap(), &device, quantize.as_ref()).unwrap();
        let spec = LoraSpec { r: 4, alpha: 8.0, dropout: 0.0, use_rslora: false };
        model.add_lora(&spec, &["down_proj".to_string(), "q_proj".to_string()], &device);
        // Non-zero B so that A receives gradient too.
        for l in model.model.layers.iter_mut() {
            for lin in [&mut l.mlp.down_proj, &mut l.self_attn.q_proj] {
                let lora = lin.lora.as_mut().unwrap();
                let dims = lora.lora_b.val().dims();
                lora.lora_b = Param::from_tensor(Tensor::random(dims, Distribution::Normal(0.0, 0.1), &device).require_grad());
            }
        }
        let r = reference(dir.join("reference.safetensors"));
        let x = ids::<AD, 2>(&r["input_ids"], &device);
        let grads = loss(&model, &x).backward();
        let a = model.model.layers[1].mlp.down_proj.lora.as_ref().unwrap().lora_a.val();
        let g = a.grad(&grads).expect("lora_A gets a gradient").into_data().to_vec::<f32>().unwrap();
        assert!(g.iter().any(|v| *v != 0.0));
        if let medqlora::model::linear::LinearWeight::Dense(w) = &model.model.layers[1].mlp.down_proj.weight {
            assert!(w.val().grad(&grads).is_none(), "the frozen base must not get a gradient");
        }
        // Central differences on a few entries of lora_A. In f32 with step 1e-2 the numeric
        // side carries ~1e-2 relative error (seen up to 1.6e-2): bound 3e-2 relative + 2e-5.
        let base = a.clone().inner().into_data().to_vec::<f32>().unwrap();
        let dims = a.dims();
        for &idx in &[0usize, 7, 100, 255] {
            let eval = |delta: f32| {
                let mut v = base.clone();
                v[idx] += delta;
                let mut m = model.clone();
                m.model.layers[1].mlp.down_proj.lora.as_mut().unwrap().lora_a =
                    Param::from_tensor(Tensor::from_data(burn::tensor::TensorData::new(v, dims), &device));
                loss_f64(&m, &x)
            };
            let h = 1e-2;
            let fd = (eval(h) - eval(-h)) / (2.0 * h as f64);
            let an = g[idx] as f64;
            let scale = fd.abs().max(an.abs());
            println!("{}: lora_A[{idx}] analytic {an:.6e} numeric {fd:.6e}", if quantize.is_some() { "nf4" } else { "dense" });
            assert!((fd - an).abs() <= 3e-2 * scale + 2e-5, "gradient mismatch at {idx}: analytic {an} vs numeric {fd}");
        }
    }
}

/// One training step's LoRA gradients (the trainer's `forward_backward`, checkpointed, all
/// seven projections) through the NF4 base equal those through a dense base holding exactly the
/// dequantized weights, and differ from the original dense base's by no more than NF4 rounding of
/// the weights allows; unchanged without checkpointing (whose recompute skips `down_proj`'s
/// frozen product, `OutputUse::TapeOnly`). On the CPU and, in CUDA builds, through the NF4
/// kernels on the GPU.
#[test]
fn nf4_training_gradients_match_the_dense_path() {
    use medqlora::train::batches::Batch;
    use medqlora::train::optim::NamedTensors;
    use medqlora::train::step::forward_backward;

    fn grads_of<B: AutodiffBackend>(model: &Qwen2ForCausalLM<B>, batch: &Batch) -> NamedTensors<B::InnerBackend> {
        grads_with(model, batch, true)
    }
    fn grads_with<B: AutodiffBackend>(model: &Qwen2ForCausalLM<B>, batch: &Batch, checkpointing: bool) -> NamedTensors<B::InnerBackend> {
        let mut g = NamedTensors::new();
        forward_backward(model, batch, 1.0 / batch.scored_tokens() as f64, checkpointing, 5, &mut g);
        g
    }
    fn flat<B: Backend>(t: &Tensor<B, 2>) -> Vec<f32> {
        common::values(&t.clone().into_data())
    }
    fn run<B: Backend>(t: common::Target<B>) {
        let dir = fixture("qwen2_tiny");
        let config = TextConfig::from_dir(&dir).unwrap();
        let store = WeightStore::open(&dir).unwrap();
        let targets: Vec<String> = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"].iter().map(|s| s.to_string()).collect();
        let spec = LoraSpec { r: 4, alpha: 8.0, dropout: 0.0, use_rslora: false };
        let mut nf4 = Qwen2ForCausalLM::<Autodiff<B>>::load_with(&config, &store, &t.device, Some(&QuantizeOnLoad::default())).unwrap();
        nf4.add_lora(&spec, &targets, &t.device);
        for (_, l) in nf4.linears_mut() {
            if let Some(lora) = l.lora.as_mut() {
                let dims = lora.lora_b.val().dims();
                lora.lora_b = Param::from_tensor(Tensor::random(dims, Distribution::Normal(0.0, 0.1), &t.device).require_grad());
            }
        }
        let mut dequantized = nf4.clone();
        for (_, l) in dequantized.linears_mut() {
            l.dequantize_in_place();
        }
        let mut dense = Qwen2ForCausalLM::<Autodiff<B>>::load(&config, &store, &t.device).unwrap();
        dense.add_lora(&spec, &targets, &t.device);
        let adapters: std::collections::HashMap<String, _> =
            nf4.linears().into_iter().filter_map(|(n, l)| l.lora.clone().map(|a| (n, a))).collect();
        let mut weight_err: f64 = 0.0;
        use medqlora::model::linear::LinearWeight;
        let quantized: std::collections::HashMap<String, Vec<f32>> = dequantized.linears().into_iter().map(|(n, l)| (n, flat(&l.dense_weight()))).collect();
        for (name, l) in dense.linears_mut() {
            if let Some(a) = adapters.get(&name) {
                l.lora = Some(a.clone());
                weight_err = weight_err.max(rel_l2(&quantized[&name], &flat(&l.dense_weight())));
            }
        }
        let r = reference(dir.join("reference.safetensors"));
        let input = r["input_ids"].clone();
        let (b, s) = (input.shape[0], input.shape[1]);
        let ids = input.convert::<i64>().to_vec::<i64>().unwrap();
        let mut batch = Batch { example_ids: (0..b).collect(), input_ids: ids.clone(), targets: vec![0; b * s], weights: vec![0.0; b * s], batch: b, seq: s };
        for row in 0..b {
            for p in 0..s - 1 {
                batch.targets[row * s + p] = ids[row * s + p + 1];
                batch.weights[row * s + p] = 1.0;
            }
        }
        // What rounding of this size does anyway: the dense base plus Gaussian noise with each
        // weight's own NF4 relative error (fresh every run).
        let mut noisy = dense.clone();
        for (name, l) in noisy.linears_mut() {
            if let (Some(q), LinearWeight::Dense(w)) = (quantized.get(&name), &l.weight) {
                let w = w.val();
                let orig = flat(&w);
                let e = rel_l2(q, &orig);
                let rms = (orig.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / orig.len() as f64).sqrt();
                let noise = Tensor::<Autodiff<B>, 2>::random(w.dims(), Distribution::Normal(0.0, e * rms), &t.device);
                l.weight = LinearWeight::Dense(Param::from_tensor(w + noise).set_require_grad(false));
            }
        }
        let (g_nf4, g_deq) = (grads_of(&nf4, &batch), grads_of(&dequantized, &batch));
        let (g_dense, g_noisy) = (grads_of(&dense, &batch), grads_of(&noisy, &batch));
        let g_plain = grads_with(&nf4, &batch, false);
        assert_eq!(g_nf4.len(), 2 * 7 * config.num_hidden_layers);
        assert_eq!(g_plain.len(), g_nf4.len());
        // NF4 kernels vs dense matmuls on the same values: exact f32 on the CPU; TF32 tensor
        // cores on the GPU (see CUDA_F32_LOGITS_TOL).
        let same_bound = if t.name == "cpu" { 1e-5 } else { 3e-2 };
        let (mut worst_same, mut mean_round, mut mean_noise, mut worst_plain) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for (name, g) in &g_nf4 {
            let (g, want) = (flat(g), flat(&g_dense[name]));
            worst_same = worst_same.max(rel_l2(&g, &flat(&g_deq[name])));
            worst_plain = worst_plain.max(rel_l2(&g, &flat(&g_plain[name])));
            mean_round += rel_l2(&g, &want) / g_nf4.len() as f64;
            mean_noise += rel_l2(&flat(&g_noisy[name]), &want) / g_nf4.len() as f64;
        }
        println!(
            "{}: NF4 vs dequantized-dense gradients {worst_same:.2e} (bound {same_bound:.0e}); checkpointed vs not {worst_plain:.2e}; \
             vs original dense: mean {mean_round:.3}, random rounding of the same size (weight error up to {weight_err:.3}): mean {mean_noise:.3}",
            t.name
        );
        assert!(worst_same <= same_bound, "{}: NF4 path vs dense path on the same values: {worst_same:.2e}", t.name);
        // The same products in the same order, the recompute's `down_proj` value skipped.
        let plain_bound = if t.name == "cpu" { 1e-6 } else { 1e-3 };
        assert!(worst_plain <= plain_bound, "{}: NF4 gradients with checkpointing vs without: {worst_plain:.2e} > {plain_bound:.0e}", t.name);
        // The gradient change NF4 causes is the size that rounding of that magnitude causes
        // (measured ratio ~1 on the CPU; bound 2x).
        assert!(mean_round <= 2.0 * mean_noise, "{}: NF4 changes gradients by {mean_round:.3}, random rounding by {mean_noise:.3}", t.name);
        assert!(mean_round > 0.0, "quantization must change something");
    }
    on_every_backend!(run);
}

/// The LoRA branch as training runs it (`lora::op::lora_branch`: one autodiff operation; on the
/// GPU its skinny products are cut into split-K slices: here 512 rows, `in` 1,024 in 4
/// slices, `out` 512 in 2, the rows in 2; then `down_proj`'s widths, `in` 18,944 in 8
/// slices of 2,368 (16 of 1,184 before 2026-12-06, when that adapter's gradients went NaN in
/// the 7B bench)) equals autodiff through the plain ops on the CPU in f32: the output and the
/// gradients of x, A and B, with a dropout mask; on the GPU also with `x` in bf16. Fresh
/// random inputs each run (seed printed). Bounds: 1e-5 on the CPU (same products, uncut); 1e-2
/// on CUDA f32 (cubecl's matmul runs f32 at TF32 precision, see `CUDA_F32_LOGITS_TOL`); 2e-2 in
/// bf16.
#[test]
fn lora_branch_matches_the_plain_ops() {
    use burn::tensor::{Bool, DType, Int, TensorData};
    use medqlora::lora::op::lora_branch;
    use rand::{Rng, SeedableRng};

    fn run<B: Backend>(t: common::Target<B>) {
        let seed: u64 = rand::rng().random();
        println!("{}: seed {seed}", t.name);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        // down_proj's shape (in 18,944 in 8 slices of 2,368 on the GPU, out 3,584) too, at 512 rows.
        for (m, k, n) in [(512usize, 1024usize, 512usize), (512, 18944, 3584)] {
            let (r, p, s) = (64, 0.1, 0.25);
            let mut normal = |len: usize, std: f32| common::bell(&mut rng, len, std);
            let (x, a, b, w) = (normal(m * k, 1.0), normal(r * k, 0.03), normal(n * r, 0.1), normal(m * n, 1.0));
            // The dropout mask's seed; the plain ops take the mask it stands for from the
            // reference hash, so on CUDA this also checks the kernel's mask.
            let mask_seed: [i64; 4] = [0; 4].map(|_: i64| rng.random_range(0..65536));
            let drop: Vec<bool> = medqlora_kernels::dropout::reference::keep_mask(m * k, mask_seed, p).into_iter().map(|k| !k).collect();
            let data = |v: &Vec<f32>, shape: [usize; 2]| TensorData::new(v.clone(), shape);

            // `x` (and so the branch's products) in `dtype`, the adapter weights in f32, as
            // training runs them.
            let ours = |dtype: DType| {
                let dev = &t.device;
                let x = Tensor::<Autodiff<B>, 2>::from_inner(Tensor::<B, 2>::from_data(data(&x, [m, k]), dev).cast(dtype)).require_grad();
                let a = Tensor::<Autodiff<B>, 2>::from_data(data(&a, [r, k]), dev).require_grad();
                let b = Tensor::<Autodiff<B>, 2>::from_data(data(&b, [n, r]), dev).require_grad();
                let mask_seed = Tensor::<Autodiff<B>, 1, Int>::from_data(TensorData::new(mask_seed.to_vec(), [4]), dev);
                let y = lora_branch(x.clone(), Some(mask_seed), a.clone(), b.clone(), s, p);
                let g = (y.clone() * Tensor::<Autodiff<B>, 2>::from_data(data(&w, [m, n]), dev).cast(dtype)).sum().backward();
                [y.inner().into_data(), x.grad(&g).unwrap().into_data(), a.grad(&g).unwrap().into_data(), b.grad(&g).unwrap().into_data()]
            };
            let want = {
                let dev = &Default::default();
                let x = Tensor::<AD, 2>::from_data(data(&x, [m, k]), dev).require_grad();
                let a = Tensor::<AD, 2>::from_data(data(&a, [r, k]), dev).require_grad();
                let b = Tensor::<AD, 2>::from_data(data(&b, [n, r]), dev).require_grad();
                let mask = Tensor::<AD, 2, Bool>::from_data(TensorData::new(drop.clone(), [m, k]), dev);
                let xd = x.clone().mask_fill(mask, 0.0).div_scalar(1.0 - p);
                let y = xd.matmul(a.clone().transpose()).matmul(b.clone().transpose()).mul_scalar(s);
                let g = (y.clone() * Tensor::from_data(data(&w, [m, n]), dev)).sum().backward();
                [y.inner().into_data(), x.grad(&g).unwrap().into_data(), a.grad(&g).unwrap().into_data(), b.grad(&g).unwrap().into_data()]
            };
            // bf16 on the GPU, the 7B bench's dtype, where down_proj's gradients once went NaN:
            // 2e-2 allows the inputs' and outputs' bf16 rounding (2^-9 each).
            let runs: &[(DType, f64)] = if t.name == "cpu" { &[(DType::F32, 1e-5)] } else { &[(DType::F32, 1e-2), (DType::BF16, 2e-2)] };
            for &(dtype, bound) in runs {
                for (what, got, want) in ["y", "dx", "dA", "dB"].into_iter().zip(&ours(dtype)).zip(&want).map(|((w, g), e)| (w, g, e)) {
                    let e = rel_l2(&common::values(got), &common::values(want));
                    println!("{} {dtype:?}: in {k}, out {n}: {what} relative L2 {e:.2e} (bound {bound:.0e})", t.name);
                    assert!(e.is_finite() && e <= bound, "{} {dtype:?}: in {k}, out {n}: {what} relative L2 {e:e} > {bound:e} (seed {seed})", t.name);
                }
            }
        }
    }
    on_every_backend!(run);
}

/// A QLoRA projection as one operation (`lora::fused`: on CUDA in 16 bits, one NF4 product
/// with the adapter's up-projection and the bias in its epilogue) against the plain ops on the
/// CPU in f32 through the dequantized weight: output and the gradients of `x`, `A` and `B`, on
/// a bias-carrying `q_proj`-like shape with partial tiles and on a wider one without bias. With
/// `OutputUse::TapeOnly` (the checkpointed recompute's `down_proj`) the same gradients.
#[test]
fn nf4_lora_projection_matches_the_plain_ops() {
    use burn::tensor::{Bool, DType, Int, TensorData};
    use medqlora::lora::fused::nf4_lora_linear;
    use medqlora::model::linear::OutputUse;
    use medqlora::model::nf4_weight::Nf4Weight;
    use rand::{Rng, SeedableRng};

    fn run<B: Backend>(t: common::Target<B>) {
        let seed: u64 = rand::rng().random();
        println!("{}: seed {seed}", t.name);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for (m, k, n, with_bias) in [(300usize, 1024usize, 640usize, true), (512, 512, 1536, false)] {
            let (r, p, s) = (64, 0.1, 0.5);
            let mut normal = |len: usize, std: f32| common::bell(&mut rng, len, std);
            let (x, a, b, g, dense, bias) = (normal(m * k, 1.0), normal(r * k, 0.03), normal(n * r, 0.1), normal(m * n, 1.0), normal(n * k, 0.05), normal(n, 1.0));
            let q = medqlora::quant::nf4::quantize(&dense, &[n, k], 64, true).unwrap();
            let w_deq = q.dequantize();
            let mask_seed: [i64; 4] = [0; 4].map(|_: i64| rng.random_range(0..65536));
            let drop: Vec<bool> = medqlora_kernels::dropout::reference::keep_mask(m * k, mask_seed, p).into_iter().map(|k| !k).collect();
            let data = |v: &Vec<f32>, shape: [usize; 2]| TensorData::new(v.clone(), shape);

            let ours = |dtype: DType, output: OutputUse| {
                let dev = &t.device;
                let w = Nf4Weight::<Autodiff<B>>::from_host(&q, dev);
                let x = Tensor::<Autodiff<B>, 2>::from_inner(Tensor::<B, 2>::from_data(data(&x, [m, k]), dev).cast(dtype)).require_grad();
                let a = Tensor::<Autodiff<B>, 2>::from_data(data(&a, [r, k]), dev).require_grad();
                let b = Tensor::<Autodiff<B>, 2>::from_data(data(&b, [n, r]), dev).require_grad();
                let bias = with_bias.then(|| Tensor::<Autodiff<B>, 1>::from_inner(Tensor::<B, 1>::from_data(TensorData::new(bias.clone(), [n]), dev).cast(dtype)));
                let mask_seed = Tensor::<Autodiff<B>, 1, Int>::from_data(TensorData::new(mask_seed.to_vec(), [4]), dev);
                let y = nf4_lora_linear(x.clone(), &w, bias, Some(mask_seed), a.clone(), b.clone(), s, p, output);
                let grads = (y.clone() * Tensor::<Autodiff<B>, 2>::from_data(data(&g, [m, n]), dev).cast(dtype)).sum().backward();
                [y.inner().into_data(), x.grad(&grads).unwrap().into_data(), a.grad(&grads).unwrap().into_data(), b.grad(&grads).unwrap().into_data()]
            };
            let want = {
                let dev = &Default::default();
                let x = Tensor::<AD, 2>::from_data(data(&x, [m, k]), dev).require_grad();
                let a = Tensor::<AD, 2>::from_data(data(&a, [r, k]), dev).require_grad();
                let b = Tensor::<AD, 2>::from_data(data(&b, [n, r]), dev).require_grad();
                let w = Tensor::<AD, 2>::from_data(data(&w_deq, [n, k]), dev);
                let mask = Tensor::<AD, 2, Bool>::from_data(TensorData::new(drop.clone(), [m, k]), dev);
                let base = x.clone().matmul(w.transpose());
                let base = if with_bias { base + Tensor::<AD, 1>::from_data(TensorData::new(bias.clone(), [n]), dev).unsqueeze_dim(0) } else { base };
                let xd = x.clone().mask_fill(mask, 0.0).div_scalar(1.0 - p);
                let y = base + xd.matmul(a.clone().transpose()).matmul(b.clone().transpose()).mul_scalar(s);
                let grads = (y.clone() * Tensor::from_data(data(&g, [m, n]), dev)).sum().backward();
                [y.inner().into_data(), x.grad(&grads).unwrap().into_data(), a.grad(&grads).unwrap().into_data(), b.grad(&grads).unwrap().into_data()]
            };
            // bf16 (the fused kernel) first: the inputs', the decoded weight's and the output's
            // rounding (2^-9 each) bound the error. f32 on CUDA takes the separate products
            // (dequantized weight, Burn's autotuned matmul: minutes of tuning on a fresh cache).
            let runs: &[(DType, f64)] = if t.name == "cpu" { &[(DType::F32, 1e-5)] } else { &[(DType::BF16, 2e-2), (DType::F32, 1e-2)] };
            for &(dtype, bound) in runs {
                for output in [OutputUse::Value, OutputUse::TapeOnly] {
                    let got = ours(dtype, output);
                    // A tape-only output's value is undefined: only its gradients are compared.
                    let compared = ["y", "dx", "dA", "dB"].into_iter().zip(&got).zip(&want).skip(usize::from(output == OutputUse::TapeOnly));
                    for (what, got, want) in compared.map(|((w, g), e)| (w, g, e)) {
                        let e = rel_l2(&common::values(got), &common::values(want));
                        println!("{} {dtype:?} {output:?}: {m} x {k} -> {n}, bias {with_bias}: {what} relative L2 {e:.2e} (bound {bound:.0e})", t.name);
                        assert!(e.is_finite() && e <= bound, "{} {dtype:?} {output:?}: {m} x {k} -> {n}: {what} relative L2 {e:e} > {bound:e} (seed {seed})", t.name);
                    }
                }
            }
        }
    }
    on_every_backend!(run);
}
