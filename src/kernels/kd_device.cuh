// Device helpers shared by the KD row kernels (kd_loss.cu, kd_loss_tma.cu) and the gradient scaling
// (kd_scale_grad.cu): 16-byte vectors of logits <-> floats, vector stores, and block/cluster reductions that give
// every thread bitwise the same result.
// CUDA only (included from .cu files); no torch.
#pragma once
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

namespace mp::kernels::kd_device {

namespace cg = cooperative_groups;

// 16-byte vectors of logits <-> floats.
template <typename T>
struct Io;

template <>
struct Io<float> {
  static constexpr int width = 4;
  __device__ static float to_float(float x) { return x; }
  __device__ static float from_float(float x) { return x; }
  __device__ static void unpack(const uint4& v, float* out) {
    out[0] = __uint_as_float(v.x);
    out[1] = __uint_as_float(v.y);
    out[2] = __uint_as_float(v.z);
    out[3] = __uint_as_float(v.w);
  }
  __device__ static uint4 pack(const float* in) {
    return make_uint4(__float_as_uint(in[0]), __float_as_uint(in[1]), __float_as_uint(in[2]), __float_as_uint(in[3]));
  }
};

template <typename Half, typename Half2>
struct Io16 {
  static constexpr int width = 8;
  union Vec {
    uint4 raw;
    Half2 pair[4];
  };
  __device__ static void unpack(const uint4& v, float* out) {
    Vec u;
    u.raw = v;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float2 f = to_float2(u.pair[i]);
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    }
  }
  __device__ static uint4 pack(const float* in) {
    Vec u;
#pragma unroll
    for (int i = 0; i < 4; ++i) u.pair[i] = from_float2(in[2 * i], in[2 * i + 1]);
    return u.raw;
  }
  __device__ static float2 to_float2(const Half2& h);
  __device__ static Half2 from_float2(float a, float b);
};

template <>
struct Io<__nv_bfloat16> : Io16<__nv_bfloat16, __nv_bfloat162> {
  __device__ static float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ static __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
  // A bf16 is the high half of its float: one shift or mask per element (the generic unpack spends 1.5).
  __device__ static void unpack(const uint4& v, float* out) {
    const unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      out[2 * i] = __uint_as_float(w[i] << 16);
      out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  }
};
template <>
inline __device__ float2 Io16<__nv_bfloat16, __nv_bfloat162>::to_float2(const __nv_bfloat162& h) {
  return __bfloat1622float2(h);
}
template <>
inline __device__ __nv_bfloat162 Io16<__nv_bfloat16, __nv_bfloat162>::from_float2(float a, float b) {
  return __floats2bfloat162_rn(a, b);
}

template <>
struct Io<__half> : Io16<__half, __half2> {
  __device__ static float to_float(__half x) { return __half2float(x); }
  __device__ static __half from_float(float x) { return __float2half_rn(x); }
};
template <>
inline __device__ float2 Io16<__half, __half2>::to_float2(const __half2& h) {
  return __half22float2(h);
}
template <>
inline __device__ __half2 Io16<__half, __half2>::from_float2(float a, float b) {
  return __floats2half2_rn(a, b);
}

__device__ inline bool is_aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <typename T>
__device__ inline void store_vector(T* dst, int64_t e, int64_t count, bool vector_ok, const float* values) {
  constexpr int W = Io<T>::width;
  if (vector_ok && e + W <= count) {
    // Streaming store: the gradient is not read again by this kernel, keep L2 for the loads.
    __stcs(reinterpret_cast<uint4*>(dst + e), Io<T>::pack(values));
  } else {
#pragma unroll
    for (int k = 0; k < W; ++k)
      if (e + k < count) dst[e + k] = Io<T>::from_float(values[k]);
  }
}

template <bool IS_MAX>
__device__ inline float combine(float a, float b) {
  return IS_MAX ? fmaxf(a, b) : a + b;
}

// Running maxima of the raw logits over 16-byte vectors: packed pairs for 16-bit types (max is exact, no
// conversion needed; NaN handling as fmaxf: the other operand wins).
template <typename T>
struct VectorMax {
  float m = -INFINITY;
  __device__ void add(const uint4& v) {
    m = fmaxf(m, fmaxf(fmaxf(__uint_as_float(v.x), __uint_as_float(v.y)), fmaxf(__uint_as_float(v.z), __uint_as_float(v.w))));
  }
  __device__ float value() const { return m; }
};
template <typename Half, typename Half2>
struct VectorMax16 {
  union Vec {
    uint4 raw;
    Half2 pair[4];
  };
  Half2 m;
  __device__ VectorMax16() : m(Io16<Half, Half2>::from_float2(-INFINITY, -INFINITY)) {}
  __device__ void add(const uint4& v) {
    Vec u;
    u.raw = v;
    m = __hmax2(m, __hmax2(__hmax2(u.pair[0], u.pair[1]), __hmax2(u.pair[2], u.pair[3])));
  }
  __device__ float value() const {
    const float2 f = Io16<Half, Half2>::to_float2(m);
    return fmaxf(f.x, f.y);
  }
};
template <>
struct VectorMax<__nv_bfloat16> : VectorMax16<__nv_bfloat16, __nv_bfloat162> {};
template <>
struct VectorMax<__half> : VectorMax16<__half, __half2> {};

// Block-wide combine of K values with one __syncthreads: warps reduce by butterfly, lane 0 of each warp writes
// `scratch` (32*K floats, owned by this call site), then every warp reduces the partials the same way, so every
// thread of the block holds bitwise the same result. The caller guarantees a block barrier between two uses of
// the same scratch.
template <int K, bool IS_MAX>
__device__ void block_combine(float (&v)[K], float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
  for (int k = 0; k < K; ++k)
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v[k] = combine<IS_MAX>(v[k], __shfl_xor_sync(0xffffffffu, v[k], offset));
  if (lane == 0)
#pragma unroll
    for (int k = 0; k < K; ++k) scratch[warp * K + k] = v[k];
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) {
    float x = lane < warps ? scratch[lane * K + k] : (IS_MAX ? -INFINITY : 0.f);
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) x = combine<IS_MAX>(x, __shfl_xor_sync(0xffffffffu, x, offset));
    v[k] = x;
  }
}

// A cluster barrier without a memory fence in every thread. cg's cluster.sync() arrives with .release, which
// compiles to MEMBAR.ALL.GPU in every thread: each would first wait for its own in-flight gradient stores (and
// possibly its prefetch copies), serialising exactly what the pipeline overlaps. Only thread 0 publishes data
// across the cluster (the slots), so only it fences; it issues no copies or global stores (warp 0 sits out of
// those), so its fence is cheap. The wait keeps its default .acquire semantics.
__device__ inline void cluster_barrier_publishing_thread0() {
  if (threadIdx.x == 0) asm volatile("fence.acq_rel.cluster;\n" ::: "memory");
  __syncwarp();
  asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
  asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
}

// Cluster-wide combine of block totals: thread 0 publishes them in `slot` (this call site's own array), one
// cluster barrier, then lane r of every warp reads rank r's slot through distributed shared memory and the warp
// reduces by butterfly (same order everywhere: every block gets bitwise the same result). A slot is rewritten
// only for the next row, after at least one more cluster barrier, which every reader reaches after its reads.
template <int K, bool IS_MAX>
__device__ void cluster_combine(float (&v)[K], float* slot, int cluster_size) {
  if (cluster_size == 1) return;
  cg::cluster_group cluster = cg::this_cluster();
  if (threadIdx.x == 0)
#pragma unroll
    for (int k = 0; k < K; ++k) slot[k] = v[k];
  cluster_barrier_publishing_thread0();
  const int lane = threadIdx.x & 31;
  const float* remote = lane < cluster_size ? cluster.map_shared_rank(slot, lane) : nullptr;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    float x = remote ? remote[k] : (IS_MAX ? -INFINITY : 0.f);
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) x = combine<IS_MAX>(x, __shfl_xor_sync(0xffffffffu, x, offset));
    v[k] = x;
  }
}

// Host side: launches `kernel` persistently in clusters of `cluster_size` blocks, as many clusters as can be
// resident at once (no more than `rows`), each walking its rows. cudaErrorNotSupported (nothing launched, no error
// left pending) when the device cannot co-schedule such a cluster. The caller has set the kernel's attributes.
inline cudaError_t launch_persistent_clusters(void* kernel, int cluster_size, int threads, size_t smem, int64_t rows,
                                              void** args, cudaStream_t stream) {
  cudaLaunchConfig_t config = {};
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeClusterDimension;
  attribute[0].val.clusterDim.x = static_cast<unsigned>(cluster_size);
  attribute[0].val.clusterDim.y = 1;
  attribute[0].val.clusterDim.z = 1;
  config.gridDim = dim3(static_cast<unsigned>(cluster_size));  // for the occupancy query; set below
  config.blockDim = dim3(static_cast<unsigned>(threads));
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = attribute;
  config.numAttrs = 1;
  int active_clusters = 0;
  const cudaError_t err = cudaOccupancyMaxActiveClusters(&active_clusters, kernel, &config);
  if (err != cudaSuccess || active_clusters <= 0) {
    (void)cudaGetLastError();  // the caller falls back to another shape
    return cudaErrorNotSupported;
  }
  const int64_t clusters = active_clusters < rows ? active_clusters : rows;
  config.gridDim = dim3(static_cast<unsigned>(clusters * cluster_size));
  return cudaLaunchKernelExC(&config, kernel, args);
}

}  // namespace mp::kernels::kd_device
