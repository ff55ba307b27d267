//! The CUDA compile check without a GPU (feature `cuda-check`): every kernel, at the variants
//! the launch code uses, is expanded, compiled to CUDA C++ by cubecl's CUDA compiler, then to
//! sm_90a machine code by NVRTC, and its resources are read back from ptxas.
//!
//! A kernel's first CUDA compilation otherwise happens on the device, where a compile error or
//! a register spill costs device time to find. What decides a tensor-core kernel's occupancy
//! (registers per thread, shared memory per cube) is known here: ptxas reports the registers,
//! the compiled kernel its dynamic shared memory, and [`cubes_per_sm`] the resident cubes on
//! an H100/H200 SM. Speed itself still needs the device.
//!
//! Expansion reads the runtime's target properties (the register layouts of manual `mma`) and
//! records a client's device properties (our kernels read none of them). [`CudaTargets`] is
//! wgpu's runtime (Vulkan: Mesa's lavapipe on a CPU) with CUDA's target properties, so the
//! kernels expand as they would for CUDA without a CUDA device. NVRTC and the CUDA headers
//! are loaded from the paths given (`tools/cuda-check.sh` takes them from NVIDIA's wheels on
//! the package index).

use cubecl::cuda::CudaCompiler;
use cubecl::prelude::*;
use cubecl::wgpu::WgpuRuntime;
use cubecl::{Compiler, CubeTask};
use std::ffi::{c_char, c_int, c_void, CString};
use std::path::Path;

/// wgpu's runtime with CUDA's target properties: its clients are wgpu clients (the same
/// server), and the kernels built with it expand as for CUDA.
#[derive(Debug, Clone)]
pub struct CudaTargets;

impl Runtime for CudaTargets {
    type Compiler = <WgpuRuntime as Runtime>::Compiler;
    type Server = <WgpuRuntime as Runtime>::Server;
    type Device = <WgpuRuntime as Runtime>::Device;

    fn client(device: &Self::Device) -> ComputeClient<Self> {
        ComputeClient::load(device)
    }

    fn name(_client: &ComputeClient<Self>) -> &'static str {
        "wgpu with CUDA target properties"
    }

    fn max_cube_count() -> (u32, u32, u32) {
        WgpuRuntime::max_cube_count()
    }

    fn can_read_tensor(shape: &cubecl::zspace::Shape, strides: &cubecl::zspace::Strides) -> bool {
        WgpuRuntime::can_read_tensor(shape, strides)
    }

    fn target_properties() -> cubecl::ir::TargetProperties {
        cubecl::cuda::CudaRuntime::target_properties()
    }

    fn enumerate_devices(type_id: u16, info: &<Self::Server as cubecl::server::ComputeServer>::Info) -> Vec<cubecl::device::DeviceId> {
        WgpuRuntime::enumerate_devices(type_id, info)
    }
}

/// One kernel variant, expanded.
pub struct Variant {
    /// Kernel and variant, e.g. `gemm64 bf16 double`.
    pub name: String,
    /// The task cubecl's server would compile at launch.
    task: Box<dyn CubeTask<CudaCompiler>>,
}

/// A variant compiled to CUDA C++.
pub struct CudaSource {
    pub name: String,
    pub entry: String,
    pub source: String,
    /// Dynamic shared memory per cube, bytes.
    pub shared_bytes: usize,
    /// Threads per cube.
    pub threads: u32,
}

/// Errors of the check, each naming the variant or the library.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cubecl's CUDA compiler refused {name}: {reason}")]
    Expand { name: String, reason: String },
    #[error("cannot load NVRTC from {path}: {reason} (pass the libnvrtc.so.13 of the nvidia-cuda-nvrtc wheel; tools/cuda-check.sh fetches it)")]
    Load { path: String, reason: String },
    #[error("NVRTC call {call} failed with status {status} for {name}")]
    Nvrtc { name: String, call: &'static str, status: c_int },
}

fn variant<K: CubeKernel + 'static>(name: String, kernel: K) -> Variant {
    Variant { name, task: Box::new(KernelTask::<CudaCompiler, K>::new(kernel)) }
}

fn settings(threads: u32) -> KernelSettings {
    KernelSettings::default().cube_dim(CubeDim::new_1d(threads))
}

fn arr() -> ArrayCompilationArg {
    ArrayCompilationArg { inplace: None }
}

/// A pipelined GEMM configuration's comptime values (tile rows, words per W-loader thread,
/// `ldmatrix`, stages) and its name in the report.
fn pipelined(config: crate::gemm::GemmConfig) -> (usize, usize, bool, usize, String) {
    let (rows, wvec) = config.rows.rows_and_words();
    (rows, wvec, config.mma == crate::gemm::GemmMma::Ldmatrix, config.stages.count(), config.name())
}

/// Runs `$body` with `$f` bound to each of the listed float types and `$tag` to its name.
macro_rules! each_float {
    ([$($ty:ty => $tag:literal),+], $f:ident, $name:ident => $body:expr) => {
        $({
            type $f = $ty;
            let $name: &str = $tag;
            $body
        })+
    };
}

/// Every kernel at the variants its launch code uses: each float dtype it accepts, plain and
/// double-quantized scales, 16-byte vectors (and scalar ones where odd lengths fall back).
///
/// The constructors take the runtime arguments' compilation forms, then the comptime ones in
/// the macro's order: the `Size` generics' values first, then the `#[comptime]` parameters as
/// declared (several are `usize`, so the compiler cannot catch a swap: keep this order).
pub fn variants<R: Runtime>(client: &ComputeClient<R>) -> Vec<Variant> {
    use crate::{adamw8, attention, cross_entropy, dequant, dropout, gemm, gemm_dense, gemm_dx, gemv, rmsnorm, rope, softmax, splitk_sum, swiglu};
    let c = || client.clone();
    let mut out = Vec::new();
    out.push(variant("adamw8".into(), adamw8::kernel::adamw8_kernel::Adamw8Kernel::<R>::new(settings(256), c(), arr(), arr(), arr(), arr(), arr(), arr(), arr(), arr(), arr(), arr(), arr(), arr(), (), (), (), (), (), ())));
    for double in [false, true] {
        let dq = if double { " double" } else { "" };
        each_float!([f32 => "f32", half::bf16 => "bf16", half::f16 => "f16"], F, t => {
            let vector = 16 / std::mem::size_of::<F>();
            out.push(variant(format!("dequant {t}{dq}"), dequant::kernel::dequant_kernel::DequantKernel::<F, R>::new(settings(256), c(), arr(), arr(), arr(), arr(), arr(), (), (), (), vector, double)));
            for m in [1, 2, 8] {
                let r = if m == 1 { 1 } else { 2 };
                out.push(variant(format!("gemv m{m} {t}{dq}"), gemv::kernel::gemv_kernel::GemvKernel::<F, R>::new(KernelSettings::default().cube_dim(CubeDim::new_2d(32, 4)), c(), arr(), arr(), arr(), arr(), arr(), arr(), (), (), (), (), vector, m, r, double)));
            }
        });
        each_float!([half::bf16 => "bf16", half::f16 => "f16"], F, t => {
            out.push(variant(format!("gemm {t}{dq}"), gemm::kernel::gemm_kernel::GemmKernel::<F, R>::new(settings(256), c(), arr(), arr(), arr(), arr(), arr(), arr(), (), (), (), (), (), double)));
            for config in gemm::GemmConfig::ALL {
                let (rows, wvec, mma, stages, name) = pipelined(config);
                if config.mma == gemm::GemmMma::Wide {
                    for (lora, biased) in [(false, false), (true, false), (true, true), (false, true)] {
                        let ext = match (lora, biased) { (false, false) => "", (true, false) => " + lora", (true, true) => " + lora + bias", (false, true) => " + bias" };
                        out.push(variant(format!("gemm64 {name} {t}{dq}{ext}"), gemm::wide::gemm_wide_kernel::GemmWideKernel::<F, F, R>::new(settings(gemm::wide::WIDE_THREADS as u32), c(), arr(), arr(), arr(), arr(), arr(), arr(), arr(), arr(), arr(), (), (), (), (), (), (), (), gemm::wide::WIDE_WORDS, double, false, lora, biased)));
                        // A split forward's parts write f32 partials.
                        out.push(variant(format!("gemm64 {name} {t}{dq}{ext} -> f32 parts"), gemm::wide::gemm_wide_kernel::GemmWideKernel::<F, f32, R>::new(settings(gemm::wide::WIDE_THREADS as u32), c(), arr(), arr(), arr(), arr(), arr(), arr(), arr(), arr(), arr(), (), (), (), (), (), (), (), gemm::wide::WIDE_WORDS, double, false, lora, biased)));
                    }
                    continue;
                }
                out.push(variant(format!("gemm64 {name} {t}{dq}"), gemm::pipelined::gemm64_kernel::Gemm64Kernel::<F, R>::new(settings(2 * rows as u32), c(), arr(), arr(), arr(), arr(), arr(), arr(), (), (), (), (), (), wvec, double, rows, mma, stages)));
            }
            if double {
                // Head dims of the tiny fixture, Qwen2.5-0.5B and Qwen2.5-7B; CUDA's bools are u8.
                for d in [16usize, 64, 128] {
                    out.push(variant(format!("attention d{d} {t}"), attention::kernel::causal_attention_kernel::CausalAttentionKernel::<F, u8, R>::new(settings(128), c(), arr(), arr(), arr(), arr(), arr(), (), (), (), (), (), (), d)));
                    out.push(variant(format!("flash attention d{d} {t}"), attention::flash::flash_attention_kernel::FlashAttentionKernel::<F, u8, R>::new(settings(128), c(), arr(), arr(), arr(), arr(), arr(), (), (), (), (), (), (), d, true)));
                    out.push(variant(format!("flash attention causal d{d} {t}"), attention::flash::flash_attention_kernel::FlashAttentionKernel::<F, u8, R>::new(settings(128), c(), arr(), arr(), arr(), arr(), arr(), (), (), (), (), (), (), d, false)));
                }
            }
            out.push(variant(format!("gemm_dx {t}{dq}"), gemm_dx::kernel::gemm_dx_kernel::GemmDxKernel::<F, R>::new(settings(256), c(), arr(), arr(), arr(), arr(), arr(), arr(), (), (), (), (), (), double)));
            for config in gemm::GemmConfig::ALL {
                let (rows, wvec, mma, stages, name) = pipelined(config);
                if config.mma == gemm::GemmMma::Wide {
                    for added in [false, true] {
                        let ext = if added { " + addend" } else { "" };
                        out.push(variant(format!("gemm_dx64 {name} {t}{dq}{ext}"), gemm::wide::gemm_wide_kernel::GemmWideKernel::<F, F, R>::new(settings(gemm::wide::WIDE_THREADS as u32), c(), arr(), arr(), arr(), arr(), arr(), arr(), arr(), arr(), arr(), (), (), (), (), (), (), (), gemm::wide::WIDE_WORDS, double, true, false, added)));
                    }
                    continue;
                }
                out.push(variant(format!("gemm_dx64 {name} {t}{dq}"), gemm_dx::pipelined::gemm_dx64_kernel::GemmDx64Kernel::<F, R>::new(settings(2 * rows as u32), c(), arr(), arr(), arr(), arr(), arr(), arr(), (), (), (), (), (), wvec, double, rows, mma, stages)));
            }
        });
    }
    // The `wgmma` products (CUDA C++): every variant their launcher builds; the forward in both
    // mainloops, its input gradient (shared-memory mainloop only) plain and with its added term.
    {
        use crate::gemm_wgmma::{task, Mainloop, Variant as Wg};
        let mut wgmma = |v: Wg| {
            let kind = if v.dx { "" } else { "forward " };
            out.push(Variant { name: format!("wgmma {kind}{}", v.entry().trim_start_matches("nf4_wgmma_").replace('_', " ")), task: Box::new(task(client.clone(), v)) });
        };
        for bf16 in [true, false] {
            for double in [false, true] {
                for mainloop in [Mainloop::Shared, Mainloop::Registers] {
                    for (out_f32, lora, added) in [(false, false, false), (false, true, true), (true, false, false), (true, true, true), (false, true, false), (false, false, true)] {
                        wgmma(Wg { bf16, out_f32, double, lora, added, mainloop, dx: false });
                    }
                }
                for added in [false, true] {
                    wgmma(Wg { bf16, out_f32: false, double, lora: false, added, mainloop: Mainloop::Shared, dx: true });
                }
            }
        }
    }
    // The dense products (not per scale layout): into the dtype itself, or into f32 partials.
    each_float!([half::bf16 => "bf16", half::f16 => "f16"], F, t => {
        for dx in [false, true] {
            let dir = if dx { "dX" } else { "Y" };
            out.push(variant(format!("dense {dir} {t}"), gemm_dense::kernel::gemm_dense_kernel::GemmDenseKernel::<F, F, R>::new(settings(gemm::wide::WIDE_THREADS as u32), c(), arr(), arr(), arr(), (), (), (), (), dx)));
            out.push(variant(format!("dense {dir} {t} -> f32 parts"), gemm_dense::kernel::gemm_dense_kernel::GemmDenseKernel::<F, f32, R>::new(settings(gemm::wide::WIDE_THREADS as u32), c(), arr(), arr(), arr(), (), (), (), (), dx)));
        }
    });
    let rows = crate::device::ROW_THREADS as u32;
    each_float!([f32 => "f32", half::bf16 => "bf16", half::f16 => "f16"], F, t => {
        let wide = 16 / std::mem::size_of::<F>();
        // cos / sin come in the backend's float dtype, the activations' own.
        out.push(variant(format!("rope {t}"), rope::kernel::rope_kernel::RopeKernel::<F, F, R>::new(settings(256), c(), arr(), arr(), arr(), arr(), (), (), (), (), (), ())));
        for vector in [wide, 1] {
            let v = format!("{t} x{vector}");
            out.push(variant(format!("swiglu {v}"), swiglu::kernel::swiglu_forward_kernel::SwigluForwardKernel::<F, R>::new(settings(256), c(), arr(), arr(), arr(), (), vector)));
            out.push(variant(format!("swiglu backward {v}"), swiglu::kernel::swiglu_backward_kernel::SwigluBackwardKernel::<F, R>::new(settings(256), c(), arr(), arr(), arr(), arr(), arr(), (), vector)));
            out.push(variant(format!("dropout {v}"), dropout::kernel::dropout_kernel::DropoutKernel::<F, R>::new(settings(256), c(), arr(), arr(), arr(), (), (), (), vector)));
            out.push(variant(format!("dropout split {v}"), dropout::kernel::dropout_split_kernel::DropoutSplitKernel::<F, R>::new(settings(256), c(), arr(), arr(), arr(), (), (), (), (), (), (), vector)));
            out.push(variant(format!("rmsnorm {v}"), rmsnorm::kernel::rmsnorm_forward_kernel::RmsnormForwardKernel::<F, R>::new(settings(rows), c(), arr(), arr(), arr(), (), (), (), (), vector)));
            out.push(variant(format!("rmsnorm backward {v}"), rmsnorm::kernel::rmsnorm_backward_kernel::RmsnormBackwardKernel::<F, R>::new(settings(rows), c(), arr(), arr(), arr(), arr(), (), (), (), (), vector)));
            // CUDA stores Burn's bools as u8, wgpu as u32.
            out.push(variant(format!("softmax {v} u8 mask"), softmax::kernel::masked_softmax_kernel::MaskedSoftmaxKernel::<F, u8, R>::new(settings(rows), c(), arr(), arr(), arr(), (), (), (), (), (), (), vector)));
            out.push(variant(format!("softmax backward {v} u8 mask"), softmax::kernel::masked_softmax_backward_kernel::MaskedSoftmaxBackwardKernel::<F, u8, R>::new(settings(rows), c(), arr(), arr(), arr(), arr(), arr(), (), (), (), (), (), (), vector)));
            // Burn's CUDA ints are i32.
            out.push(variant(format!("cross-entropy {v}"), cross_entropy::kernel::cross_entropy_forward_kernel::CrossEntropyForwardKernel::<F, i32, R>::new(settings(rows), c(), arr(), arr(), arr(), arr(), (), (), (), vector)));
            out.push(variant(format!("cross-entropy backward {v}"), cross_entropy::kernel::cross_entropy_backward_kernel::CrossEntropyBackwardKernel::<F, i32, R>::new(settings(rows), c(), arr(), arr(), arr(), arr(), arr(), (), (), (), vector)));
            // Partials in F summed into f32 (weight gradients: 16 bytes of f32 a vector) or F
            // (activations).
            let to_f32 = vector.min(4);
            out.push(variant(format!("split-K sum {t} x{to_f32} -> f32"), splitk_sum::kernel::splitk_sum_kernel::SplitkSumKernel::<F, f32, R>::new(settings(256), c(), arr(), arr(), (), (), (), (), to_f32)));
            out.push(variant(format!("split-K operand {v}"), splitk_sum::kernel::splitk_operand_kernel::SplitkOperandKernel::<F, R>::new(settings(256), c(), arr(), arr(), (), (), (), (), vector)));
            if t != "f32" {
                out.push(variant(format!("split-K sum {v} -> {t}"), splitk_sum::kernel::splitk_sum_kernel::SplitkSumKernel::<F, F, R>::new(settings(256), c(), arr(), arr(), (), (), (), (), vector)));
            }
        }
    });
    out
}

/// Compiles `v` to CUDA C++ with the options cubecl's CUDA runtime uses on sm_90.
pub fn to_cuda(v: Variant) -> Result<CudaSource, CheckError> {
    let mut options: <CudaCompiler as Compiler>::CompilationOptions = Default::default();
    options.supports_features.fast_math = true;
    options.supports_features.grid_constants = true;
    options.supports_features.fast_tanh = true;
    options.supports_features.clusters = true;
    options.supports_features.elect_sync = true;
    let addr = v.task.address_type();
    let compiled = v
        .task
        .compile(&mut Default::default(), &options, ExecutionMode::Unchecked, addr)
        .map_err(|e| CheckError::Expand { name: v.name.clone(), reason: format!("{e:?}") })?;
    let shared_bytes = compiled.repr.as_ref().map(|r| r.shared_memory_size()).unwrap_or(0);
    Ok(CudaSource { name: v.name, entry: compiled.entrypoint_name, source: compiled.source, shared_bytes, threads: compiled.cube_dim.num_elems() })
}

/// Variants (name prefixes) whose small register spills are known and accepted, with why:
/// the check fails on any other spill.
pub const KNOWN_SPILLS: &[(&str, &str)] = &[
    ("gemm64 r256 wmma f16", "f16, not a training dtype: 4-28 B per thread after the bf16-driven tuning"),
    ("gemm_dx64 r256 wmma f16", "f16, not a training dtype: up to 28 B per thread"),
    ("attention d16 bf16", "head dim 16 is the tiny test fixture's, no real model's: 4 B per thread"),
];

/// Why a spill in `variant` is accepted, if it is (see [`KNOWN_SPILLS`]).
pub fn known_spill(variant: &str) -> Option<&'static str> {
    KNOWN_SPILLS.iter().find(|(prefix, _)| variant.starts_with(prefix)).map(|(_, why)| *why)
}

/// What ptxas reported for one kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct Resources {
    pub registers: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
    pub stack_bytes: u32,
}

impl Resources {
    /// Parses ptxas' `-v` lines (`Used N registers`, `N bytes stack frame, N bytes spill
    /// stores, N bytes spill loads`).
    pub fn parse(log: &str) -> Option<Resources> {
        let number_before = |line: &str, word: &str| -> Option<u32> {
            let at = line.find(word)?;
            line[..at].split_whitespace().last()?.parse().ok()
        };
        let registers = log.lines().find_map(|l| number_before(l, "registers"))?;
        let frame = log.lines().find(|l| l.contains("stack frame"))?;
        Some(Resources {
            registers,
            stack_bytes: number_before(frame, "bytes stack frame")?,
            spill_stores: number_before(frame, "bytes spill stores")?,
            spill_loads: number_before(frame, "bytes spill loads")?,
        })
    }
}

/// Resident cubes per SM of compute capability 9.0 (H100/H200: 64 K registers allocated per
/// warp in units of 256, 228 KB shared memory with 1 KB reserved per cube, 2,048 threads and
/// 32 cubes), and which limit binds.
pub fn cubes_per_sm(threads: u32, registers: u32, shared_bytes: usize) -> (u32, &'static str) {
    let warps = threads.div_ceil(32);
    let per_warp = (registers.max(1) * 32).div_ceil(256) * 256;
    let by_regs = (65_536 / per_warp) / warps;
    let by_shared = if shared_bytes == 0 { u32::MAX } else { (233_472 / (shared_bytes as u32 + 1024)).min(u32::MAX) };
    let by_threads = 2048 / (warps * 32);
    let limits = [(by_regs, "registers"), (by_shared, "shared memory"), (by_threads, "threads"), (32, "cubes")];
    limits.into_iter().min_by_key(|l| l.0).unwrap_or((0, "registers"))
}

type CreateProgram = unsafe extern "C" fn(*mut *mut c_void, *const c_char, *const c_char, c_int, *const *const c_char, *const *const c_char) -> c_int;
type CompileProgram = unsafe extern "C" fn(*mut c_void, c_int, *const *const c_char) -> c_int;
type LogSize = unsafe extern "C" fn(*mut c_void, *mut usize) -> c_int;
type GetLog = unsafe extern "C" fn(*mut c_void, *mut c_char) -> c_int;
type Destroy = unsafe extern "C" fn(*mut *mut c_void) -> c_int;

/// NVRTC, loaded from a file.
pub struct Nvrtc {
    lib: libloading::Library,
}

impl Nvrtc {
    pub fn open(path: &Path) -> Result<Nvrtc, CheckError> {
        // SAFETY: loading NVRTC runs only its library initializers.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| CheckError::Load { path: path.display().to_string(), reason: e.to_string() })?;
        Ok(Nvrtc { lib })
    }

    fn symbol<T: Copy>(&self, name: &'static str) -> Result<T, CheckError> {
        // SAFETY: each type above is the C signature nvrtc.h declares for that name.
        unsafe { self.lib.get::<T>(name.as_bytes()).map(|s| *s) }.map_err(|e| CheckError::Load { path: name.into(), reason: e.to_string() })
    }

    /// Compiles `src` for sm_90a as cubecl's CUDA runtime does (same arch and include flags),
    /// with ptxas' verbose report; returns whether it compiled and the log.
    pub fn compile(&self, src: &CudaSource, include: &Path) -> Result<(bool, String), CheckError> {
        let fail = |call, status| CheckError::Nvrtc { name: src.name.clone(), call, status };
        let create: CreateProgram = self.symbol("nvrtcCreateProgram\0")?;
        let compile: CompileProgram = self.symbol("nvrtcCompileProgram\0")?;
        let log_size: LogSize = self.symbol("nvrtcGetProgramLogSize\0")?;
        let get_log: GetLog = self.symbol("nvrtcGetProgramLog\0")?;
        let destroy: Destroy = self.symbol("nvrtcDestroyProgram\0")?;
        let text = CString::new(src.source.as_str()).map_err(|_| fail("source (interior NUL)", -1))?;
        let file = CString::new(format!("{}.cu", src.entry)).map_err(|_| fail("name", -1))?;
        // cubecl's CUDA runtime adds CUDA 13's `include/cccl` when it exists (the `cp.async`
        // barriers' `cuda/std` headers live there).
        let cccl = include.join("cccl");
        let mut flags = vec!["--gpu-architecture=sm_90a".to_string(), format!("--include-path={}", include.display())];
        if cccl.exists() {
            flags.push(format!("--include-path={}", cccl.display()));
        }
        flags.extend(["-lineinfo".to_string(), "--ptxas-options=-v".to_string()]);
        let options: Vec<CString> = flags
            .into_iter()
            .filter_map(|o| CString::new(o).ok())
            .collect();
        let pointers: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
        let mut program: *mut c_void = std::ptr::null_mut();
        // SAFETY: NVRTC's C API with live, NUL-terminated strings; the program is destroyed below.
        unsafe {
            let status = create(&mut program, text.as_ptr(), file.as_ptr(), 0, std::ptr::null(), std::ptr::null());
            if status != 0 {
                return Err(fail("nvrtcCreateProgram", status));
            }
            let compiled = compile(program, pointers.len() as c_int, pointers.as_ptr()) == 0;
            let mut size = 0usize;
            let status = log_size(program, &mut size);
            let mut log = vec![0u8; size.max(1)];
            let status = if status == 0 { get_log(program, log.as_mut_ptr().cast()) } else { status };
            destroy(&mut program);
            if status != 0 {
                return Err(fail("nvrtcGetProgramLog", status));
            }
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            Ok((compiled, String::from_utf8_lossy(&log[..end]).into_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_ptxas_report() {
        let log = "ptxas info    : Compiling entry function 'gemm64_kernel_f_' for 'sm_90a'\n\
                   ptxas         .     8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
                   ptxas info    : Used 130 registers, used 1 barriers\n";
        assert_eq!(Resources::parse(log), Some(Resources { registers: 130, spill_stores: 4, spill_loads: 12, stack_bytes: 8 }));
        assert_eq!(Resources::parse("no report"), None);
    }

    #[test]
    fn only_listed_spills_are_accepted() {
        assert!(known_spill("gemm64 r256 wmma f16 double").is_some());
        assert!(known_spill("gemm64 r256 wmma bf16").is_none());
        assert!(known_spill("gemm64 r128 wmma f16").is_none());
    }

    #[test]
    fn occupancy_follows_the_binding_limit() {
        // 130 registers round to 136 per thread: 15 warps fit, one cube of 8.
        assert_eq!(cubes_per_sm(256, 130, 45_120), (1, "registers"));
        assert_eq!(cubes_per_sm(256, 128, 45_120), (2, "registers"));
        assert_eq!(cubes_per_sm(256, 64, 100_000), (2, "shared memory"));
        assert_eq!(cubes_per_sm(128, 24, 0), (16, "threads"));
    }
}
