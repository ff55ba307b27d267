//! NF4 inside the model: the Burn-ops dequantization equals the bitsandbytes-exact CPU
//! reference on fresh random inputs; a checkpoint written by `quantize` reads back to the same
//! codes and runs with the same logits as quantize-on-load; the NF4 model computes exactly what
//! a dense model holding the dequantized weights computes; on CUDA, the products with a
//! frozen dense weight (the vocabulary head's) equal the reference under both programs.

mod common;

use burn::tensor::backend::Backend;
use common::{fixture, ids, max_abs_diff, reference, Target};
use medqlora::model::linear::LinearWeight;
use medqlora::model::nf4_weight::Nf4Weight;
use medqlora::model::{QuantizeOnLoad, Qwen2ForCausalLM, TextConfig, WeightStore};
use medqlora::quant::bnb_io;
use medqlora::quant::convert::{convert, ConvertOptions};
use medqlora::quant::nf4;
use rand::{Rng, SeedableRng};

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("medqlora-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn burn_dequant_equals_the_reference_on_random_weights() {
    fn run<B: Backend>(t: Target<B>) {
        let seed: u64 = rand::rng().random();
        println!("{}: seed {seed}", t.name);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for (rows, cols, bs, dq) in [(37, 91, 64, true), (64, 96, 32, false), (130, 257, 128, true), (300, 64, 64, true), (8, 1024, 4096, false)] {
            let scale: f32 = rng.random_range(0.01..10.0);
            let x: Vec<f32> = (0..rows * cols).map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale).collect();
            let host = nf4::quantize(&x, &[rows, cols], bs, dq).unwrap();
            let want = host.dequantize();
            let got = Nf4Weight::<B>::from_host(&host, &t.device).dequantize().into_data().convert::<f32>().to_vec::<f32>().unwrap();
            assert_eq!(got.len(), want.len());
            // Same f32 products in the same order: exact on the CPU; the GPU may fuse differently.
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs() / b.abs().max(1e-30)).fold(0f32, f32::max);
            let bound = if t.name == "cpu" { 0.0 } else { 1e-6 };
            assert!(worst <= bound, "{}: [{rows}, {cols}] bs {bs} dq {dq}: relative error {worst} > {bound}", t.name);
        }
    }
    on_every_backend!(run);
}

#[test]
fn quantized_checkpoint_round_trips_and_matches_quantize_on_load() {
    let src = fixture("qwen2_tiny");
    let out = tmp("nf4-roundtrip");
    let opts = ConvertOptions { blocksize: 64, double_quant: true, skip: vec!["lm_head".into()] };
    let groups = convert(&src, &out, &opts, false, &|_| {}).unwrap();
    assert_eq!(groups["model.layers"].quantized, 14, "7 projections x 2 layers");
    assert_eq!(groups["lm_head"].quantized, 0);
    // Refuses to overwrite without force; nothing is lost.
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    let e = convert(&src, &out, &opts, false, &|_| {}).unwrap_err().to_string();
    assert!(e.contains("--force"), "{e}");
    assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), before);
    assert!(convert(&src, &tmp("nf4-bad"), &ConvertOptions { blocksize: 48, ..opts.clone() }, false, &|_| {}).is_err());

    // The stored codes are exactly the reference quantization of the dense weights.
    let dense = WeightStore::open(&src).unwrap();
    let q = WeightStore::open(&out).unwrap();
    let name = "model.layers.1.mlp.down_proj";
    assert!(bnb_io::is_nf4(&q, name) && !bnb_io::is_nf4(&q, "lm_head"));
    let read = bnb_io::read_nf4(&q, name, [64, 128]).unwrap();
    let w = dense.data(&format!("{name}.weight"), &[64, 128]).unwrap().convert::<f32>();
    assert_eq!(read, nf4::quantize(w.as_slice::<f32>().unwrap(), &[64, 128], 64, true).unwrap());
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["quantization_config"]["bnb_4bit_quant_type"], "nf4");

    // Loading the NF4 folder == quantizing while loading the dense folder.
    let device = Default::default();
    let config = TextConfig::from_dir(&src).unwrap();
    let from_disk = Qwen2ForCausalLM::<medqlora::backend::CpuBackend>::load(&config, &q, &device).unwrap();
    let on_load = Qwen2ForCausalLM::<medqlora::backend::CpuBackend>::load_with(&config, &dense, &device, Some(&QuantizeOnLoad::default())).unwrap();
    assert!(matches!(from_disk.model.layers[0].mlp.up_proj.weight, LinearWeight::Nf4(_)));
    assert!(matches!(from_disk.lm_head.as_ref().unwrap().weight, LinearWeight::Dense(_)));
    let r = reference(src.join("reference.safetensors"));
    let x = ids(&r["input_ids"], &device);
    let a = from_disk.forward(x.clone(), false).logits.into_data();
    let b = on_load.forward(x, false).logits.into_data();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    // NF4 really changed the function (quantization error shows in the logits).
    let err = max_abs_diff(&a, &r["logits"]);
    println!("NF4 vs dense logits max-abs difference: {err:.3}");
    assert!(err > 1e-3 && err < 2.0, "{err}");
    assert!(from_disk.resident_bytes() < on_load.resident_bytes() + 1 && from_disk.resident_bytes() < 400_000);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn nf4_model_equals_dense_model_with_dequantized_weights() {
    fn run<B: Backend>(t: Target<B>) {
        let src = fixture("qwen2_tiny");
        let store = WeightStore::open(&src).unwrap();
        let config = TextConfig::from_dir(&src).unwrap();
        let q = Qwen2ForCausalLM::<B>::load_with(&config, &store, &t.device, Some(&QuantizeOnLoad::default())).unwrap();
        // The same model with every NF4 layer replaced by its host-dequantized dense weight.
        let out = tmp(&format!("dequant-{}", t.name.replace(' ', "-")));
        std::fs::create_dir_all(&out).unwrap();
        std::fs::copy(src.join("config.json"), out.join("config.json")).unwrap();
        let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
        for (name, view) in st.tensors() {
            let shape = view.shape().to_vec();
            let data: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            let data = if name.starts_with("model.layers") && shape.len() == 2 {
                nf4::quantize(&data, &shape, 64, true).unwrap().dequantize()
            } else {
                data
            };
            tensors.push((name, data.iter().flat_map(|v| v.to_le_bytes()).collect(), shape));
        }
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .map(|(n, b, s)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &out.join("model.safetensors")).unwrap();
        let dense = Qwen2ForCausalLM::<B>::load(&config, &WeightStore::open(&out).unwrap(), &t.device).unwrap();
        let r = reference(src.join("reference.safetensors"));
        let x = ids(&r["input_ids"], &t.device);
        let want = q.forward(x.clone(), false).logits.into_data();
        let err = max_abs_diff(&want, &dense.forward(x.clone(), false).logits.into_data());
        println!("{}: NF4 model vs dense-dequantized model max-abs {err:.2e}", t.name);
        assert!(err <= t.logits_tol, "{}: {err}", t.name);
        // `--quantize nf4-dense`: the loaded NF4 model dequantized in place computes the same.
        let mut in_place = q.clone();
        for (_, linear) in in_place.linears_mut() {
            linear.dequantize_in_place();
        }
        assert!(in_place.linears().iter().all(|(_, l)| matches!(l.weight, LinearWeight::Dense(_))));
        let err = max_abs_diff(&want, &in_place.forward(x, false).logits.into_data());
        println!("{}: NF4 model vs the same model dequantized in place max-abs {err:.2e}", t.name);
        assert!(err <= t.logits_tol, "{}: dequantized in place: {err}", t.name);
        std::fs::remove_dir_all(&out).unwrap();
    }
    on_every_backend!(run);
}

/// The two ways CUDA runs 16-bit NF4 products (`--nf4-product`: the fused kernels, or a
/// transient dequantized weight and Burn's autotuned matmul) agree with an f64 reference on the
/// host, forward `x W^T` and backward `dY W`, in bf16 at a prefill/training shape (300 rows:
/// past the GEMV's few, not a multiple of the tiles). Fresh random inputs each run.
#[test]
fn nf4_product_strategies_match_the_reference() {
    #[cfg(not(feature = "cuda"))]
    println!("SKIPPED: the NF4 product strategies are the CUDA backend's (a `--features cuda` build and a GPU)");
    #[cfg(feature = "cuda")]
    {
        use burn::tensor::{Tensor, TensorData};
        use medqlora::model::nf4_weight::ops::{set_nf4_product, Nf4Backend, Nf4Product};
        // No `gpu_runtime_once`: the other tests of this binary have used the GPU by now,
        // which fixes cubecl's configuration; the product is set directly.
        type G = burn::backend::Cuda<half::bf16>;
        let dev = burn::backend::cuda::CudaDevice::new(0);
        let seed: u64 = rand::rng().random();
        println!("seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (m, n, k) = (300, 512, 384);
        let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-0.05f32..0.05)).collect();
        let q = nf4::quantize(&w, &[n, k], 64, true).unwrap();
        let bf = |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect() };
        let dense = bf(&q.dequantize());
        let x = bf(&(0..m * k).map(|_| rng.random_range(-1f32..1.0)).collect::<Vec<_>>());
        let dy = bf(&(0..m * n).map(|_| rng.random_range(-1f32..1.0)).collect::<Vec<_>>());
        let want_y: Vec<f32> = (0..m * n).map(|e| (0..k).map(|j| x[e / n * k + j] as f64 * dense[e % n * k + j] as f64).sum::<f64>() as f32).collect();
        let want_dx: Vec<f32> = (0..m * k).map(|e| (0..n).map(|i| dy[e / k * n + i] as f64 * dense[i * k + e % k] as f64).sum::<f64>() as f32).collect();
        let weight = Nf4Weight::<G>::from_host(&q, &dev);
        for product in Nf4Product::ALL {
            set_nf4_product(product);
            let y = weight.matmul_t(Tensor::<G, 2>::from_data(TensorData::new(x.clone(), [m, k]), &dev));
            let g = Tensor::<G, 2>::from_data(TensorData::new(dy.clone(), [m, n]), &dev).into_primitive().tensor();
            let dx: Tensor<G, 2> = Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(G::nf4_matmul_dx(g, weight.prims())));
            for (what, got, want) in [("x W^T", common::values(&y.into_data()), &want_y), ("dY W", common::values(&dx.into_data()), &want_dx)] {
                let e = common::rel_l2(&got, want);
                println!("{product:?}: {what} relative L2 {e:.2e} (bound 8e-3: bf16 outputs)");
                assert!(e <= 8e-3, "{product:?}: {what}: relative L2 {e:e} (seed {seed})");
            }
        }
        set_nf4_product(Nf4Product::default());
    }
}

#[test]
fn frozen_dense_products_match_the_reference() {
    #[cfg(not(feature = "cuda"))]
    println!("SKIPPED: the dense product programs are the CUDA backend's (a `--features cuda` build and a GPU)");
    #[cfg(feature = "cuda")]
    {
        use burn::backend::Autodiff;
        use burn::tensor::{Tensor, TensorData};
        use medqlora::model::frozen_matmul::{frozen_matmul_t, set_dense_product, DenseProduct};
        type G = Autodiff<burn::backend::Cuda<half::bf16>>;
        let dev = burn::backend::cuda::CudaDevice::new(0);
        let seed: u64 = rand::rng().random();
        println!("seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        // Few output tiles against a long reduction in both directions, so the kernel's
        // automatic split runs (the head's shape in small), and a row count past one tile.
        let (m, n, k) = (300, 64 * 40, 384);
        let bf = |v: Vec<f32>| -> Vec<f32> { v.into_iter().map(|x| half::bf16::from_f32(x).to_f32()).collect() };
        let w = bf((0..n * k).map(|_| rng.random_range(-0.05f32..0.05)).collect());
        let x = bf((0..m * k).map(|_| rng.random_range(-1f32..1.0)).collect());
        let dy = bf((0..m * n).map(|_| rng.random_range(-1f32..1.0)).collect());
        let want_y: Vec<f32> = (0..m * n).map(|e| (0..k).map(|j| x[e / n * k + j] as f64 * w[e % n * k + j] as f64).sum::<f64>() as f32).collect();
        let want_dx: Vec<f32> = (0..m * k).map(|e| (0..n).map(|i| dy[e / k * n + i] as f64 * w[i * k + e % k] as f64).sum::<f64>() as f32).collect();
        for product in [DenseProduct::Kernel, DenseProduct::Burn] {
            set_dense_product(product);
            let xt = Tensor::<G, 2>::from_data(TensorData::new(x.clone(), [m, k]), &dev).require_grad();
            let wt = Tensor::<G, 2>::from_data(TensorData::new(w.clone(), [n, k]), &dev);
            let y = frozen_matmul_t(xt.clone(), wt);
            let upstream = Tensor::<G, 2>::from_data(TensorData::new(dy.clone(), [m, n]), &dev);
            let grads = (y.clone() * upstream).sum().backward();
            let dx = xt.grad(&grads).expect("x requires a gradient");
            for (what, got, want) in [("x W^T", common::values(&y.into_data()), &want_y), ("dY W", common::values(&dx.into_data()), &want_dx)] {
                let e = common::rel_l2(&got, want);
                println!("{product:?}: {what} relative L2 {e:.2e} (bound 8e-3: bf16 outputs)");
                assert!(e <= 8e-3, "{product:?}: {what}: relative L2 {e:e} (seed {seed})");
            }
        }
        set_dense_product(DenseProduct::default());
    }
}
