// Mamba-2 chunked SSD scan on the GPU, forward and backward (the math and buffers: ssd_scan_cuda.h).
//
// Design: every product of two chunk-sized matrices is one cuBLAS pointer-array batched GEMM over
// (batch, chunk, head-or-group), bf16 inputs with fp32 accumulation, addressing the operands where they lie
// (x, B, C stay strided views of the conv output). Pointer arrays rather than strided batches because a head's
// slice of [B,T,H,P] is not a single stride away from the next (batch, chunk) slice. Group sums over the heads
// that share B and C become one GEMM with K = heads_per_group * P, since a group's heads are adjacent columns.
// The custom kernels do what GEMMs cannot: the in-chunk cumulative decay, the masked decay applied to C B^T,
// the short sequential recurrence across chunks, and the reductions of the backward.
//
// The ATen twin of every step (same intermediates, same order) is ssd_scan_cpu.cpp; the CPU tests check that twin
// against the model's scan and against autograd, the GPU tests check this file against the twin.
#include <cuda_bf16.h>

#include "kernels/ssd_scan_cuda.h"

namespace mp::kernels {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n, int threads = kThreads) { return unsigned((n + threads - 1) / threads); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over aligned segments of `width` lanes (a power of two <= 32); every lane gets its segment's sum. All 32
// lanes must take part (the full mask).
__device__ __forceinline__ float segment_sum(float v, int width) {
  for (int o = width >> 1; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block; every thread gets the result. `scratch` holds >= 32 floats. Ends with a barrier.
__device__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.f;
  for (int i = 0; i < warps; ++i) total += scratch[i];
  __syncthreads();
  return total;
}

// ---------------------------------------------------------------------------------------------------------------
// Batched GEMM over (batch, chunk, k) in row-major terms.

// Where one operand of the batch (b, c, k) starts: base + (b*sb + c*sc + (k/div)*sk) elements.
struct Operand {
  const void* base = nullptr;
  int elem_bytes = 2;
  int64_t sb = 0, sc = 0, sk = 0, div = 1;
  int64_t ld = 0;  // row stride (elements) of the stored row-major matrix
};

__device__ __forceinline__ void* operand_at(const Operand& o, int64_t b, int64_t c, int64_t k) {
  return (char*)o.base + (b * o.sb + c * o.sc + (k / o.div) * o.sk) * o.elem_bytes;
}

__global__ void fill_gemm_pointers_kernel(void** ptrs, Operand a, Operand b, Operand c, int64_t chunks, int64_t kdim,
                                          int64_t count) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  const int64_t k = i % kdim, bc = i / kdim, ch = bc % chunks, bb = bc / chunks;
  ptrs[i] = operand_at(a, bb, ch, k);
  ptrs[count + i] = operand_at(b, bb, ch, k);
  ptrs[2 * count + i] = operand_at(c, bb, ch, k);
}

thread_local int g_last_blas_status = 0;  // CUBLAS_STATUS_SUCCESS

struct GemmRunner {
  const SsdShape& s;
  void** ptrs;
  cublasHandle_t blas;
  cudaStream_t stream;

  // Row-major C[m,n] = beta*C + op(A)[m,k] op(B)[k,n] for every (batch, chunk, k < kdim). A and B bf16; C f32 or
  // bf16 (c_f32). cuBLAS is column-major: C^T = op(B)^T op(A)^T, so the operands swap places and the transpose
  // flags carry over unchanged.
  cudaError_t operator()(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const Operand& A,
                         const Operand& B, const Operand& C, bool c_f32, float beta, int64_t kdim) const {
    const int64_t count = s.batch * s.chunks() * kdim;
    fill_gemm_pointers_kernel<<<blocks_for(count), kThreads, 0, stream>>>(ptrs, A, B, C, s.chunks(), kdim, count);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    const float alpha = 1.f;
    const cublasStatus_t st = cublasGemmBatchedEx(
        blas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, int(n), int(m), int(k),
        &alpha, (const void* const*)(ptrs + count), CUDA_R_16BF, int(B.ld), (const void* const*)ptrs, CUDA_R_16BF,
        int(A.ld), &beta, ptrs + 2 * count, c_f32 ? CUDA_R_32F : CUDA_R_16BF, int(C.ld), int(count),
        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st == CUBLAS_STATUS_SUCCESS) return cudaSuccess;
    g_last_blas_status = int(st);
    return cudaErrorUnknown;
  }
};

// Operand layouts of the buffers and inputs (see SsdWork).
struct Layouts {
  int64_t T, H, P, G, N, Q, nc, hpg;
  explicit Layouts(const SsdShape& s)
      : T(s.seqlen), H(s.heads), P(s.head_dim), G(s.groups), N(s.state), Q(s.chunk), nc(s.chunks()),
        hpg(s.heads / s.groups) {}
  // [B,T,H,P] contiguous, one head's [Q,P] block per (b,c,h).
  Operand head_rows(const void* p, int bytes) const { return {p, bytes, T * H * P, Q * H * P, P, 1, H * P}; }
  // The same tensor, one group's heads side by side: [Q, hpg*P] per (b,c,g).
  Operand group_rows(const void* p, int bytes) const { return {p, bytes, T * H * P, Q * H * P, hpg * P, 1, H * P}; }
  // Strided input (x) with head stride P.
  Operand input_heads(const void* p, int64_t sb, int64_t st) const { return {p, 2, sb, Q * st, P, 1, st}; }
  // Strided B or C [B,T,G,N]; div = hpg when indexed by head, 1 when by group.
  Operand input_groups(const void* p, int64_t sb, int64_t st, int64_t div) const {
    return {p, 2, sb, Q * st, N, div, st};
  }
  // [B,nc,K,Q,Q] square chunk matrices (K = H or G).
  Operand square(const void* p, int bytes, int64_t K) const {
    return {p, bytes, nc * K * Q * Q, K * Q * Q, Q * Q, 1, Q};
  }
  // [B,nc,H,P,N] states: [P,N] per (b,c,h).
  Operand states(const void* p, int bytes) const { return {p, bytes, nc * H * P * N, H * P * N, P * N, 1, N}; }
  // The same, a group's heads stacked: [hpg*P, N] per (b,c,g).
  Operand group_states(const void* p, int bytes) const {
    return {p, bytes, nc * H * P * N, H * P * N, hpg * P * N, 1, N};
  }
  // [B,T,G,N] contiguous fp32 gradients: [Q,N] per (b,c,g).
  Operand group_grad(const void* p) const { return {p, 4, T * G * N, Q * G * N, N, 1, G * N}; }
};

// ---------------------------------------------------------------------------------------------------------------
// Elementwise and reduction kernels.

// acum[b,h,c,l] = sum_{r<=l} A_h dt[b, cQ+r, h]; one thread per (b, c, h).
__global__ void chunk_cumsum_kernel(SsdShape s, const float* dt, const float* A, float* acum) {
  const int64_t nc = s.chunks(), H = s.heads, Q = s.chunk;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= s.batch * nc * H) return;
  const int64_t h = i % H, c = (i / H) % nc, b = i / (H * nc);
  const float a = A[h];
  const float* d = dt + (b * s.seqlen + c * Q) * H + h;
  float* out = acum + ((b * H + h) * nc + c) * Q;
  float run = 0.f;
  for (int64_t l = 0; l < Q; ++l) {
    run += a * d[l * H];
    out[l] = run;
  }
}

// Loads one (b, c, h)'s acum and dt into shared memory (2*Q floats at `sh`).
__device__ void load_chunk_decay(const SsdShape& s, const float* acum, const float* dt, int64_t b, int64_t c,
                                 int64_t h, float* sh) {
  const int64_t Q = s.chunk;
  for (int64_t l = threadIdx.x; l < Q; l += blockDim.x) {
    sh[l] = acum[((b * s.heads + h) * s.chunks() + c) * Q + l];
    sh[Q + l] = dt[(b * s.seqlen + c * Q + l) * s.heads + h];
  }
  __syncthreads();
}

// M[b,c,h,l,s] = CB[b,c,g,l,s] exp(acum[l]-acum[s]) dt[s] for s <= l, else 0; one block per (b, c, h).
__global__ void build_decayed_cb_kernel(SsdShape s, const float* CB, const float* acum, const float* dt, bf16* M) {
  extern __shared__ float sh[];
  const int64_t H = s.heads, Q = s.chunk, nc = s.chunks(), hpg = s.heads / s.groups;
  const int64_t h = blockIdx.x % H, c = (blockIdx.x / H) % nc, b = blockIdx.x / (H * nc);
  load_chunk_decay(s, acum, dt, b, c, h, sh);
  const float* cb = CB + ((b * nc + c) * s.groups + h / hpg) * Q * Q;
  bf16* m = M + ((b * nc + c) * H + h) * Q * Q;
  const int Qi = int(Q);
  for (int e = threadIdx.x; e < Qi * Qi; e += blockDim.x) {
    const int l = e / Qi, j = e - l * Qi;
    const float v = j <= l ? cb[e] * __expf(sh[l] - sh[j]) * sh[Qi + j] : 0.f;
    m[e] = __float2bfloat16(v);
  }
}

// The [B,T,H,P] elementwise kernels run one block per (b, t) row whose threads stride over the row's H*P columns
// (column j = h*P + p): the row split is computed once per thread and the column split is a 32-bit division, which
// keeps 64-bit integer division (tens of instructions) out of the per-element path.
struct HeadRow {
  int64_t row, b, t, c, l;
  __device__ explicit HeadRow(const SsdShape& s) {
    const unsigned r = blockIdx.x, T = unsigned(s.seqlen), Q = unsigned(s.chunk);
    row = r;
    b = r / T;
    t = r % T;
    c = unsigned(t) / Q;
    l = unsigned(t) % Q;
  }
  __device__ int64_t acum_base(const SsdShape& s, int h) const {
    return ((b * s.heads + h) * s.chunks() + c) * s.chunk;
  }
  __device__ float x_at(const SsdInputs& in, int j) const {
    return __bfloat162float(static_cast<const bf16*>(in.x)[b * in.x_stride_b + t * in.x_stride_t + j]);
  }
};

// Xw = x dt exp(acum[Q-1] - acum[l]) as bf16 [B,T,H,P].
__global__ void weighted_x_kernel(SsdShape s, SsdInputs in, const float* acum, bf16* Xw) {
  const HeadRow r(s);
  const int HP = int(s.heads * s.head_dim), P = int(s.head_dim);
  for (int j = threadIdx.x; j < HP; j += blockDim.x) {
    const int h = j / P;
    const float* ac = acum + r.acum_base(s, h);
    const float dt = in.dt[r.row * s.heads + h];
    Xw[r.row * HP + j] = __float2bfloat16(r.x_at(in, j) * dt * __expf(ac[s.chunk - 1] - ac[r.l]));
  }
}

// H_c (start of chunk c) for every (b, h, p, n): H_0 = 0, H_{c+1} = exp(acum_c[Q-1]) H_c + S_c.
__global__ void state_recurrence_kernel(SsdShape s, const float* acum, const float* S, bf16* start) {
  const int64_t PN = s.head_dim * s.state, H = s.heads, nc = s.chunks(), Q = s.chunk;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= s.batch * H * PN) return;
  const int64_t e = i % PN, h = (i / PN) % H, b = i / (PN * H);
  float state = 0.f;
  for (int64_t c = 0; c < nc; ++c) {
    const int64_t off = ((b * nc + c) * H + h) * PN + e;
    start[off] = __float2bfloat16(state);
    state = __expf(acum[((b * H + h) * nc + c) * Q + Q - 1]) * state + S[off];
  }
}

// y = y_diag (already in y) + exp(acum[l]) y_off + D x.
__global__ void output_epilogue_kernel(SsdShape s, SsdInputs in, const float* acum, const float* y_off, float* y) {
  const HeadRow r(s);
  const int HP = int(s.heads * s.head_dim), P = int(s.head_dim);
  for (int j = threadIdx.x; j < HP; j += blockDim.x) {
    const int h = j / P;
    const int64_t i = r.row * HP + j;
    y[i] += __expf(acum[r.acum_base(s, h) + r.l]) * y_off[i] + in.D[h] * r.x_at(in, j);
  }
}

// dy as bf16, and dy exp(acum[l]) as bf16 (the GEMM operands of the backward).
__global__ void grad_output_prep_kernel(SsdShape s, const float* dy, const float* acum, bf16* dy_bf16,
                                        bf16* dy_decayed) {
  const HeadRow r(s);
  const int HP = int(s.heads * s.head_dim), P = int(s.head_dim);
  for (int j = threadIdx.x; j < HP; j += blockDim.x) {
    const int64_t i = r.row * HP + j;
    const float g = dy[i];
    dy_bf16[i] = __float2bfloat16(g);
    dy_decayed[i] = __float2bfloat16(g * __expf(acum[r.acum_base(s, j / P) + r.l]));
  }
}

// Backward of the recurrence, chunks in reverse. `direct` holds dL/dH_c from the outputs; for every chunk:
//   dS_c = G_{c+1},  dL/d exp(acum_c[Q-1]) = sum(G_{c+1} * H_c),  G_c = direct_c + exp(acum_c[Q-1]) G_{c+1}
// with G_{chunks} = 0 (the final state is not an output). One block covers kThreads (p, n) of one (b, h).
__global__ void state_recurrence_backward_kernel(SsdShape s, const float* acum, const float* direct,
                                                 const bf16* start, bf16* dstates, float* dchunk_decay) {
  __shared__ float scratch[32];
  const int64_t PN = s.head_dim * s.state, H = s.heads, nc = s.chunks(), Q = s.chunk;
  const int64_t tiles = (PN + blockDim.x - 1) / blockDim.x;
  const int64_t tile = blockIdx.x % tiles, h = (blockIdx.x / tiles) % H, b = blockIdx.x / (tiles * H);
  const int64_t e = tile * blockDim.x + threadIdx.x;
  const bool active = e < PN;
  float carry = 0.f;
  for (int64_t c = nc - 1; c >= 0; --c) {
    const int64_t off = ((b * nc + c) * H + h) * PN + e;
    float part = 0.f;
    if (active) {
      dstates[off] = __float2bfloat16(carry);
      part = carry * __bfloat162float(start[off]);
    }
    const float total = block_sum(part, scratch);
    const int64_t decay_idx = (b * H + h) * nc + c;
    if (threadIdx.x == 0) atomicAdd(&dchunk_decay[decay_idx], total);
    if (active) carry = direct[off] + __expf(acum[decay_idx * Q + Q - 1]) * carry;
  }
}

// Backward of M = (C B^T) * decay * dt within each chunk, one block per (b, c, g), heads of the group inner:
//   dCB[l,s]      = sum_{h in g} dM_h[l,s] L_h[l,s] dt_h[s]            (bf16, the GEMM operand for dB, dC)
//   dacum_h[l]   += R_h[l,s], dacum_h[s] -= R_h[l,s]  with R = dM * M (the decay's exponent gradient)
//   ddt_h[s]     += dM_h[l,s] CB[l,s] L_h[l,s]
// A warp owns a row l (lanes over s), so the row sums are warp reductions; column sums are shared atomics on
// distinct addresses. Shared memory: 4 arrays of hpg * Q floats.
__global__ void decayed_cb_backward_kernel(SsdShape s, const float* CB, const float* dM, const float* acum,
                                           const float* dt, bf16* dCB, float* dacum, float* ddt_intra) {
  extern __shared__ float sh[];
  const int64_t G = s.groups, Q = s.chunk, nc = s.chunks(), H = s.heads, hpg = s.heads / s.groups;
  const int64_t g = blockIdx.x % G, c = (blockIdx.x / G) % nc, b = blockIdx.x / (G * nc);
  float* ac = sh;
  float* dts = sh + hpg * Q;
  float* dac = sh + 2 * hpg * Q;
  float* ddt = sh + 3 * hpg * Q;
  for (int64_t i = threadIdx.x; i < hpg * Q; i += blockDim.x) {
    const int64_t j = i / Q, l = i % Q, h = g * hpg + j;
    ac[i] = acum[((b * H + h) * nc + c) * Q + l];
    dts[i] = dt[(b * s.seqlen + c * Q + l) * H + h];
    dac[i] = 0.f;
    ddt[i] = 0.f;
  }
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const float* cb = CB + ((b * nc + c) * G + g) * Q * Q;
  bf16* dcb_out = dCB + ((b * nc + c) * G + g) * Q * Q;
  for (int64_t l = warp; l < Q; l += warps) {
    for (int64_t s0 = 0; s0 < Q; s0 += 32) {
      const int64_t j0 = s0 + lane;  // the column s
      if (s0 > l) {  // the whole 32-column strip is above the diagonal (warp-uniform)
        dcb_out[l * Q + j0] = __float2bfloat16(0.f);
        continue;
      }
      const bool valid = j0 <= l;
      const float cbv = valid ? cb[l * Q + j0] : 0.f;
      float dcb = 0.f;
      for (int64_t j = 0; j < hpg; ++j) {
        const int64_t h = g * hpg + j;
        const float dm = valid ? dM[(((b * nc + c) * H + h) * Q + l) * Q + j0] : 0.f;
        const float L = valid ? __expf(ac[j * Q + l] - ac[j * Q + j0]) : 0.f;
        const float dmL = dm * L;
        const float dtv = dts[j * Q + j0];
        dcb += dmL * dtv;
        const float ddt_term = dmL * cbv;
        const float R = (valid && j0 != l) ? ddt_term * dtv : 0.f;  // the diagonal's R cancels itself
        if (valid) {
          atomicAdd(&ddt[j * Q + j0], ddt_term);
          atomicAdd(&dac[j * Q + j0], -R);
        }
        const float row = warp_sum(R);
        if (lane == 0) atomicAdd(&dac[j * Q + l], row);
      }
      dcb_out[l * Q + j0] = __float2bfloat16(dcb);
    }
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < hpg * Q; i += blockDim.x) {
    const int64_t j = i / Q, l = i % Q, h = g * hpg + j;
    const int64_t off = ((b * H + h) * nc + c) * Q + l;
    dacum[off] = dac[i];
    ddt_intra[off] = ddt[i];
  }
}

// Everything per position of one (b, c, h): dx, ddt, and the dA, dD contributions. The row sums over p run as
// shuffles over segments of `seg` lanes: seg is the largest power of two <= 32 dividing P (16 for the 12B's
// head_dim 80), so the seg consecutive elements of an aligned segment share one row l; Q * P is a multiple of 32
// (Q is), so whole warps enter and leave the loop together. Shared memory: 6 arrays of Q floats.
__global__ void final_grad_kernel(SsdShape s, SsdInputs in, const float* acum, const float* dy, const float* y_off,
                                  const float* dXw, const float* dx_intra, const float* dacum_intra,
                                  const float* ddt_intra, const float* dchunk_decay, bf16* dx, float* ddt, float* dA,
                                  float* dD) {
  extern __shared__ float sh[];
  __shared__ float scratch[32];
  const int64_t H = s.heads, Q = s.chunk, nc = s.chunks(), P = s.head_dim;
  const int64_t h = blockIdx.x % H, c = (blockIdx.x / H) % nc, b = blockIdx.x / (H * nc);
  float* ac = sh;             // acum[l]
  float* dtl = sh + Q;        // dt[l]
  float* row_du = sh + 2 * Q;   // sum_p x dXw
  float* row_dac = sh + 3 * Q;  // sum_p dy exp(acum) y_off
  float* dac = sh + 4 * Q;      // total d acum[l], then reverse-cumsummed into d a[l]
  float* du_u = sh + 5 * Q;     // row_du * u, summed into the chunk end
  for (int64_t l = threadIdx.x; l < Q; l += blockDim.x) {
    row_du[l] = 0.f;
    row_dac[l] = 0.f;
  }
  load_chunk_decay(s, acum, in.dt, b, c, h, sh);  // ends with a barrier
  const float ac_end = ac[Q - 1], Dh = in.D[h];
  const bf16* x = static_cast<const bf16*>(in.x);
  float dD_part = 0.f;
  const int lane = threadIdx.x & 31;
  const int Pi = int(P);
  const int lowest_bit = Pi & -Pi;
  const int seg = lowest_bit < 32 ? lowest_bit : 32;
  for (int e = threadIdx.x; e < int(Q) * Pi; e += blockDim.x) {
    const int l = e / Pi, p = e - l * Pi;
    const int64_t t = c * Q + l;
    const int64_t idx = ((b * s.seqlen + t) * H + h) * P + p;
    const float xv = __bfloat162float(x[b * in.x_stride_b + t * in.x_stride_t + h * P + p]);
    const float g = dy[idx], dxw = dXw[idx];
    const float u = dtl[l] * __expf(ac_end - ac[l]);
    dx[idx] = __float2bfloat16(Dh * g + u * dxw + dx_intra[idx]);
    dD_part += g * xv;
    const float du = segment_sum(xv * dxw, seg);
    const float dyoff = segment_sum(g * __expf(ac[l]) * y_off[idx], seg);
    if ((lane & (seg - 1)) == 0) {
      atomicAdd(&row_du[l], du);
      atomicAdd(&row_dac[l], dyoff);
    }
  }
  const float dD_total = block_sum(dD_part, scratch);  // also the barrier before reading row_du / row_dac
  if (threadIdx.x == 0) atomicAdd(&dD[h], dD_total);
  const int64_t row = ((b * H + h) * nc + c) * Q;
  for (int64_t l = threadIdx.x; l < Q; l += blockDim.x) {
    const float w = __expf(ac_end - ac[l]);
    const float u = dtl[l] * w;
    dac[l] = dacum_intra[row + l] + row_dac[l] - row_du[l] * u;
    du_u[l] = row_du[l] * u;
    // ddt so far (intra + state terms); the decay term A * da is added after the reverse cumsum.
    row_dac[l] = ddt_intra[row + l] + row_du[l] * w;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float end = dchunk_decay[(b * H + h) * nc + c] * __expf(ac_end);
    for (int64_t l = 0; l < Q; ++l) end += du_u[l];
    dac[Q - 1] += end;
    float running = 0.f;
    for (int64_t l = Q - 1; l >= 0; --l) {
      running += dac[l];
      dac[l] = running;
    }
  }
  __syncthreads();
  const float A = in.A[h];
  float dA_part = 0.f;
  for (int64_t l = threadIdx.x; l < Q; l += blockDim.x) {
    ddt[(b * s.seqlen + c * Q + l) * H + h] = row_dac[l] + A * dac[l];
    dA_part += dtl[l] * dac[l];
  }
  const float dA_total = block_sum(dA_part, scratch);
  if (threadIdx.x == 0) atomicAdd(&dA[h], dA_total);
}

#define MP_SSD_CHECK(expr)                \
  do {                                    \
    const cudaError_t err_ = (expr);      \
    if (err_ != cudaSuccess) return err_; \
  } while (0)

// One block per (b, t) row of a [B,T,H,P] tensor (HeadRow).
unsigned elementwise_blocks(const SsdShape& s) { return unsigned(s.batch * s.seqlen); }

// The forward's intermediates: acum, CB, M, Xw, chunk states S, start states H. Shared by both directions.
cudaError_t recompute_chunks(const SsdShape& s, const SsdInputs& in, const SsdWork& w, const GemmRunner& gemm) {
  const Layouts L(s);
  const int64_t Q = s.chunk, P = s.head_dim, N = s.state;
  chunk_cumsum_kernel<<<blocks_for(s.batch * s.chunks() * s.heads), kThreads, 0, gemm.stream>>>(s, in.dt, in.A,
                                                                                                 w.acum);
  MP_SSD_CHECK(cudaGetLastError());
  // CB = C B^T per (b, c, g).
  MP_SSD_CHECK(gemm(false, true, Q, Q, N, L.input_groups(in.C, in.C_stride_b, in.C_stride_t, 1),
                    L.input_groups(in.B, in.B_stride_b, in.B_stride_t, 1), L.square(w.CB, 4, s.groups), true, 0.f,
                    s.groups));
  const unsigned bch = unsigned(s.batch * s.chunks() * s.heads);
  build_decayed_cb_kernel<<<bch, kThreads, 2 * Q * sizeof(float), gemm.stream>>>(s, w.CB, w.acum, in.dt,
                                                                                 static_cast<bf16*>(w.M));
  MP_SSD_CHECK(cudaGetLastError());
  weighted_x_kernel<<<elementwise_blocks(s), kThreads, 0, gemm.stream>>>(s, in, w.acum, static_cast<bf16*>(w.Xw));
  MP_SSD_CHECK(cudaGetLastError());
  // S = Xw^T B per (b, c, h).
  MP_SSD_CHECK(gemm(true, false, P, N, Q, L.head_rows(w.Xw, 2),
                    L.input_groups(in.B, in.B_stride_b, in.B_stride_t, L.hpg), L.states(w.states, 4), true, 0.f,
                    s.heads));
  state_recurrence_kernel<<<blocks_for(s.batch * s.heads * P * N), kThreads, 0, gemm.stream>>>(
      s, w.acum, w.states, static_cast<bf16*>(w.start_states));
  MP_SSD_CHECK(cudaGetLastError());
  // y_off = C H^T per (b, c, h) (before the exp(acum) factor).
  return gemm(false, true, Q, P, N, L.input_groups(in.C, in.C_stride_b, in.C_stride_t, L.hpg),
              L.states(w.start_states, 2), L.head_rows(w.y_off, 4), true, 0.f, s.heads);
}

}  // namespace

cudaError_t ssd_scan_forward_launch(const SsdShape& s, const SsdInputs& in, const SsdWork& w, float* y,
                                    cublasHandle_t blas, cudaStream_t stream) {
  if (cublasSetStream(blas, stream) != CUBLAS_STATUS_SUCCESS) return cudaErrorUnknown;
  const GemmRunner gemm{s, w.gemm_pointers, blas, stream};
  const Layouts L(s);
  MP_SSD_CHECK(recompute_chunks(s, in, w, gemm));
  // y_diag = M x per (b, c, h), straight into y.
  MP_SSD_CHECK(gemm(false, false, s.chunk, s.head_dim, s.chunk, L.square(w.M, 2, s.heads),
                    L.input_heads(in.x, in.x_stride_b, in.x_stride_t), L.head_rows(y, 4), true, 0.f, s.heads));
  output_epilogue_kernel<<<elementwise_blocks(s), kThreads, 0, stream>>>(s, in, w.acum, w.y_off, y);
  return cudaGetLastError();
}

cudaError_t ssd_scan_backward_launch(const SsdShape& s, const SsdInputs& in, const SsdWork& w, const float* dy,
                                     const SsdGradWork& gw, const SsdGrads& grads, cublasHandle_t blas,
                                     cudaStream_t stream) {
  if (cublasSetStream(blas, stream) != CUBLAS_STATUS_SUCCESS) return cudaErrorUnknown;
  const GemmRunner gemm{s, w.gemm_pointers, blas, stream};
  const Layouts L(s);
  const int64_t Q = s.chunk, P = s.head_dim, N = s.state, H = s.heads, G = s.groups, nc = s.chunks();
  MP_SSD_CHECK(recompute_chunks(s, in, w, gemm));
  grad_output_prep_kernel<<<elementwise_blocks(s), kThreads, 0, stream>>>(
      s, dy, w.acum, static_cast<bf16*>(gw.dy_bf16), static_cast<bf16*>(gw.dy_decayed));
  MP_SSD_CHECK(cudaGetLastError());
  const Operand x_op = L.input_heads(in.x, in.x_stride_b, in.x_stride_t);
  const Operand B_by_group = L.input_groups(in.B, in.B_stride_b, in.B_stride_t, 1);
  const Operand C_by_group = L.input_groups(in.C, in.C_stride_b, in.C_stride_t, 1);
  const Operand B_by_head = L.input_groups(in.B, in.B_stride_b, in.B_stride_t, L.hpg);
  const Operand C_by_head = L.input_groups(in.C, in.C_stride_b, in.C_stride_t, L.hpg);

  // Off-diagonal (state) term: dC = sum_h (dy e) H_h, dH_direct = (dy e)^T C.
  MP_SSD_CHECK(gemm(false, false, Q, N, L.hpg * P, L.group_rows(gw.dy_decayed, 2), L.group_states(w.start_states, 2),
                    L.group_grad(grads.dC), true, 0.f, G));
  MP_SSD_CHECK(gemm(true, false, P, N, Q, L.head_rows(gw.dy_decayed, 2), C_by_head, L.states(w.states, 4), true, 0.f,
                    H));
  // Across chunks.
  MP_SSD_CHECK(cudaMemsetAsync(gw.dchunk_decay, 0, sizeof(float) * s.batch * H * nc, stream));
  {
    const int64_t tiles = (P * N + kThreads - 1) / kThreads;
    state_recurrence_backward_kernel<<<unsigned(s.batch * H * tiles), kThreads, 0, stream>>>(
        s, w.acum, w.states, static_cast<const bf16*>(w.start_states), static_cast<bf16*>(gw.dstates),
        gw.dchunk_decay);
    MP_SSD_CHECK(cudaGetLastError());
  }
  // Chunk states S = Xw^T B: dXw = B dS^T, dB = sum_h Xw_h dS_h.
  MP_SSD_CHECK(gemm(false, true, Q, P, N, B_by_head, L.states(gw.dstates, 2), L.head_rows(gw.dXw, 4), true, 0.f, H));
  MP_SSD_CHECK(gemm(false, false, Q, N, L.hpg * P, L.group_rows(w.Xw, 2), L.group_states(gw.dstates, 2),
                    L.group_grad(grads.dB), true, 0.f, G));
  // Within chunks, y_diag = M x: dx_intra = M^T dy, dM = dy x^T.
  MP_SSD_CHECK(gemm(true, false, Q, P, Q, L.square(w.M, 2, H), L.head_rows(gw.dy_bf16, 2), L.head_rows(gw.dx_intra, 4),
                    true, 0.f, H));
  MP_SSD_CHECK(gemm(false, true, Q, Q, P, L.head_rows(gw.dy_bf16, 2), x_op, L.square(gw.dM, 4, H), true, 0.f, H));
  {
    const size_t smem = 4 * size_t(L.hpg) * Q * sizeof(float);
    if (smem > 48 * 1024)
      MP_SSD_CHECK(cudaFuncSetAttribute(decayed_cb_backward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        int(smem)));
    decayed_cb_backward_kernel<<<unsigned(s.batch * nc * G), kThreads, smem, stream>>>(
        s, w.CB, gw.dM, w.acum, in.dt, static_cast<bf16*>(gw.dCB), gw.dacum, gw.ddt_intra);
    MP_SSD_CHECK(cudaGetLastError());
  }
  // CB = C B^T: dC += dCB B, dB += dCB^T C.
  MP_SSD_CHECK(gemm(false, false, Q, N, Q, L.square(gw.dCB, 2, G), B_by_group, L.group_grad(grads.dC), true, 1.f, G));
  MP_SSD_CHECK(gemm(true, false, Q, N, Q, L.square(gw.dCB, 2, G), C_by_group, L.group_grad(grads.dB), true, 1.f, G));
  // Per position: dx, ddt, dA, dD.
  MP_SSD_CHECK(cudaMemsetAsync(grads.dA, 0, sizeof(float) * H, stream));
  MP_SSD_CHECK(cudaMemsetAsync(grads.dD, 0, sizeof(float) * H, stream));
  final_grad_kernel<<<unsigned(s.batch * nc * H), 128, 6 * Q * sizeof(float), stream>>>(
      s, in, w.acum, dy, w.y_off, gw.dXw, gw.dx_intra, gw.dacum, gw.ddt_intra, gw.dchunk_decay,
      static_cast<bf16*>(grads.dx), grads.ddt, grads.dA, grads.dD);
  return cudaGetLastError();
}

int ssd_scan_last_blas_status() { return g_last_blas_status; }

size_t ssd_scan_backward_smem_bytes(const SsdShape& s) {
  return 4 * size_t(s.heads / s.groups) * size_t(s.chunk) * sizeof(float);
}

}  // namespace mp::kernels
