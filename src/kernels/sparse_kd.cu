// Sparse-teacher KD rows (issue 28): dense student logits against a teacher stored as top-k ids, logits and the
// full row's log-sum-exp. Math in include/minipuzzle/sparse_kd.h. One block per row:
//   1. the row's k ids become a bitmask in shared memory (vocab / 32 words);
//   2. one pass over the student row: online (max, sum of exp) of s / T over all entries and over the entries
//      outside the mask, and of s at T = 1 when CE needs it at another temperature;
//   3. a pass over the k teacher entries: sum p (log p - log q), and logsumexp of t / T over them (the tail mass);
//   4. the gradient: entries outside the mask in a second pass over the row, the k entries from the teacher list
//      (ids distinct, so every element is written exactly once, no read-modify-write).
// Reductions combine (max, sum) pairs across the block; all math in float32.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/sparse_kd_cuda.h"

namespace mp::kernels {
namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ float load(const T* p, int64_t i);
template <>
__device__ __forceinline__ float load<float>(const float* p, int64_t i) { return p[i]; }
template <>
__device__ __forceinline__ float load<__half>(const __half* p, int64_t i) { return __half2float(p[i]); }
template <>
__device__ __forceinline__ float load<__nv_bfloat16>(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }

template <typename T>
__device__ __forceinline__ void store(T* p, int64_t i, float v);
template <>
__device__ __forceinline__ void store<float>(float* p, int64_t i, float v) { p[i] = v; }
template <>
__device__ __forceinline__ void store<__half>(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }
template <>
__device__ __forceinline__ void store<__nv_bfloat16>(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }

// Online log-sum-exp state: value = m + log(s).
struct Lse {
  float m, s;
  __device__ void add(float x) {
    if (x == -INFINITY) return;
    if (x > m) {
      s = s * __expf(m - x) + 1.f;
      m = x;
    } else {
      s += __expf(x - m);
    }
  }
  __device__ void merge(float om, float os) {
    if (om == -INFINITY) return;
    if (m == -INFINITY) {
      m = om;
      s = os;
      return;
    }
    const float nm = fmaxf(m, om);
    s = s * __expf(m - nm) + os * __expf(om - nm);
    m = nm;
  }
  __device__ float value() const { return m == -INFINITY ? -INFINITY : m + __logf(s); }
};

// Block-wide reductions; every thread gets the same result. `scratch` holds 2 * (kThreads / 32) floats.
__device__ Lse block_lse(Lse x, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) {
    const float om = __shfl_xor_sync(0xffffffffu, x.m, o), os = __shfl_xor_sync(0xffffffffu, x.s, o);
    x.merge(om, os);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) {
    scratch[2 * warp] = x.m;
    scratch[2 * warp + 1] = x.s;
  }
  __syncthreads();
  Lse r{-INFINITY, 0.f};
  for (int w = 0; w < kThreads / 32; ++w) r.merge(scratch[2 * w], scratch[2 * w + 1]);
  return r;
}

__device__ float block_sum(float x, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  float r = 0.f;
  for (int w = 0; w < kThreads / 32; ++w) r += scratch[w];
  return r;
}

template <typename T, typename Id>
__global__ void __launch_bounds__(kThreads) sparse_kd_rows_kernel(SparseKdParams p) {
  extern __shared__ uint32_t mask[];
  __shared__ float scratch[2 * (kThreads / 32)];
  const int64_t row = blockIdx.x;
  const int64_t V = p.vocab, K = p.k;
  const T* s = static_cast<const T*>(p.student) + row * p.student_stride;
  T* g = p.grad ? static_cast<T*>(p.grad) + row * p.grad_stride : nullptr;
  const Id* ids = static_cast<const Id*>(p.teacher_ids) + row * K;
  const float* tl = p.teacher_logits + row * K;
  const int64_t label = p.labels ? p.labels[row] : -1;
  const bool valid = !p.labels || label != p.ignore_index;
  if (!valid) {
    if (threadIdx.x == 0) p.row_loss[row] = 0.f;
    if (g)
      for (int64_t j = threadIdx.x; j < V; j += kThreads) store<T>(g, j, 0.f);
    return;
  }
  const bool has_ce = p.labels && p.ce_weight != 0.f;
  const float T_ = p.temperature, inv_t = 1.f / T_;
  const bool ce_separate = has_ce && T_ != 1.f;

  const int64_t words = (V + 31) / 32;
  for (int64_t w = threadIdx.x; w < words; w += kThreads) mask[w] = 0u;
  __syncthreads();
  for (int64_t i = threadIdx.x; i < K; i += kThreads) {
    const int64_t id = int64_t(ids[i]);
    atomicOr(&mask[id >> 5], 1u << (id & 31));
  }
  __syncthreads();

  // Pass 1: statistics of the student row.
  Lse all{-INFINITY, 0.f}, tail{-INFINITY, 0.f}, plain{-INFINITY, 0.f};
  for (int64_t j = threadIdx.x; j < V; j += kThreads) {
    const float z = load<T>(s, j), x = z * inv_t;
    all.add(x);
    if (!((mask[j >> 5] >> (j & 31)) & 1u)) tail.add(x);
    if (ce_separate) plain.add(z);
  }
  const float lse_all = block_lse(all, scratch).value();
  const float lse_tail = block_lse(tail, scratch).value();  // -inf when K covers the vocabulary
  const float lse_plain = ce_separate ? block_lse(plain, scratch).value() : lse_all;

  // The teacher's k entries.
  const float lse_t = p.teacher_lse[row];
  float kl = 0.f;
  Lse top{-INFINITY, 0.f};
  for (int64_t i = threadIdx.x; i < K; i += kThreads) {
    const float tz = tl[i] * inv_t;
    top.add(tz);
    const float log_p = tz - lse_t, pi = __expf(log_p);
    const float log_q = load<T>(s, int64_t(ids[i])) * inv_t - lse_all;
    if (pi > 0.f) kl += pi * (log_p - log_q);
  }
  kl = block_sum(kl, scratch);
  const float lse_top = block_lse(top, scratch).value();
  const float p_tail = fmaxf(0.f, -expm1f(lse_top - lse_t));
  const bool tail_term = p_tail > 0.f && lse_tail != -INFINITY;
  if (tail_term) kl += p_tail * (__logf(p_tail) - (lse_tail - lse_all));
  if (threadIdx.x == 0) {
    float loss = p.kd_weight * T_ * T_ * kl;
    if (has_ce) {
      if (label < 0 || label >= V)
        loss = NAN;  // no host sync on the GPU: an out-of-range label makes the loss NaN (kd.h)
      else
        loss += p.ce_weight * (lse_plain - load<T>(s, label));
    }
    p.row_loss[row] = loss;
  }
  if (!g) return;

  // Pass 2: the gradient. Outside K: kd_weight*T*(q - p_tail*q/q_tail) (+ CE); the K entries below. g may be the
  // student row itself (linear_sparse_kd): every read of s above is done (the barrier) before any write; below, an
  // element outside K is read and written by one thread, and the K entries are not written until their own loop.
  __syncthreads();
  const float scale = *p.grad_scale, kd = scale * p.kd_weight * T_, ce = scale * p.ce_weight;
  const float tail_coef = tail_term ? p_tail : 0.f;
  for (int64_t j = threadIdx.x; j < V; j += kThreads) {
    if ((mask[j >> 5] >> (j & 31)) & 1u) continue;
    const float z = load<T>(s, j), x = z * inv_t;
    float d = kd * (__expf(x - lse_all) - tail_coef * __expf(x - lse_tail));
    if (has_ce) d += ce * ((ce_separate ? __expf(z - lse_plain) : __expf(x - lse_all)) - (j == label ? 1.f : 0.f));
    store<T>(g, j, d);
  }
  for (int64_t i = threadIdx.x; i < K; i += kThreads) {
    const int64_t j = int64_t(ids[i]);
    const float z = load<T>(s, j), x = z * inv_t;
    const float pi = __expf(tl[i] * inv_t - lse_t);
    float d = kd * (__expf(x - lse_all) - pi);
    if (has_ce) d += ce * ((ce_separate ? __expf(z - lse_plain) : __expf(x - lse_all)) - (j == label ? 1.f : 0.f));
    store<T>(g, j, d);
  }
}

template <typename T, typename Id>
cudaError_t launch_typed(const SparseKdParams& p, cudaStream_t stream) {
  const size_t smem = size_t((p.vocab + 31) / 32) * sizeof(uint32_t);
  auto kernel = sparse_kd_rows_kernel<T, Id>;
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
  }
  kernel<<<dim3(unsigned(p.rows)), dim3(kThreads), smem, stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_ids(const SparseKdParams& p, cudaStream_t stream) {
  return p.ids_int64 ? launch_typed<T, int64_t>(p, stream) : launch_typed<T, int32_t>(p, stream);
}

}  // namespace

cudaError_t sparse_kd_rows_launch(const SparseKdParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  if (p.rows > 0x7fffffff) return cudaErrorInvalidValue;
  switch (p.dtype) {
    case KdDtype::f32: return launch_ids<float>(p, stream);
    case KdDtype::f16: return launch_ids<__half>(p, stream);
    case KdDtype::bf16: return launch_ids<__nv_bfloat16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace mp::kernels
