//! Kernels written in CUDA C++ rather than cubecl's `#[cube]` language, launched through
//! cubecl's own CUDA server (its NVRTC compile for `sm_90a`, its kernel cache, its streams and
//! memory), for instructions cubecl does not express: Hopper's warpgroup MMA (`wgmma`).
//!
//! cubecl compiles a kernel from a [`CubeTask`]; [`CudaSourceTask`] is one whose compiled form
//! is our source. The server also needs the kernel's dynamic shared-memory size, which it
//! reads from cubecl's own representation of the kernel: a one-line `#[cube]` donor that
//! declares that much shared memory supplies it (and is otherwise discarded). Arguments travel
//! as cubecl passes them: the buffers' device pointers in order, then the scalars as one
//! `__grid_constant__` struct of 64-bit words (a [`cubecl::server::MetadataBindingInfo`] whose
//! words are all static: its dynamic part would arrive as one more buffer first).

use cubecl::cuda::CudaCompiler;
use cubecl::prelude::*;
use cubecl::{Compiler, CubeTask};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Declares `words` 32-bit words of shared memory: the donor of [`CudaSourceTask`]'s
/// shared-memory size.
#[cube(launch_unchecked)]
fn shared_donor(out: &mut Array<u32>, #[comptime] words: usize) {
    let mut s = SharedMemory::<u32>::new(words);
    let i = UNIT_POS as usize;
    s[i] = out[i];
    sync_cube();
    out[i] = s[words - 1 - i];
}

/// The hash that identifies a kernel's source in its id.
pub fn source_hash(source: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    source.hash(&mut h);
    h.finish()
}

/// A CUDA C++ kernel for cubecl's CUDA server (see the module docs). `R` is the runtime whose
/// client expands the donor: CUDA's own, or the compile check's stand-in.
pub struct CudaSourceTask<R: Runtime> {
    client: ComputeClient<R>,
    /// The `extern "C"` entry point in `source`.
    entry: String,
    source: Arc<String>,
    /// Hash of `source`: part of the kernel's id, so an edited source never reuses a cached
    /// compilation.
    source_hash: u64,
    /// Dynamic shared memory per cube, bytes.
    shared_bytes: usize,
    threads: u32,
}

impl<R: Runtime> CudaSourceTask<R> {
    /// A task for `entry` in `source` (whose [`source_hash`] is `source_hash`: computed once by
    /// the caller, as a task is built per launch), run by `threads` threads per cube with
    /// `shared_bytes` of dynamic shared memory.
    pub fn new(client: ComputeClient<R>, entry: String, source: Arc<String>, source_hash: u64, shared_bytes: usize, threads: u32) -> Self {
        Self { client, entry, source, source_hash, shared_bytes, threads }
    }

    fn settings(&self) -> KernelSettings {
        KernelSettings::default().cube_dim(CubeDim::new_1d(self.threads))
    }
}

impl<R: Runtime> KernelMetadata for CudaSourceTask<R> {
    fn id(&self) -> KernelId {
        let settings = self.settings();
        KernelId::new::<Self>().address_type(settings.address_type).cube_dim(settings.cube_dim).info((self.entry.clone(), self.source_hash))
    }

    fn address_type(&self) -> cubecl::ir::StorageType {
        self.settings().address_type.unsigned_type()
    }
}

impl<R: Runtime> CubeTask<CudaCompiler> for CudaSourceTask<R> {
    fn compile(
        &self,
        compiler: &mut CudaCompiler,
        options: &<CudaCompiler as Compiler>::CompilationOptions,
        mode: ExecutionMode,
        address_type: cubecl::ir::StorageType,
    ) -> Result<CompiledKernel<CudaCompiler>, cubecl::CompilationError> {
        let words = self.shared_bytes.div_ceil(4).max(self.threads as usize);
        let donor = shared_donor::SharedDonor::<R>::new(self.settings(), self.client.clone(), ArrayCompilationArg { inplace: None }, words);
        let mut compiled = KernelTask::<CudaCompiler, _>::new(donor).compile(compiler, options, mode, address_type)?;
        compiled.source = self.source.as_ref().clone();
        compiled.entrypoint_name = self.entry.clone();
        Ok(compiled)
    }
}
