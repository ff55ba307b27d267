// The NF4 forward Y[M, N] = X[M, K] W^T (+ H B^T + bias) and, with DX, the input gradient
// dX[M, K] = dY[M, N] W (+ D), on Hopper's warpgroup MMA (`wgmma.mma_async` m64n256k16),
// computed transposed. Described for the forward (dX swaps W's roles of rows and columns, see
// mod.rs): each cube owns 128 rows of W (two warpgroups of 64) against 256 rows of X and
// accumulates D[n, m] = sum_k W[n, k] X[m, k], 128 f32 registers a thread.
// - B (X's rows, K-major) is read from shared memory by descriptor, in the 128-byte swizzle,
//   filled by `cp.async` (16 bytes a copy, the swizzle applied to the address).
// - A (W's rows): SS (the shared-memory mainloop) decodes each warpgroup's 64 rows of the next
//   step into a 16-bit swizzled tile (two alternate) while the current step's products run;
//   otherwise (the registers mainloop) each thread decodes its own fragment (mma.sync's A
//   layout per warp) into registers and waits for the products before decoding again.
// Slots: STAGES of (X tile 256 x 64, packed W tile 128 x 32 bytes); copies run PREF = STAGES - 2
// steps ahead; the scales' raw parts are loaded a step before they are needed.
// The epilogue adds the adapter (rank / 64 more products, A read from B's rows as they are)
// and the bias (part 0 of a split reduction only), then stages the tile in shared memory so
// each output row leaves in 16-byte stores.
//
// The launcher (launch.rs) prepends the variant's definitions (ELEM, OUT_T, STAGE_T, DOUBLE,
// LORA, BIAS, DX, ADDEND, SS, STAGES, KNAME), PACK2 / UNPACK2 and the generated `wgmma_rs` /
// `wgmma_ss` (128 accumulator operands).

#define PREF (STAGES - 2)
#define X_BYTES 32768u
#define W_BYTES 4096u

struct WgParams {
    unsigned long long m, n, k, shift, rank, span, offset_bits;
};

static __device__ __forceinline__ unsigned smem_u32(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}
static __device__ __forceinline__ void cp16(unsigned dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
}
static __device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
static __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }
static __device__ __forceinline__ void fence_async_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
static __device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
static __device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
static __device__ __forceinline__ void wg_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
// Registers an in-flight wgmma still reads (or writes): the compiler must keep them in place.
static __device__ __forceinline__ void keep_frags(unsigned* a) {
#pragma unroll
    for (int i = 0; i < 16; ++i) asm volatile("" : "+r"(a[i])::"memory");
}
static __device__ __forceinline__ void keep_acc(float* d) {
#pragma unroll
    for (int i = 0; i < 128; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// Shared-memory descriptor of a K-major tile with the 128-byte swizzle: rows of 128 bytes,
// 8-row atoms 1,024 bytes apart (the leading offset is unused for this layout).
// An M-major tile (dX's decoded W: rows of the reduction, 64 of the product's rows each) has
// the same atoms; its 64-wide product fits one atom across, so the offset between atoms across
// is never used and both offsets are set to the one between 8-row atoms down.
static __device__ __forceinline__ unsigned long long desc_sw128(unsigned addr, unsigned lbo = 16u) {
    unsigned long long d = (unsigned long long)((addr & 0x3FFFFu) >> 4);
    d |= (unsigned long long)(lbo >> 4) << 16;
    d |= (unsigned long long)(1024u >> 4) << 32;
    d |= 1ull << 62;
    return d;
}

static __device__ __forceinline__ unsigned pair_of(const float2* tab2, unsigned byte, float s) {
    float2 f = tab2[byte];
    return PACK2(f.x * s, f.y * s);
}

// The 16 fragment registers of one 64-wide step from the packed rows rA, rB (32 bytes each):
// slice j's registers are (rA, k 16j + 2t), (rB, same), (rA, k 16j + 8 + 2t), (rB, same),
// i.e. byte t of words 2j and 2j + 1 (element 2i is the high nibble of byte i).
static __device__ __forceinline__ void decode(const unsigned char* wslot, int rA, int rB, int t, float sA, float sB,
                                              const float2* tab2, unsigned* a) {
    const uint4* rowA = reinterpret_cast<const uint4*>(wslot + rA * 32);
    const uint4* rowB = reinterpret_cast<const uint4*>(wslot + rB * 32);
    uint4 a0 = rowA[0], a1 = rowA[1], b0 = rowB[0], b1 = rowB[1];
    unsigned wa[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
    unsigned wb[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
    const unsigned sh = 8u * (unsigned)t;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        a[4 * j + 0] = pair_of(tab2, (wa[2 * j] >> sh) & 255u, sA);
        a[4 * j + 1] = pair_of(tab2, (wb[2 * j] >> sh) & 255u, sB);
        a[4 * j + 2] = pair_of(tab2, (wa[2 * j + 1] >> sh) & 255u, sA);
        a[4 * j + 3] = pair_of(tab2, (wb[2 * j + 1] >> sh) & 255u, sB);
    }
}

// One 64-deep step of products with A from the 16 fragment registers `a`, B from the K-major
// tile whose descriptor is `desc0`, waited for before returning (see the registers mainloop).
static __device__ __forceinline__ void products_rs(float* d, unsigned* a, unsigned long long desc0) {
    wg_fence();
#pragma unroll
    for (int j = 0; j < 4; ++j) wgmma_rs(d, a + 4 * j, desc0 + 2 * j);
    wg_commit();
    wg_wait<0>();
    keep_acc(d);
    keep_frags(a);
}

#if SS
#define WD_BYTES 16384u
#define WD_OFFSET (STAGES * (X_BYTES + W_BYTES))
#define TAB_OFFSET (WD_OFFSET + 2 * WD_BYTES)
#else
#define TAB_OFFSET (STAGES * (X_BYTES + W_BYTES))
#endif

// A named barrier over one warpgroup (ids 1 and 2; 0 is __syncthreads').
static __device__ __forceinline__ void wg_bar(int wg) { asm volatile("bar.sync %0, 128;\n" ::"r"(wg + 1) : "memory"); }

// Decodes a warpgroup's 64 x 64 block of W for one step into its 16-bit tile at `dst` in the
// 128-byte swizzle (rows of W, 64 of its columns each): thread wt takes row wt / 2, codes
// (wt % 2) * 32 .. + 31 (four 16-byte chunks of 8 elements). The forward reads the tile
// K-major (its rows are the product's rows), dX M-major (its rows are the reduction's).
static __device__ __forceinline__ void decode_tile(const unsigned char* wslot, unsigned char* dst, int wt, float s,
                                                   const float2* tab2) {
    const int wg = (threadIdx.x >> 7);
    const int r = wt >> 1, h = wt & 1;
    // Forward: the slot holds 128 rows of 32 bytes, this warpgroup's rows 64 wg ..; dX: 64 rows
    // of 64 bytes, this warpgroup's columns in bytes 32 wg .., the four 16-byte chunks of row r
    // stored XOR (r / 2) % 4 (see `issue`).
    const int at = DX ? r * 64 + (((wg * 2 + h) ^ ((r >> 1) & 3)) << 4) : (wg * 64 + r) * 32 + h * 16;
    const uint4 q = *reinterpret_cast<const uint4*>(wslot + at);
    const unsigned w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        uint4 o;
        o.x = pair_of(tab2, w[i] & 255u, s);
        o.y = pair_of(tab2, (w[i] >> 8) & 255u, s);
        o.z = pair_of(tab2, (w[i] >> 16) & 255u, s);
        o.w = pair_of(tab2, w[i] >> 24, s);
        const int c = h * 4 + i;
        *reinterpret_cast<uint4*>(dst + r * 128 + ((c ^ (r & 7)) << 4)) = o;
    }
}

extern "C" __global__ void __launch_bounds__(256, 1)
    KNAME(const ELEM* __restrict__ x, const unsigned char* __restrict__ packed, const float* __restrict__ absmax,
          const unsigned char* __restrict__ qcodes, const float* __restrict__ lut, OUT_T* __restrict__ out,
          const ELEM* __restrict__ lora_h, const ELEM* __restrict__ lora_b, const ELEM* __restrict__ addend,
          const __grid_constant__ WgParams p) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    // The swizzle is a function of the address bits: tiles start on 1,024 bytes.
    const unsigned raw = smem_u32(smem_raw);
    const unsigned base = (raw + 1023u) & ~1023u;
    unsigned char* sbase = smem_raw + (base - raw);
    const unsigned wbase = base + STAGES * X_BYTES;
    float2* tab2 = reinterpret_cast<float2*>(sbase + TAB_OFFSET);
    float* dmap = reinterpret_cast<float*>(tab2 + 256);

    const int tid = threadIdx.x;
    const long m = (long)p.m, n = (long)p.n, k = (long)p.k;
    // The reduction's length (X's or dY's columns) and the output's columns.
    const long red = DX ? n : k, cols = DX ? k : n;
    const int rank = (int)p.rank;
    const float offset = __uint_as_float((unsigned)p.offset_bits);
    // Both codes of a byte at once: (high nibble, low nibble) = (element 2i, 2i + 1).
    tab2[tid] = make_float2(lut[tid >> 4], lut[tid & 15]);
    if (DOUBLE) dmap[tid] = lut[16 + tid];

    const long m0 = (long)blockIdx.x * 256;
    const long c0 = (long)blockIdx.y * 128;
    const int part = blockIdx.z;
    const long first = (long)part * (long)p.span;
    const int steps = (int)min((long)p.span, red / 64 - first);
    const int wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int rA = wg * 64 + warp * 16 + g, rB = rA + 8;

    // Step s's copies into slot s % STAGES: X rows m0 .. m0 + 255 (past M: the last row again,
    // never stored), columns (first + s) * 64 ..; W rows c0 .. c0 + 127, 32 bytes each.
    auto issue = [&](int s) {
        const int slot = s % STAGES;
        const unsigned xdst = base + slot * X_BYTES;
        const long col = (first + s) * 64;
#pragma unroll
        for (int q = 0; q < 8; ++q) {
            const int i = tid + q * 256, r = i >> 3, c = i & 7;
            const long gr = min(m0 + r, m - 1);
            cp16(xdst + r * 128 + ((c ^ (r & 7)) << 4), x + gr * red + col + c * 8);
        }
        if (DX) {
            // W's rows col .. col + 63, columns c0 .. c0 + 127: 64 bytes a row, chunk h of row r
            // at chunk h ^ (r / 2) % 4: a warp's decode then reads 16 rows' chunks from 8
            // different 16-byte bank groups (4 without it: twice the shared-memory wavefronts).
            const int r = tid >> 2, h = tid & 3;
            cp16(wbase + slot * W_BYTES + r * 64 + ((h ^ ((r >> 1) & 3)) << 4), packed + ((col + r) * k + c0) / 2 + h * 16);
        } else {
            const int r = tid >> 1, h = tid & 1;
            cp16(wbase + slot * W_BYTES + r * 32 + h * 16, packed + ((c0 + r) * k + col) / 2 + h * 16);
        }
    };
    // A row's block scale for step s in its raw parts (code and nested scale, or the scale),
    // loaded a step before it is finished, so the load's latency passes meanwhile.
    auto scale_parts = [&](int s, int r, unsigned& code, float& rawv) {
        // dX: r is the warpgroup's tile row (W's row (first + s) * 64 + r % 64, the block of
        // columns c0 + 64 wg ..); forward: the cube's row of W.
        const long b = (DX ? ((first + s) * 64 + (r & 63)) * k + c0 + (r >> 6) * 64 : (c0 + r) * k + (first + s) * 64) >> p.shift;
        if (DOUBLE) {
            code = qcodes[b];
            rawv = absmax[b >> 8];
        } else {
            code = 0;
            rawv = absmax[b];
        }
    };

    // A scale from its raw parts.
    auto finish = [&](unsigned code, float rawv) { return DOUBLE ? dmap[code] * rawv + offset : rawv; };
    // The start of step kt, once its copies have landed (the caller waited for them): visible to
    // the async proxy and to every thread; then step kt + PREF's copies go out.
    auto enter = [&](int kt) {
        fence_async_smem();
        __syncthreads();
        if (kt + PREF < steps) issue(kt + PREF);
        cp_commit();
    };

    float d[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) d[i] = 0.f;
    unsigned fa[16];

#pragma unroll
    for (int s = 0; s < PREF; ++s) {
        if (s < steps) issue(s);
        cp_commit();
    }
#if SS
    // The decoded weight through shared memory: this thread's row of its warpgroup's 64.
    const int wt = tid & 127, dr = wg * 64 + (wt >> 1);
    unsigned cD;
    float vD;
    scale_parts(0, dr, cD, vD);
    cp_wait<PREF - 1>();
    __syncthreads();  // the tables, step 0's copies
    decode_tile(sbase + STAGES * X_BYTES, sbase + WD_OFFSET + wg * 8192, wt, finish(cD, vD), tab2);
    if (1 < steps) scale_parts(1, dr, cD, vD);
    fence_async_smem();
    wg_bar(wg);
    for (int kt = 0; kt < steps; ++kt) {
        // Step kt's X tile and step kt + 1's packed rows have landed.
        cp_wait<PREF - 2>();
        enter(kt);
        const unsigned long long da = desc_sw128(base + WD_OFFSET + (kt & 1) * WD_BYTES + wg * 8192, DX ? 1024u : 16u);
        const unsigned long long db = desc_sw128(base + (kt % STAGES) * X_BYTES);
        wg_fence();
        // A 16-deep slice of the reduction: 32 bytes along the forward's K-major rows, 16 rows
        // (2,048 bytes) down dX's M-major tile.
#pragma unroll
        for (int j = 0; j < 4; ++j) wgmma_ss(d, da + (DX ? 128 : 2) * j, db + 2 * j);
        wg_commit();
        // Step kt - 1's products are done: its decoded tile is free for step kt + 1, decoded
        // while step kt's products run.
        wg_wait<1>();
        if (kt + 1 < steps) {
            const float sc = finish(cD, vD);
            if (kt + 2 < steps) scale_parts(kt + 2, dr, cD, vD);
            decode_tile(sbase + STAGES * X_BYTES + ((kt + 1) % STAGES) * W_BYTES, sbase + WD_OFFSET + ((kt + 1) & 1) * WD_BYTES + wg * 8192, wt, sc, tab2);
            fence_async_smem();
            wg_bar(wg);
        }
    }
    wg_wait<0>();
    keep_acc(d);
#else
    __syncthreads();  // the tables
    unsigned cA, cB;
    float vA, vB;
    scale_parts(0, rA, cA, vA);
    scale_parts(0, rB, cB, vB);
    for (int kt = 0; kt < steps; ++kt) {
        cp_wait<PREF - 1>();
        enter(kt);
        const float sA = finish(cA, vA), sB = finish(cB, vB);
        if (kt + 1 < steps) {
            scale_parts(kt + 1, rA, cA, vA);
            scale_parts(kt + 1, rB, cB, vB);
        }
        const int slot = kt % STAGES;
        decode(sbase + STAGES * X_BYTES + slot * W_BYTES, rA, rB, t, sA, sB, tab2, fa);
        // Every input of the four products is defined before the fence, and the products are
        // waited for before the next decode defines their fragment registers again: ptxas
        // serializes `wgmma`s whose register inputs a non-`wgmma` instruction defines while
        // one is in flight (C7513), so this variant does not overlap the decode with them.
        products_rs(d, fa, desc_sw128(base + slot * X_BYTES));
    }
#endif

    // Part 0 alone adds the adapter and the bias (the other parts write bare partials).
    const bool lead = part == 0;
    if (LORA && lead) {
        // The adapter's up-projection as rank / 64 more steps: A from B's rows (16-bit, read
        // as they are), the shared operand from h's rows.
        for (int e = 0; e < rank / 64; ++e) {
            cp_wait<0>();
            __syncthreads();
#pragma unroll
            for (int q = 0; q < 8; ++q) {
                const int i = tid + q * 256, r = i >> 3, c = i & 7;
                const long gr = min(m0 + r, m - 1);
                cp16(base + r * 128 + ((c ^ (r & 7)) << 4), lora_h + gr * rank + e * 64 + c * 8);
            }
            cp_commit();
            const unsigned* ba = reinterpret_cast<const unsigned*>(lora_b + (c0 + rA) * rank + e * 64);
            const unsigned* bb = reinterpret_cast<const unsigned*>(lora_b + (c0 + rB) * rank + e * 64);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                fa[4 * j + 0] = ba[8 * j + t];
                fa[4 * j + 1] = bb[8 * j + t];
                fa[4 * j + 2] = ba[8 * j + 4 + t];
                fa[4 * j + 3] = bb[8 * j + 4 + t];
            }
            cp_wait<0>();
            fence_async_smem();
            __syncthreads();
            products_rs(d, fa, desc_sw128(base));
        }
    }

    // Through shared memory, transposed back to Y's layout, so each row leaves in 16-byte
    // stores: D[n, m] of this thread is (rA | rB, tokens 8c + 2t, + 1).
    cp_wait<0>();
    __syncthreads();
    const int LD = STAGE_F32 ? 132 : 136;
    STAGE_T* st = reinterpret_cast<STAGE_T*>(sbase);
    float biasA = 0.f, biasB = 0.f;
    if (BIAS && lead) {
        biasA = (float)addend[c0 + rA];
        biasB = (float)addend[c0 + rB];
    }
#pragma unroll
    for (int c = 0; c < 32; ++c) {
        const int tok = c * 8 + 2 * t;
        st[tok * LD + rA] = TO_STAGE(d[4 * c + 0] + biasA);
        st[(tok + 1) * LD + rA] = TO_STAGE(d[4 * c + 1] + biasA);
        st[tok * LD + rB] = TO_STAGE(d[4 * c + 2] + biasB);
        st[(tok + 1) * LD + rB] = TO_STAGE(d[4 * c + 3] + biasB);
    }
    __syncthreads();
    const long orow = (long)part * m + m0;
#if ADDEND
    // dX's whole added term, added to the f32 staging before the one rounding: 8 elements a
    // thread and pass.
    for (int i = tid; i < 256 * 16; i += 256) {
        const int r = i / 16, v = i % 16;
        if (m0 + r < m) {
            const float4 lo = *reinterpret_cast<const float4*>(st + r * LD + v * 8);
            const float4 hi = *reinterpret_cast<const float4*>(st + r * LD + v * 8 + 4);
            const uint4 a = *reinterpret_cast<const uint4*>(addend + (m0 + r) * cols + c0 + v * 8);
            const float2 a0 = UNPACK2(a.x), a1 = UNPACK2(a.y), a2 = UNPACK2(a.z), a3 = UNPACK2(a.w);
            uint4 o;
            o.x = PACK2(lo.x + a0.x, lo.y + a0.y);
            o.y = PACK2(lo.z + a1.x, lo.w + a1.y);
            o.z = PACK2(hi.x + a2.x, hi.y + a2.y);
            o.w = PACK2(hi.z + a3.x, hi.w + a3.y);
            *reinterpret_cast<uint4*>(out + (orow + r) * cols + c0 + v * 8) = o;
        }
    }
#else
    const int vpr = 128 * (int)sizeof(OUT_T) / 16;
    for (int i = tid; i < 256 * vpr; i += 256) {
        const int r = i / vpr, v = i % vpr;
        if (m0 + r < m) {
            const uint4 val = *reinterpret_cast<const uint4*>(reinterpret_cast<const char*>(st + r * LD) + v * 16);
            *reinterpret_cast<uint4*>(reinterpret_cast<char*>(out + (orow + r) * cols + c0) + v * 16) = val;
        }
    }
#endif
}
