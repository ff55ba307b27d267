//! Settings of the GPU kernel runtime (cubecl) that the CLI fixes once, before any GPU work:
//! where compiled kernels and autotune results are kept between runs, how hard autotune
//! searches, and how NF4 products run.
//!
//! Without a cache every process compiles each kernel with NVRTC and autotunes each new matmul
//! shape again: on the H200 the first training step of a 0.5B model took 406 s that way. The
//! cache keeps the PTX of every compiled kernel and each autotune decision on disk (cubecl's
//! own `compilation.cache` and `autotune.cache`), so a second run of the same shapes starts at
//! once. CPU runs ignore these settings.

use std::path::{Path, PathBuf};

/// How many kernel variants autotune measures on a shape it has not seen (cubecl's levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutotuneLevel {
    /// The fewest variants: fastest first run, possibly slower kernels.
    Minimal,
    /// cubecl's default.
    #[default]
    Balanced,
    /// More variants.
    Extensive,
    /// Every variant.
    Full,
}

/// Kernel cache and autotune settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuRuntimeSettings {
    /// Folder for compiled kernels and autotune results; `None` keeps nothing between runs.
    pub cache_dir: Option<PathBuf>,
    /// Autotune effort on new shapes.
    pub autotune: AutotuneLevel,
    /// File receiving the memory pools' log: each new pool buffer, with every pool's buffers
    /// by size (cubecl's memory logger at its basic level); `None` logs nothing.
    pub memory_log: Option<PathBuf>,
    /// How 16-bit NF4 products of more than a few rows run.
    pub nf4_product: crate::model::nf4_weight::ops::Nf4Product,
    /// Which program runs 16-bit causal attention forwards on CUDA.
    pub attention_kernel: crate::model::attention_kernel::AttentionKernel,
    /// Which program runs CUDA's products with a frozen dense 16-bit weight.
    pub dense_product: crate::model::frozen_matmul::DenseProduct,
}

impl GpuRuntimeSettings {
    /// The default cache folder: `$XDG_CACHE_HOME/medqlora/kernels`, else
    /// `~/.cache/medqlora/kernels` (the convention of pip's and torch's caches).
    pub fn default_cache_dir() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
        Some(base.join("medqlora").join("kernels"))
    }
}

/// Error of [`configure`].
#[derive(Debug, thiserror::Error)]
pub enum GpuRuntimeError {
    /// The cache folder cannot be created.
    #[error("cannot create the kernel cache folder {path}: {source}; pass --kernel-cache DIR with a writable folder, or --no-kernel-cache")]
    CacheDir {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Applies `settings` to the GPU runtime. Call once, before the first GPU operation (cubecl
/// reads its configuration once per process). Builds without the `cuda` feature do nothing.
pub fn configure(settings: &GpuRuntimeSettings) -> Result<(), GpuRuntimeError> {
    crate::model::nf4_weight::ops::set_nf4_product(settings.nf4_product);
    crate::model::attention_kernel::set_attention_kernel(settings.attention_kernel);
    crate::model::frozen_matmul::set_dense_product(settings.dense_product);
    #[cfg(feature = "cuda")]
    apply_cubecl(settings)?;
    #[cfg(not(feature = "cuda"))]
    let _ = settings;
    Ok(())
}

#[cfg(feature = "cuda")]
fn apply_cubecl(settings: &GpuRuntimeSettings) -> Result<(), GpuRuntimeError> {
    if let Some(dir) = &settings.cache_dir {
        std::fs::create_dir_all(dir).map_err(|source| GpuRuntimeError::CacheDir { path: dir.clone(), source })?;
    }
    use medqlora_kernels::cubecl::config::{
        autotune::AutotuneLevel as Level, cache::CacheConfig, CubeClRuntimeConfig, RuntimeConfig,
    };
    let mut config = CubeClRuntimeConfig::default();
    config.autotune.level = match settings.autotune {
        AutotuneLevel::Minimal => Level::Minimal,
        AutotuneLevel::Balanced => Level::Balanced,
        AutotuneLevel::Extensive => Level::Extensive,
        AutotuneLevel::Full => Level::Full,
    };
    match &settings.cache_dir {
        Some(dir) => {
            config.autotune.cache = CacheConfig::File(dir.clone());
            config.compilation.cache = Some(CacheConfig::File(dir.clone()));
        }
        // Autotune results then live in memory only: a folder is where cubecl always writes.
        None => config.compilation.cache = None,
    }
    if let Some(file) = &settings.memory_log {
        use medqlora_kernels::cubecl::config::memory::MemoryLogLevel;
        config.memory.logger.file = Some(file.clone());
        config.memory.logger.append = false;
        config.memory.logger.level = MemoryLogLevel::Basic;
    }
    CubeClRuntimeConfig::set(config);
    Ok(())
}

/// What the GPU runtime's memory pools hold on one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuMemory {
    /// Bytes of live tensors (what a `max_memory_allocated` counts).
    pub in_use: u64,
    /// Bytes the pools have taken from the card: live tensors, padding and free pool pages.
    pub reserved: u64,
    /// Bytes in use on the whole card (`cuMemGetInfo`: total - free), what nvidia-smi's
    /// `memory.used` reads: the pools plus the CUDA context, loaded kernel modules and the
    /// local-memory (stack) reserve, and other processes' memory.
    pub device_used: u64,
    /// Per-thread stack bytes the context reserves local memory for (`CU_LIMIT_STACK_SIZE`,
    /// grown by the driver to the largest stack frame launched so far, times every resident
    /// thread of the card).
    pub stack_per_thread: u64,
}

/// The pools of `device` now, or `None` on the CPU and in builds without the `cuda` feature.
/// The pools only grow within a step, so `reserved` at a step's end is that step's peak.
pub fn memory(device: crate::backend::DeviceSpec) -> Option<GpuMemory> {
    match device {
        crate::backend::DeviceSpec::Cpu => None,
        #[cfg(feature = "cuda")]
        crate::backend::DeviceSpec::Cuda(i) => {
            use medqlora_kernels::cubecl::{cuda::CudaDevice, cuda::CudaRuntime, Runtime};
            let pools = CudaRuntime::client(&CudaDevice::new(i)).memory_usage().ok()?;
            let (device_used, stack_per_thread) = driver_memory(i).unwrap_or((0, 0));
            Some(GpuMemory { in_use: pools.bytes_in_use, reserved: pools.bytes_reserved, device_used, stack_per_thread })
        }
        #[cfg(not(feature = "cuda"))]
        crate::backend::DeviceSpec::Cuda(_) => None,
    }
}

/// Gives back the local memory that one-off kernels left reserved. The CUDA driver grows a
/// context's per-thread stack to the largest frame launched so far and reserves it for every
/// thread the card can hold (270,336 on an H200), and never shrinks it: on the H200 the first
/// 7B step (autotune trying matmul variants) left 6,016 B per thread, 1.6 GB, against 1,024 B
/// in a process whose autotune results were cached. After each step the limit goes back to
/// what it was before the first; if the next step grows it again, its own kernels need that
/// stack, and the trim stops.
#[derive(Debug)]
pub struct LocalMemoryTrim {
    device: crate::backend::DeviceSpec,
    baseline: Option<u64>,
    trimmed: bool,
}

impl LocalMemoryTrim {
    /// Reads the stack limit of `device` before any step (nothing to do on the CPU).
    pub fn new(device: crate::backend::DeviceSpec) -> Self {
        Self { device, baseline: memory(device).map(|m| m.stack_per_thread).filter(|&b| b > 0), trimmed: false }
    }

    /// Call after a step: returns the bytes per thread given back, if any.
    pub fn after_step(&mut self) -> Option<u64> {
        let baseline = self.baseline?;
        let now = memory(self.device)?.stack_per_thread;
        if now <= baseline {
            return None;
        }
        if self.trimmed {
            // Grown again by steady-state kernels: trimming would only reallocate every step.
            self.baseline = None;
            return None;
        }
        self.trimmed = set_stack_limit(self.device, baseline);
        self.trimmed.then_some(now - baseline)
    }
}

#[cfg(feature = "cuda")]
fn set_stack_limit(device: crate::backend::DeviceSpec, bytes: u64) -> bool {
    use cudarc::driver::{result, sys};
    let crate::backend::DeviceSpec::Cuda(index) = device else { return false };
    in_primary_context(index, || result::ctx::set_limit(sys::CUlimit::CU_LIMIT_STACK_SIZE, bytes as usize).ok()).is_some()
}

#[cfg(not(feature = "cuda"))]
fn set_stack_limit(_device: crate::backend::DeviceSpec, _bytes: u64) -> bool {
    false
}

/// `(total - free, stack limit)` of device `index`.
#[cfg(feature = "cuda")]
fn driver_memory(index: usize) -> Option<(u64, u64)> {
    use cudarc::driver::{result, sys};
    in_primary_context(index, || {
        let (free, total) = result::mem_get_info().ok()?;
        let stack = result::ctx::get_limit(sys::CUlimit::CU_LIMIT_STACK_SIZE).ok()?;
        Some(((total - free) as u64, stack as u64))
    })
}

/// Runs `f` with device `index`'s primary context (the one the GPU runtime runs in) current on
/// this thread; `None` when the driver refuses.
#[cfg(feature = "cuda")]
fn in_primary_context<T>(index: usize, f: impl FnOnce() -> Option<T>) -> Option<T> {
    use cudarc::driver::result;
    let device = result::device::get(index as i32).ok()?;
    // SAFETY: retains the primary context of a device the driver returned (the runtime holds
    // the same context, so none is created) and releases it after `f`; the runtime's own
    // retain keeps it alive.
    unsafe {
        let ctx = result::primary_ctx::retain(device).ok()?;
        let out = result::ctx::set_current(ctx).ok().and_then(|()| f());
        let _ = result::primary_ctx::release(device);
        out
    }
}

/// Bytes the GPU runtime holds reserved on `device` ([`GpuMemory::reserved`]).
pub fn reserved_bytes(device: crate::backend::DeviceSpec) -> Option<u64> {
    memory(device).map(|m| m.reserved)
}
