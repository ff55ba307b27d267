//! Test helpers shared by the kernel tests (CPU and device) and the root crate's tests:
//! seeded random data (a fresh seed each run, printed so a failure can be replayed with
//! `MEDQLORA_SEED`), random NF4 weights, relative errors, poisoning and bf16 rounding.

use crate::nf4::{Nf4Owned, ScalesOwned, NESTED_BLOCKSIZE};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A generator seeded from `MEDQLORA_SEED` or the clock; prints the seed with `what`.
pub fn rng(what: &str) -> StdRng {
    let seed = std::env::var("MEDQLORA_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        t.as_nanos() as u64 ^ (std::process::id() as u64) << 32
    });
    println!("seed {seed} ({what}; replay with MEDQLORA_SEED={seed})");
    StdRng::seed_from_u64(seed)
}

/// Values uniform in `[-scale, scale)`.
pub fn uniform(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// A sorted stand-in for the signed dynamic map (the kernels read whatever map they are
/// given; the root tests use the real one).
pub fn synthetic_map() -> Box<[f32; 256]> {
    let mut m = [0f32; 256];
    for (i, v) in m.iter_mut().enumerate() {
        let t = i as f32 / 255.0 * 2.0 - 1.0;
        *v = t * t * t.signum();
    }
    Box::new(m)
}

/// A random NF4 weight `[n, k]`: random codes (all 16 used), scales in `[0.5, 1.5) * 0.02`
/// or double-quantized with random codes, nested scales and offset.
pub fn random_nf4(rng: &mut StdRng, n: usize, k: usize, blocksize: usize, double: bool, map: &[f32; 256]) -> Nf4Owned {
    let packed: Vec<u8> = (0..(n * k).div_ceil(2)).map(|_| rng.random()).collect();
    let blocks = (n * k).div_ceil(blocksize);
    let scales = if double {
        ScalesOwned::Double {
            codes: (0..blocks).map(|_| rng.random()).collect(),
            nested: (0..blocks.div_ceil(NESTED_BLOCKSIZE)).map(|_| rng.random_range(0.005..0.015)).collect(),
            offset: rng.random_range(0.015..0.025),
            map: Box::new(*map),
        }
    } else {
        ScalesOwned::F32((0..blocks).map(|_| rng.random_range(0.01..0.03)).collect())
    };
    Nf4Owned { packed, scales, n, k, blocksize }
}

/// `||out - ref|| / ||ref||` in f64; infinite when `out` holds a NaN or infinity (a poisoned,
/// unwritten element) or the lengths differ.
pub fn rel_l2(out: &[f32], reference: &[f32]) -> f64 {
    if out.len() != reference.len() || out.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let (mut num, mut den) = (0f64, 0f64);
    for (&o, &r) in out.iter().zip(reference) {
        num += (o as f64 - r as f64).powi(2);
        den += (r as f64).powi(2);
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// Panics unless `rel_l2(out, reference) <= bound`; prints the error with its bound's name.
pub fn assert_close(what: &str, out: &[f32], reference: &[f32], bound_name: &str, bound: f64) {
    if let Err(failure) = check_close(what, out, reference, bound_name, bound) {
        panic!("{failure}");
    }
}

/// [`assert_close`] that returns the failure instead of panicking (for a test that reports
/// every failing case before it fails); the failure counts the elements off by more than 5%
/// of the reference's RMS and those never written, and shows the first few by flat index.
pub fn check_close(what: &str, out: &[f32], reference: &[f32], bound_name: &str, bound: f64) -> Result<(), String> {
    let e = rel_l2(out, reference);
    println!("{what}: relative L2 error {e:.3e} (bound {bound_name} = {bound:.1e})");
    if e <= bound {
        return Ok(());
    }
    // What a layout error looks like: which elements are off, and whether any were never written.
    let scale = (reference.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / reference.len().max(1) as f64).sqrt();
    let wrong: Vec<usize> = (0..out.len()).filter(|&i| !((out[i] - reference[i]).abs() as f64 <= 0.05 * scale)).collect();
    let unwritten = out.iter().filter(|v| v.is_nan()).count();
    let first: Vec<String> = wrong.iter().take(6).map(|&i| format!("[{i}] {} vs {}", out[i], reference[i])).collect();
    Err(format!("{what}: relative L2 error {e:.3e} exceeds {bound_name} = {bound:.1e}; {} of {} elements off by > 5% of the RMS ({unwritten} never written), first: {}", wrong.len(), out.len(), first.join(", ")))
}

/// Rounds to bf16 and back (round to nearest even, as the device's conversions do).
pub fn round_bf16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect()
}

/// The poison written into outputs before a launch: NaN, so that any element the kernel does
/// not write fails [`rel_l2`].
pub const POISON: f32 = f32::NAN;

/// The wgpu client for the kernel tests that run on any cubecl runtime (on a machine without a
/// GPU, Vulkan through Mesa's lavapipe, which `.ci/run` installs), or `None` after printing why
/// they are skipped.
#[cfg(feature = "wgpu")]
pub fn wgpu() -> Option<(cubecl::client::ComputeClient<cubecl::wgpu::WgpuRuntime>, cubecl::wgpu::WgpuDevice)> {
    use cubecl::Runtime;
    let device = cubecl::wgpu::WgpuDevice::default();
    match std::panic::catch_unwind(|| cubecl::wgpu::WgpuRuntime::client(&device)) {
        Ok(client) => Some((client, device)),
        Err(_) => {
            println!("SKIPPED: no wgpu adapter (install a Vulkan driver; on a CPU, Mesa's lavapipe: apt-get install mesa-vulkan-drivers)");
            None
        }
    }
}

/// The float dtypes a wgpu adapter runs kernels in: f32, and f16 where it has f16 shaders
/// (WGSL has no bf16); prints when f16 is skipped.
#[cfg(feature = "wgpu")]
pub fn wgpu_float_dtypes(client: &cubecl::client::ComputeClient<cubecl::wgpu::WgpuRuntime>) -> Vec<burn_backend::DType> {
    use cubecl::prelude::CubePrimitive;
    let mut dtypes = vec![burn_backend::DType::F32];
    if half::f16::supported_uses(client).is_empty() {
        println!("SKIPPED: f16 (this wgpu adapter has no f16 shaders)");
    } else {
        dtypes.push(burn_backend::DType::F16);
    }
    dtypes
}

/// The CUDA client for device tests, or `None` after printing `SKIPPED: no CUDA device`.
#[cfg(feature = "cuda")]
pub fn cuda() -> Option<(cubecl::client::ComputeClient<cubecl::cuda::CudaRuntime>, cubecl::cuda::CudaDevice)> {
    use cubecl::Runtime;
    if !std::path::Path::new("/dev/nvidiactl").exists() {
        println!("SKIPPED: no CUDA device");
        return None;
    }
    let device = cubecl::cuda::CudaDevice::new(0);
    match std::panic::catch_unwind(|| cubecl::cuda::CudaRuntime::client(&device)) {
        Ok(client) => Some((client, device)),
        Err(_) => {
            println!("SKIPPED: no CUDA device (the CUDA client could not start)");
            None
        }
    }
}
