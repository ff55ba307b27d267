//! Settings of the GPU kernel runtime (cubecl) that the CLI fixes once, before any GPU work:
//! where compiled kernels and autotune results are kept between runs, and how hard autotune
//! searches.
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
}

/// The pools of `device` now, or `None` on the CPU and in builds without the `cuda` feature.
/// The pools only grow within a step, so `reserved` at a step's end is that step's peak.
pub fn memory(device: crate::backend::DeviceSpec) -> Option<GpuMemory> {
    match device {
        crate::backend::DeviceSpec::Cpu => None,
        #[cfg(feature = "cuda")]
        crate::backend::DeviceSpec::Cuda(i) => {
            use medqlora_kernels::cubecl::{cuda::CudaDevice, cuda::CudaRuntime, Runtime};
            CudaRuntime::client(&CudaDevice::new(i))
                .memory_usage()
                .ok()
                .map(|u| GpuMemory { in_use: u.bytes_in_use, reserved: u.bytes_reserved })
        }
        #[cfg(not(feature = "cuda"))]
        crate::backend::DeviceSpec::Cuda(_) => None,
    }
}

/// Bytes the GPU runtime holds reserved on `device` ([`GpuMemory::reserved`]).
pub fn reserved_bytes(device: crate::backend::DeviceSpec) -> Option<u64> {
    memory(device).map(|m| m.reserved)
}
