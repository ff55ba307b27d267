//! Source generation and launch of the `wgmma` NF4 products (see the module docs).

use super::{takes, takes_dx, SHARED_BYTES, STAGES, THREADS, TILE_M, TILE_N};
use crate::cuda_source::CudaSourceTask;
use crate::device::{empty, KernelError, Nf4Device, ScalesDevice};
use crate::gemm::wide::WideTerms;
use crate::gemm_dense::plan_parts;
use crate::splitk_sum::{splitk_sum_into, Split};
use burn_backend::DType;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::cuda::CudaRuntime;
use cubecl::prelude::*;
use cubecl::server::{KernelArguments, MetadataBindingInfo};
use std::any::Any;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex, OnceLock};

const KERNEL_BODY: &str = include_str!("kernel.cu");

/// One compiled instance of the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Variant {
    /// bf16 (else f16) operands.
    pub bf16: bool,
    /// f32 partials out (a split reduction's parts), else the operands' dtype.
    pub out_f32: bool,
    /// Double-quantized block scales.
    pub double: bool,
    /// The adapter's up-projection added.
    pub lora: bool,
    /// The added term: the forward's bias `[N]`, or dX's whole `[M, K]` term.
    pub added: bool,
    /// How the decoded weight reaches the tensor cores.
    pub mainloop: Mainloop,
    /// The input gradient `dX = dY W` (else the forward).
    pub dx: bool,
}

/// How the decoded weight reaches `wgmma` (see `kernel.cu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Mainloop {
    /// Each thread decodes its own A fragment into registers; the products are waited for
    /// before the next decode (ptxas serializes `wgmma`s whose register inputs are defined
    /// while one is in flight), so decode and products alternate.
    Registers,
    /// Each warpgroup decodes its 64 rows into a 16-bit swizzled tile in shared memory, two
    /// tiles alternating; step `kt + 1`'s decode runs while step `kt`'s products do.
    Shared,
}

impl Mainloop {
    /// The one the model's products take.
    pub(crate) const DEFAULT: Mainloop = Mainloop::Shared;

    /// Dynamic shared memory per cube, bytes (see [`super::SHARED_BYTES`]).
    pub(crate) fn shared_bytes(self) -> usize {
        match self {
            Mainloop::Registers => SHARED_BYTES,
            Mainloop::Shared => SHARED_BYTES + 2 * 16384,
        }
    }
}

impl Variant {
    /// The entry point's name, e.g. `nf4_wgmma_bf16_f32_double_lora_bias`.
    pub(crate) fn entry(&self) -> String {
        let mut s = format!("nf4_wgmma_{}", if self.bf16 { "bf16" } else { "f16" });
        for (on, tag) in [(self.dx, "_dx"), (self.mainloop == Mainloop::Shared, "_ss"), (self.out_f32, "_f32"), (self.double, "_double"), (self.lora, "_lora"), (self.added && !self.dx, "_bias"), (self.added && self.dx, "_addend")] {
            if on {
                s.push_str(tag);
            }
        }
        s
    }

    /// The full CUDA C++ source: the variant's definitions, the generated `wgmma` wrapper and
    /// the kernel body.
    pub(crate) fn source(&self) -> String {
        let (elem, ty, pack, to_elem, unpack) = if self.bf16 {
            ("__nv_bfloat16", "bf16", "__floats2bfloat162_rn", "__float2bfloat16_rn", "__bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u))")
        } else {
            ("__half", "f16", "__floats2half2_rn", "__float2half_rn", "__half22float2(*reinterpret_cast<const __half2*>(&u))")
        };
        let (bias, addend) = (self.added && !self.dx, self.added && self.dx);
        // dX's added term is added to f32 staging before the one rounding.
        let stage_f32 = self.out_f32 || addend;
        let mut s = String::new();
        s.push_str("#include <cuda_bf16.h>\n#include <cuda_fp16.h>\n");
        let _ = writeln!(s, "#define ELEM {elem}");
        let _ = writeln!(s, "#define OUT_T {}", if self.out_f32 { "float" } else { elem });
        let _ = writeln!(s, "#define STAGE_F32 {}\n#define STAGE_T {}", stage_f32 as u8, if stage_f32 { "float" } else { elem });
        let _ = writeln!(s, "#define TO_STAGE(v) {}", if stage_f32 { "(v)".to_string() } else { format!("{to_elem}(v)") });
        let _ = writeln!(s, "#define DX {}\n#define ADDEND {}", self.dx as u8, addend as u8);
        let _ = writeln!(s, "#define DOUBLE {}\n#define LORA {}\n#define BIAS {}", self.double as u8, self.lora as u8, bias as u8);
        let _ = writeln!(s, "#define SS {}", (self.mainloop == Mainloop::Shared) as u8);
        let _ = writeln!(s, "#define STAGES {STAGES}\n#define KNAME {}", self.entry());
        // Two floats rounded into one register of two 16-bit values, the first in the low half.
        let _ = writeln!(s, "static __device__ __forceinline__ unsigned pack2(float lo, float hi) {{ auto v = {pack}(lo, hi); return *reinterpret_cast<unsigned*>(&v); }}");
        s.push_str("#define PACK2(lo, hi) pack2(lo, hi)\n");
        let _ = writeln!(s, "static __device__ __forceinline__ float2 unpack2(unsigned u) {{ return {unpack}; }}\n#define UNPACK2(u) unpack2(u)");
        s.push_str(&wgmma(ty, false));
        s.push_str(&wgmma(ty, true));
        s.push_str(KERNEL_BODY);
        s
    }
}

/// `d[0..128] += A * B` by `wgmma.mma_async.sync.aligned.m64n256k16` with f32 accumulators
/// and `ty` operands: `wgmma_rs(d, a, desc_b)` takes A from 4 registers, `wgmma_ss(d, desc_a,
/// desc_b)` from shared memory (M-major, i.e. transposed, where `DX`). The accumulators are operands of the instruction itself, so the
/// compiler keeps them in registers across the asynchronous product.
fn wgmma(ty: &str, shared_a: bool) -> String {
    let regs: Vec<String> = (0..128).map(|i| format!("%{i}")).collect();
    let outs: Vec<String> = (0..128).map(|i| format!("\"+f\"(d[{i}])")).collect();
    let (name, a_param, a_operand, rest, ins) = if shared_a {
        ("wgmma_ss", "unsigned long long desc_a", "%128", "%129, p, 1, 1, %131, 0", "\"l\"(desc_a), \"l\"(desc), \"r\"(1), \"n\"(DX)")
    } else {
        ("wgmma_rs", "const unsigned* a", "{%128, %129, %130, %131}", "%132, p, 1, 1, 0", "\"r\"(a[0]), \"r\"(a[1]), \"r\"(a[2]), \"r\"(a[3]), \"l\"(desc), \"r\"(1)")
    };
    let pred = if shared_a { 130 } else { 133 };
    format!(
        "static __device__ __forceinline__ void {name}(float* d, {a_param}, unsigned long long desc) {{\n\
         asm volatile(\"{{\\n.reg .pred p;\\nsetp.ne.b32 p, %{pred}, 0;\\n\"\n\
         \"wgmma.mma_async.sync.aligned.m64n256k16.f32.{ty}.{ty} {{{}}}, {a_operand}, {rest};\\n}}\\n\"\n\
         : {}\n\
         : {ins});\n}}\n",
        regs.join(", "),
        outs.join(", ")
    )
}

/// The variant's entry point and source with the source's hash, made once per process: every
/// launch builds a task, and hashing the ~20 KB source each time cost the host microseconds
/// per product.
fn source_of(v: Variant) -> (String, Arc<String>, u64) {
    static SOURCES: OnceLock<Mutex<HashMap<Variant, (String, Arc<String>, u64)>>> = OnceLock::new();
    let mut map = SOURCES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    map.entry(v)
        .or_insert_with(|| {
            let source = Arc::new(v.source());
            let hash = crate::cuda_source::source_hash(&source);
            (v.entry(), source, hash)
        })
        .clone()
}

/// The task for `v`, with `client` expanding its shared-memory donor (the compile check
/// passes its own runtime's).
pub(crate) fn task<R: Runtime>(client: ComputeClient<R>, v: Variant) -> CudaSourceTask<R> {
    let (entry, source, hash) = source_of(v);
    CudaSourceTask::new(client, entry, source, hash, v.mainloop.shared_bytes(), THREADS)
}

/// Whether the kernel takes `m` rows against `w` (see [`takes`], [`takes_dx`]): `dX` only in the
/// shared-memory mainloop and without an adapter.
fn takes_problem<R: CubeRuntime>(m: usize, w: &Nf4Device<R>, lora: bool, dx: bool, mainloop: Mainloop) -> bool {
    if dx {
        takes_dx(m, w.n, w.k, w.blocksize) && mainloop == Mainloop::Shared && !lora
    } else {
        takes(m, w.n, w.k, w.blocksize)
    }
}

/// The product on `wgmma` into the contiguous `out` of `a`'s dtype: the forward `Y = X W^T`
/// (with the adapter and bias of `terms`), or with `dx` the input gradient `dX = dY W` (with
/// `terms.added` its whole added term; never split, shared-memory mainloop only). `parts`: the
/// forward's split of the reduction (`None`: automatic). Errors where the kernel does not take
/// the problem (see [`takes`], [`takes_dx`]); operands are checked by the caller.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_into(kernel: &'static str, a: &CubeTensor<CudaRuntime>, w: &Nf4Device<CudaRuntime>, out: &CubeTensor<CudaRuntime>, terms: WideTerms<'_, CudaRuntime>, shift: u32, dx: bool, parts: Option<usize>, mainloop: Mainloop) -> Result<(), KernelError> {
    let m = a.meta.shape().first().copied().unwrap_or(0);
    if !takes_problem(m, w, terms.lora.is_some(), dx, mainloop) {
        return Err(KernelError::Shape { kernel, what: format!("wgmma {} does not take M {m}, N {}, K {}, blocks {} ({mainloop:?})", if dx { "dX" } else { "forward" }, w.n, w.k, w.blocksize) });
    }
    let bf16 = match a.dtype {
        DType::BF16 => true,
        DType::F16 => false,
        dtype => return Err(KernelError::Dtype { kernel, dtype }),
    };
    let (red, cols) = if dx { (w.n, w.k) } else { (w.k, w.n) };
    let client = w.client();
    let tiles_m = m.div_ceil(TILE_M);
    let cubes = (cols / TILE_N) * tiles_m;
    let sms = client.properties().hardware.num_streaming_multiprocessors.unwrap_or(1) as usize;
    let (parts, span) = plan_parts(red / 64, cubes, sms, if dx { Some(1) } else { parts });
    let partials = (parts > 1).then(|| empty(a, vec![parts * m, cols], DType::F32));
    let target = partials.as_ref().unwrap_or(out);
    let (absmax, qcodes, offset, double) = match &w.scales {
        ScalesDevice::F32(s) => (s, &w.packed, 0.0f32, false),
        ScalesDevice::Double { codes, nested, offset } => (nested, codes, *offset, true),
    };
    let rank = terms.lora.map_or(0, |l| l.2);
    let binding = |t: &CubeTensor<CudaRuntime>| t.handle.clone().binding();
    // Absent terms are never read (compiled out); `a` stands in for them.
    let (h, b) = terms.lora.map_or((a, a), |(h, b, _)| (h, b));
    let added = terms.added.unwrap_or(a);
    let buffers = [a, &w.packed, absmax, qcodes, &w.lut, target, h, b, added].into_iter().map(binding).collect();
    let params = vec![m as u64, w.n as u64, w.k as u64, shift as u64, rank as u64, span as u64, offset.to_bits() as u64];
    // All of it static: cubecl passes the static part as the kernel's last (`__grid_constant__`)
    // argument; a dynamic part (what `MetadataBindingInfo::custom` makes of all of it) would
    // travel as one more buffer before it, shifting the struct's slot.
    let words = params.len();
    let args = KernelArguments { buffers, info: MetadataBindingInfo { data: params, dynamic_metadata_offset: words }, tensor_maps: Vec::new() };
    let v = Variant { bf16, out_f32: parts > 1, double, lora: terms.lora.is_some(), added: terms.added.is_some(), mainloop, dx };
    let count = CubeCount::Static(tiles_m as u32, (cols / TILE_N) as u32, parts as u32);
    unsafe { client.launch_unchecked(Box::new(task(client.clone(), v)), count, args) };
    match &partials {
        Some(p) => splitk_sum_into(p, Split { outer: 1, parts, inner: m * cols }, 1.0, out),
        None => Ok(()),
    }
}

/// [`launch_into`] for any runtime: `None` where the runtime is not CUDA or the kernel does not
/// take the problem (the caller runs the wide kernel), else the launch's result.
#[allow(clippy::too_many_arguments)]
pub(crate) fn try_launch<R: CubeRuntime>(kernel: &'static str, a: &CubeTensor<R>, w: &Nf4Device<R>, out: &CubeTensor<R>, terms: WideTerms<'_, R>, shift: u32, dx: bool, parts: Option<usize>, mainloop: Mainloop) -> Option<Result<(), KernelError>> {
    fn cast<'a, R: CubeRuntime>(t: &'a CubeTensor<R>) -> Option<&'a CubeTensor<CudaRuntime>> {
        (t as &dyn Any).downcast_ref()
    }
    let w = (w as &dyn Any).downcast_ref::<Nf4Device<CudaRuntime>>()?;
    let m = a.meta.shape().first().copied().unwrap_or(0);
    if !takes_problem(m, w, terms.lora.is_some(), dx, mainloop) || !matches!(a.dtype, DType::BF16 | DType::F16) {
        return None;
    }
    let lora = match terms.lora {
        Some((h, b, rank)) => Some((cast(h)?, cast(b)?, rank)),
        None => None,
    };
    let added = match terms.added {
        Some(t) => Some(cast(t)?),
        None => None,
    };
    Some(launch_into(kernel, cast(a)?, w, cast(out)?, WideTerms { lora, added }, shift, dx, parts, mainloop))
}
