// Raw launchers of Mamba-2's chunked SSD scan (ssd_scan.cu): forward and backward. No torch here; the binding
// (ssd_scan_binding.cpp) checks shapes, pads the sequence to whole chunks and allocates every buffer below.
//
// Notation per batch b, chunk c (Q steps), head h of group g = h / (heads/groups):
//   acum[l]  = sum_{r<=l} A_h dt_r                      (within the chunk)
//   M[l,s]   = (C_l . B_s) exp(acum[l]-acum[s]) dt_s     for s <= l, else 0
//   Xw[s,p]  = x[s,p] dt_s exp(acum[Q-1]-acum[s])
//   S_c      = Xw^T B                                    (the chunk's own contribution to the state at its end)
//   H_0 = 0, H_{c+1} = exp(acum_c[Q-1]) H_c + S_c        (state at each chunk's start, [P,N])
//   y[l,p]   = (M x)[l,p] + exp(acum[l]) (C H_c^T)[l,p] + D_h x[l,p]
// The chunk matrix products run as cuBLAS batched GEMMs (bf16 in, fp32 accumulate); decay, masking, the
// recurrence across chunks and the gradient reductions are small custom kernels. The backward recomputes the
// chunk intermediates (CB, M, Xw, states) instead of keeping them from the forward.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace mp::kernels {

#ifdef __CUDACC__
#define MP_SSD_HOST_DEVICE __host__ __device__
#else
#define MP_SSD_HOST_DEVICE
#endif

struct SsdShape {
  int64_t batch = 0, seqlen = 0;  // seqlen: a multiple of chunk (the binding pads)
  int64_t heads = 0, head_dim = 0, groups = 0, state = 0, chunk = 0;
  MP_SSD_HOST_DEVICE int64_t chunks() const { return seqlen / chunk; }
};

// Inputs. x, B, C are bf16 with unit inner stride and strides for batch and time (heads / groups packed:
// x head stride = head_dim, B/C group stride = state). dt float [batch, seqlen, heads] contiguous.
struct SsdInputs {
  const void* x = nullptr;
  int64_t x_stride_b = 0, x_stride_t = 0;
  const void* B = nullptr;
  int64_t B_stride_b = 0, B_stride_t = 0;
  const void* C = nullptr;
  int64_t C_stride_b = 0, C_stride_t = 0;
  const float* dt = nullptr;  // [batch, seqlen, heads]
  const float* A = nullptr;   // [heads]
  const float* D = nullptr;   // [heads]
};

// Buffers shared by forward and backward (the backward recomputes them). Sizes in elements:
struct SsdWork {
  float* acum = nullptr;       // [batch, heads, chunks, Q]
  float* CB = nullptr;         // [batch, chunks, groups, Q, Q]
  void* M = nullptr;           // bf16 [batch, chunks, heads, Q, Q]
  void* Xw = nullptr;          // bf16 [batch, seqlen, heads, P]
  float* states = nullptr;     // [batch, chunks, heads, P, N]   (S_c; the backward reuses it for dL/dH_c direct)
  void* start_states = nullptr;  // bf16 [batch, chunks, heads, P, N]   (H_c)
  float* y_off = nullptr;      // [batch, seqlen, heads, P]   C H_c^T before the exp(acum) factor
  void** gemm_pointers = nullptr;  // device array of 3 * batch * chunks * heads pointers
};

// y: float [batch, seqlen, heads, P] contiguous (written).
cudaError_t ssd_scan_forward_launch(const SsdShape& s, const SsdInputs& in, const SsdWork& w, float* y,
                                    cublasHandle_t blas, cudaStream_t stream);

// Extra buffers of the backward.
struct SsdGradWork {
  void* dy_bf16 = nullptr;      // bf16 [batch, seqlen, heads, P]
  void* dy_decayed = nullptr;   // bf16 [batch, seqlen, heads, P]   dy * exp(acum)
  void* dstates = nullptr;      // bf16 [batch, chunks, heads, P, N]   dL/dS_c
  float* dchunk_decay = nullptr;  // [batch, heads, chunks]   dL/d exp(acum_c[Q-1])
  float* dXw = nullptr;         // [batch, seqlen, heads, P]
  float* dx_intra = nullptr;    // [batch, seqlen, heads, P]   M^T dy
  float* dM = nullptr;          // [batch, chunks, heads, Q, Q]
  void* dCB = nullptr;          // bf16 [batch, chunks, groups, Q, Q]
  float* dacum = nullptr;       // [batch, heads, chunks, Q]
  float* ddt_intra = nullptr;   // [batch, heads, chunks, Q]
};

struct SsdGrads {
  void* dx = nullptr;   // bf16 [batch, seqlen, heads, P] contiguous
  float* ddt = nullptr;  // [batch, seqlen, heads]
  float* dA = nullptr;   // [heads], zeroed by the launcher
  float* dB = nullptr;   // [batch, seqlen, groups, N] contiguous
  float* dC = nullptr;   // [batch, seqlen, groups, N] contiguous
  float* dD = nullptr;   // [heads], zeroed by the launcher
};

// dy: float [batch, seqlen, heads, P] contiguous.
cudaError_t ssd_scan_backward_launch(const SsdShape& s, const SsdInputs& in, const SsdWork& w, const float* dy,
                                     const SsdGradWork& gw, const SsdGrads& grads, cublasHandle_t blas,
                                     cudaStream_t stream);

// Dynamic shared memory of the backward's per-group kernel (4 * heads_per_group * chunk floats); the binding
// keeps shapes whose need exceeds the device's opt-in limit on the ATen path. Also needed: chunk % 32 == 0 and
// head_dim % 32 == 0. A cuBLAS failure is reported as cudaErrorUnknown.
size_t ssd_scan_backward_smem_bytes(const SsdShape& s);

// The cublasStatus_t of the last failed GEMM on this thread (0 when none failed), for error messages.
int ssd_scan_last_blas_status();

}  // namespace mp::kernels
