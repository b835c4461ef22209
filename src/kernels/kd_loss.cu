// Fused KD loss over rows of logits: loss per row and d loss / d student logits in one kernel.
//
// Why this shape: the loss is memory-bound (a few flops per element), so the floor is reading both logit rows
// once and writing the gradient once. The softmax statistics (max, sum of exps, cross terms) need the whole row
// before any gradient element can be written, so a plain kernel reads the row twice. Here a thread-block
// cluster (up to 8 blocks on Hopper) holds one row in shared memory: each block copies its slice of the student
// and teacher row into shared memory once (cp.async, 16-byte pieces), the blocks agree on the row's statistics
// through distributed shared memory, and each block then writes its slice of the gradient from shared memory.
// HBM traffic: 2 reads + 1 write per element, the same as the bandwidth floor.
//
// Stages (each block over its slice, then block reduce, then cluster combine in rank order, so every block of
// the cluster holds bitwise the same statistics):
//   1. max of student and teacher logits
//   2. sums of exp(s - max_s), exp(t - max_t), and the divergence's cross term (forward: sum e_t (t - s),
//      reverse: sum e_s (s - t)); cross-entropy's own sum of exps when T != 1
//   3. (JSD only) the two KL(. || m) sums, which need normalised probabilities
//   4. the gradient, written once
// Rows too long for shared memory (e.g. fp32 with V > ~200k) take the two_pass variant: the same stages with one
// block per row reading the row from global memory in each stage. kd_rows_pipelined_kernel below makes the
// cluster shape persistent, copying the next rows while it computes the current one; it runs only when asked
// (slower on the H100). Forward KL on 16-bit logits takes kd_loss_tma.cu's cluster_tma first (launch_typed).
//
// No torch here (flashinfer's rule); the binding is kd_binding.cpp, the CPU twin kd_loss_cpu.cpp.
#include "kernels/kd_loss_cuda.h"
#include "kernels/kd_device.cuh"
#include "kernels/kd_row_math.h"

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace cg = cooperative_groups;

namespace mp::kernels {
namespace {

using namespace kd_device;

constexpr int kThreads = 256;
constexpr int kMaxCluster = 8;
// A slice pair (student + teacher) of at most this many bytes lets 3 blocks share an SM (227 KiB per SM), so
// one block's loads overlap another's arithmetic; rows too long for it use bigger slices up to kMaxSliceBytes.
constexpr int64_t kTargetSliceBytes = 72 * 1024;
constexpr int64_t kMaxSliceBytes = 200 * 1024;
constexpr int kSliceAlign = 8;
static_assert(int(KdKind::forward_kl) == kKindForwardKl && int(KdKind::reverse_kl) == kKindReverseKl &&
                  int(KdKind::jsd) == kKindJsd,
              "kd_row_math.h's kind numbers follow KdKind");  // slice lengths are multiples of 8 elements: whole 16-byte vectors for any dtype

// The student and teacher logits of one row slice, in shared memory (padded with -inf to whole vectors) or in
// global memory (read element by element where a whole aligned vector is not available).
template <typename T>
struct RowSlice {
  static constexpr int W = Io<T>::width;
  const T* student;
  const T* teacher;
  int64_t count;   // elements readable (padded length in shared memory)
  bool vector_ok;  // both pointers 16-byte aligned

  __device__ int64_t vectors() const { return (count + W - 1) / W; }
  __device__ void load(int64_t v, float* zs, float* zt) const {
    const int64_t e = v * W;
    if (vector_ok && e + W <= count) {
      Io<T>::unpack(*reinterpret_cast<const uint4*>(student + e), zs);
      Io<T>::unpack(*reinterpret_cast<const uint4*>(teacher + e), zt);
    } else {
#pragma unroll
      for (int k = 0; k < W; ++k) {
        const bool in = e + k < count;
        zs[k] = in ? Io<T>::to_float(student[e + k]) : -INFINITY;
        zt[k] = in ? Io<T>::to_float(teacher[e + k]) : -INFINITY;
      }
    }
  }
};

__device__ inline void cp_async16(void* smem_dst, const void* global_src) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(global_src) : "memory");
}
__device__ inline void cp_async_wait_all() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

// Copies `count` elements of a student and a teacher row slice into shared memory, padding with -inf up to
// `padded` elements (a multiple of the vector width).
template <typename T>
__device__ void stage_slice(const T* student, const T* teacher, int64_t count, int64_t padded, T* s_smem,
                            T* t_smem) {
  constexpr int W = Io<T>::width;
  const bool vector_ok = is_aligned16(student) && is_aligned16(teacher);
  const int64_t full_vectors = vector_ok ? count / W : 0;
  for (int64_t v = threadIdx.x; v < full_vectors; v += blockDim.x) {
    cp_async16(s_smem + v * W, student + v * W);
    cp_async16(t_smem + v * W, teacher + v * W);
  }
  for (int64_t e = full_vectors * W + threadIdx.x; e < padded; e += blockDim.x) {
    const bool in = e < count;
    s_smem[e] = in ? student[e] : Io<T>::from_float(-INFINITY);
    t_smem[e] = in ? teacher[e] : Io<T>::from_float(-INFINITY);
  }
  cp_async_wait_all();
  __syncthreads();
}

// Reduces K values over the block; every thread gets the result. scratch holds 32*K floats.
template <int K, bool IS_MAX>
__device__ void block_reduce(float (&v)[K], float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
  for (int k = 0; k < K; ++k)
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v[k] = combine<IS_MAX>(v[k], __shfl_xor_sync(0xffffffffu, v[k], offset));
  if (lane == 0)
#pragma unroll
    for (int k = 0; k < K; ++k) scratch[warp * K + k] = v[k];
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      float x = lane < warps ? scratch[lane * K + k] : (IS_MAX ? -INFINITY : 0.f);
#pragma unroll
      for (int offset = 16; offset > 0; offset >>= 1) x = combine<IS_MAX>(x, __shfl_xor_sync(0xffffffffu, x, offset));
      v[k] = x;
    }
  }
  __syncthreads();  // everyone has read scratch before warp 0 overwrites it
  if (threadIdx.x == 0)
#pragma unroll
    for (int k = 0; k < K; ++k) scratch[k] = v[k];
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = scratch[k];
  __syncthreads();
}

// Combines the block-reduced values of all blocks in the cluster, in rank order so every block gets bitwise the
// same result. `slot` and `result` are this stage's own shared arrays (never reused by another stage, so no block
// can overwrite a slot another block is still reading).
template <int K, bool IS_MAX>
__device__ void cluster_reduce(float (&v)[K], float* slot, float* result, int cluster_size) {
  if (cluster_size == 1) return;
  cg::cluster_group cluster = cg::this_cluster();
  if (threadIdx.x == 0)
#pragma unroll
    for (int k = 0; k < K; ++k) slot[k] = v[k];
  cluster.sync();
  if (threadIdx.x < K) {
    float x = IS_MAX ? -INFINITY : 0.f;
    for (int r = 0; r < cluster_size; ++r) x = combine<IS_MAX>(x, cluster.map_shared_rank(slot, r)[threadIdx.x]);
    result[threadIdx.x] = x;
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = result[k];
}

__device__ inline void cluster_arrive() { asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory"); }
__device__ inline void cluster_wait() { asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory"); }

template <typename T, int KIND, bool STAGED>
__global__ void __launch_bounds__(kThreads, 3)
    kd_rows_kernel(KdRowParams p, int cluster_size, int64_t slice_len) {
  constexpr int W = Io<T>::width;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ float scratch[32 * 4];
  __shared__ float slot_max[2], slot_sum[4], slot_kl[2];
  __shared__ float result_max[2], result_sum[4], result_kl[2];

  const int rank = STAGED ? static_cast<int>(blockIdx.x % cluster_size) : 0;
  const int64_t row = STAGED ? blockIdx.x / cluster_size : blockIdx.x;
  const int64_t V = p.vocab;
  const T* student_row = static_cast<const T*>(p.student) + row * p.student_stride;
  const T* teacher_row = static_cast<const T*>(p.teacher) + row * p.teacher_stride;
  T* grad_row = p.grad ? static_cast<T*>(p.grad) + row * p.grad_stride : nullptr;

  const int64_t begin = STAGED ? rank * slice_len : 0;
  const int64_t count = STAGED ? max(int64_t(0), min(slice_len, V - begin)) : V;
  T* grad_slice = grad_row ? grad_row + begin : nullptr;
  const bool grad_vector_ok = grad_slice && is_aligned16(grad_slice);

  const bool has_labels = p.labels != nullptr;
  const int64_t label = has_labels ? p.labels[row] : -1;
  if (has_labels && label == p.ignore_index) {  // the whole cluster leaves together: same row, same label
    if (grad_slice) {
      const float zeros[W] = {};
      for (int64_t v = threadIdx.x; v < (count + W - 1) / W; v += blockDim.x)
        store_vector(grad_slice, v * W, count, grad_vector_ok, zeros);
    }
    if (rank == 0 && threadIdx.x == 0) p.row_loss[row] = 0.f;
    return;
  }
  const bool has_ce = has_labels && p.ce_weight != 0.f;
  const bool label_in_range = label >= 0 && label < V;
  // Read before any barrier: with an in-place gradient, no block writes this row until after stage 2.
  float label_logit = 0.f;
  if (has_ce && rank == 0 && threadIdx.x == 0)
    label_logit = label_in_range ? Io<T>::to_float(student_row[label]) : NAN;

  RowSlice<T> slice;
  if constexpr (STAGED) {
    const int64_t padded = (count + W - 1) / W * W;
    T* s_smem = reinterpret_cast<T*>(smem_raw);
    T* t_smem = s_smem + slice_len;  // slice_len is a multiple of 8 elements: 16-byte aligned
    stage_slice(student_row + begin, teacher_row + begin, count, padded, s_smem, t_smem);
    slice = RowSlice<T>{s_smem, t_smem, padded, true};
  } else {
    slice = RowSlice<T>{student_row, teacher_row, V, is_aligned16(student_row) && is_aligned16(teacher_row)};
  }
  const int64_t vectors = slice.vectors();
  float zs[W], zt[W];

  // Stage 1: maxima of the raw logits (max(z)/T == max(z/T) for T > 0, also after rounding).
  float maxima[2] = {-INFINITY, -INFINITY};
  for (int64_t v = threadIdx.x; v < vectors; v += blockDim.x) {
    slice.load(v, zs, zt);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      maxima[0] = fmaxf(maxima[0], zs[k]);
      maxima[1] = fmaxf(maxima[1], zt[k]);
    }
  }
  block_reduce<2, true>(maxima, scratch);
  cluster_reduce<2, true>(maxima, slot_max, result_max, STAGED ? cluster_size : 1);
  // The arithmetic lives in kd_row_math.h (shared with the host test of these formulas).
  KdRowMath<KIND> math;
  math.begin(p.temperature, p.jsd_beta, maxima[0], maxima[1], has_ce);

  // Stage 2: sums of exps and the cross term.
  float sums[4] = {0.f, 0.f, 0.f, 0.f};
  for (int64_t v = threadIdx.x; v < vectors; v += blockDim.x) {
    slice.load(v, zs, zt);
#pragma unroll
    for (int k = 0; k < W; ++k) math.accumulate_sums(zs[k], zt[k], sums);
  }
  block_reduce<4, false>(sums, scratch);
  cluster_reduce<4, false>(sums, slot_sum, result_sum, STAGED ? cluster_size : 1);
  math.finish_sums(sums);

  if (KIND == int(KdKind::jsd)) {  // Stage 3: KL(p || m) and KL(q || m), which need normalised probabilities
    float kl[2] = {0.f, 0.f};
    for (int64_t v = threadIdx.x; v < vectors; v += blockDim.x) {
      slice.load(v, zs, zt);
#pragma unroll
      for (int k = 0; k < W; ++k) math.accumulate_jsd(zs[k], zt[k], kl);
    }
    block_reduce<2, false>(kl, scratch);
    cluster_reduce<2, false>(kl, slot_kl, result_kl, STAGED ? cluster_size : 1);
    math.finish_jsd(kl);
  }
  // No block reads another block's shared memory after this point; it must stay alive until all have read it.
  if (STAGED && cluster_size > 1) cluster_arrive();

  if (rank == 0 && threadIdx.x == 0) p.row_loss[row] = math.row_loss(p.kd_weight, p.ce_weight, has_ce, label_logit);

  // Stage 4: the gradient, written once.
  if (grad_slice) {
    const float scale = p.grad_scale ? *p.grad_scale : 1.f;
    const float kd_factor = scale * p.kd_weight * p.temperature, ce_factor = scale * p.ce_weight;
    const int64_t local_label = has_ce && label_in_range ? label - begin : -1;
    float g[W];
    for (int64_t v = threadIdx.x; v < vectors; v += blockDim.x) {
      slice.load(v, zs, zt);
#pragma unroll
      for (int k = 0; k < W; ++k)
        g[k] = math.gradient(zs[k], zt[k], v * W + k == local_label, has_ce, kd_factor, ce_factor);
      store_vector(grad_slice, v * W, count, grad_vector_ok, g);
    }
  }
  if (STAGED && cluster_size > 1) cluster_wait();
}

// ---------------------------------------------------------------------------------------------------------------
// cluster_pipelined: the cluster shape above, made persistent and software-pipelined.
//
// Why: in kd_rows_kernel each block first loads its slice (memory busy, arithmetic idle), then runs three passes
// of arithmetic over shared memory (about 4 exp2 and ~30 other instructions per element: arithmetic busy, memory
// idle). On an H100 at N 8192, V 131072 bf16 it measured 3.48 ms against 2.17 ms for the bytes: the sum of the
// two phases, i.e. they hardly overlapped. Here one cluster per group of SMs stays resident and walks rows
// cluster_id, cluster_id + clusters, ...; each block keeps `stages` slice buffers and copies the slices of the
// next stages-1 rows (cp.async) while it computes the current one, so HBM stays busy during the arithmetic and
// the cluster barriers. Also cheaper per element: the maxima on packed 16-bit pairs, one __syncthreads per block
// reduction, the cluster combine done by every warp (no extra barrier), the label test out of the hot loop.
// ---------------------------------------------------------------------------------------------------------------
constexpr int kPipelinedThreads = 512;
constexpr int kMaxStages = 4;
constexpr int kLossThread = 32;  // reads the label logit and writes the row loss: not thread 0 (see below)

// Issues the copies of one row slice into a stage buffer (cp.async for whole aligned vectors, plain loads for the
// rest and the -inf padding); the caller commits the group.
// Warps 1.. only (see cluster_barrier_publishing_thread0): thread t >= 32 takes vectors t - 32, t - 32 + stride...
constexpr int kWorkerBase = 32;

template <typename T>
__device__ void issue_slice(const T* student, const T* teacher, int count, int padded, T* s_smem, T* t_smem) {
  constexpr int W = Io<T>::width;
  if (threadIdx.x < kWorkerBase) return;
  const int first = threadIdx.x - kWorkerBase, stride = blockDim.x - kWorkerBase;
  const bool vector_ok = is_aligned16(student) && is_aligned16(teacher);
  const int full_vectors = vector_ok ? count / W : 0;
  for (int v = first; v < full_vectors; v += stride) {
    cp_async16(s_smem + v * W, student + v * W);
    cp_async16(t_smem + v * W, teacher + v * W);
  }
  for (int e = full_vectors * W + first; e < padded; e += stride) {
    const bool in = e < count;
    s_smem[e] = in ? student[e] : Io<T>::from_float(-INFINITY);
    t_smem[e] = in ? teacher[e] : Io<T>::from_float(-INFINITY);
  }
}

__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most `pending` of this thread's committed groups are still in flight (0 <= pending < kMaxStages).
__device__ inline void cp_async_wait_pending(int pending) {
  switch (pending) {
    case 0: asm volatile("cp.async.wait_group 0;\n" ::: "memory"); break;
    case 1: asm volatile("cp.async.wait_group 1;\n" ::: "memory"); break;
    case 2: asm volatile("cp.async.wait_group 2;\n" ::: "memory"); break;
    default: asm volatile("cp.async.wait_group 3;\n" ::: "memory"); break;
  }
}

// Stage 4 over one slice in shared memory; HAS_CE is a template flag so the plain-KD loop carries no label test.
template <typename T, int KIND, bool HAS_CE>
__device__ void gradient_pass(const KdRowMath<KIND>& math, const T* s_smem, const T* t_smem, int vectors, T* grad_slice,
                              int count, bool grad_vector_ok, int local_label, float kd_factor, float ce_factor) {
  constexpr int W = Io<T>::width;
  float zs[W], zt[W], g[W];
  const int label_vector = local_label >= 0 ? local_label / W : -1, label_lane = local_label - label_vector * W;
  if (threadIdx.x < kWorkerBase) return;  // warp 0 issues no global stores
  for (int v = threadIdx.x - kWorkerBase; v < vectors; v += blockDim.x - kWorkerBase) {
    Io<T>::unpack(reinterpret_cast<const uint4*>(s_smem)[v], zs);
    Io<T>::unpack(reinterpret_cast<const uint4*>(t_smem)[v], zt);
    const bool label_here = HAS_CE && v == label_vector;
#pragma unroll
    for (int k = 0; k < W; ++k) g[k] = math.gradient(zs[k], zt[k], label_here && k == label_lane, HAS_CE, kd_factor, ce_factor);
    store_vector(grad_slice, int64_t(v) * W, count, grad_vector_ok, g);
  }
}

template <typename T, int KIND>
__global__ void __launch_bounds__(kPipelinedThreads, 1)
    kd_rows_pipelined_kernel(KdRowParams p, int cluster_size, int slice_len, int stages) {
  constexpr int W = Io<T>::width;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ float scratch_max[32 * 2], scratch_sum[32 * 4], scratch_kl[32 * 2];
  __shared__ float slot_max[2], slot_sum[4], slot_kl[2];

  const int rank = static_cast<int>(blockIdx.x % cluster_size);
  const int64_t cluster_id = blockIdx.x / cluster_size, clusters = gridDim.x / cluster_size;
  const int64_t V = p.vocab;
  const int64_t begin = int64_t(rank) * slice_len;
  const int count = static_cast<int>(max(int64_t(0), min(int64_t(slice_len), V - begin)));
  const int padded = (count + W - 1) / W * W, vectors = padded / W;
  T* const buffers = reinterpret_cast<T*>(smem_raw);  // stage s: student at 2*s*slice_len, teacher after it
  auto student_buffer = [&](int64_t i) { return buffers + 2 * int64_t(i % stages) * slice_len; };
  const int64_t my_rows = cluster_id < p.rows ? (p.rows - 1 - cluster_id) / clusters + 1 : 0;
  const float grad_scale = p.grad && p.grad_scale ? *p.grad_scale : 1.f;

  auto issue_row = [&](int64_t i) {  // the slices of this cluster's i-th row into its stage buffer; always commits
    if (i < my_rows) {
      const int64_t row = cluster_id + i * clusters;
      T* s_smem = student_buffer(i);
      issue_slice(static_cast<const T*>(p.student) + row * p.student_stride + begin,
                  static_cast<const T*>(p.teacher) + row * p.teacher_stride + begin, count, padded, s_smem,
                  s_smem + slice_len);
    }
    cp_async_commit();
  };
  for (int i = 0; i < stages - 1; ++i) issue_row(i);

  for (int64_t i = 0; i < my_rows; ++i) {
    const int64_t row = cluster_id + i * clusters;
    // Row i's group is complete once at most stages-2 later groups are pending; the barrier then also says every
    // thread is done with row i-1, whose buffer the next copy reuses.
    if (stages == 1) {
      __syncthreads();
      issue_row(i);
      cp_async_wait_pending(0);
      __syncthreads();
    } else {
      cp_async_wait_pending(stages - 2);
      __syncthreads();
      issue_row(i + stages - 1);
    }
    const T* s_smem = student_buffer(i);
    const T* t_smem = s_smem + slice_len;
    T* grad_row = p.grad ? static_cast<T*>(p.grad) + row * p.grad_stride : nullptr;
    T* grad_slice = grad_row ? grad_row + begin : nullptr;
    const bool grad_vector_ok = grad_slice && is_aligned16(grad_slice);

    const bool has_labels = p.labels != nullptr;
    const int64_t label = has_labels ? p.labels[row] : -1;
    if (has_labels && label == p.ignore_index) {  // the whole cluster skips the row together: same label
      if (grad_slice && threadIdx.x >= kWorkerBase) {
        const float zeros[W] = {};
        for (int v = threadIdx.x - kWorkerBase; v < vectors; v += blockDim.x - kWorkerBase)
          store_vector(grad_slice, int64_t(v) * W, count, grad_vector_ok, zeros);
      }
      if (rank == 0 && threadIdx.x == kLossThread) p.row_loss[row] = 0.f;
      continue;
    }
    const bool has_ce = has_labels && p.ce_weight != 0.f;
    const bool label_in_range = label >= 0 && label < V;
    // The block whose slice holds the label writes the row loss, reading the label's logit from its own shared
    // copy (never from global memory, which an in-place gradient overwrites). Every block has the same statistics.
    const int loss_rank = label_in_range ? static_cast<int>(label / slice_len) : 0;
    const bool writes_loss = rank == loss_rank && threadIdx.x == kLossThread;
    const float label_logit = has_ce && label_in_range && writes_loss ? Io<T>::to_float(s_smem[label - begin]) : NAN;

    // Stage 1: maxima.
    VectorMax<T> max_s, max_t;
    for (int v = threadIdx.x; v < vectors; v += blockDim.x) {
      max_s.add(reinterpret_cast<const uint4*>(s_smem)[v]);
      max_t.add(reinterpret_cast<const uint4*>(t_smem)[v]);
    }
    float maxima[2] = {max_s.value(), max_t.value()};
    block_combine<2, true>(maxima, scratch_max);
    cluster_combine<2, true>(maxima, slot_max, cluster_size);
    KdRowMath<KIND> math;
    math.begin(p.temperature, p.jsd_beta, maxima[0], maxima[1], has_ce);

    // Stage 2: sums of exps and the cross term.
    float sums[4] = {0.f, 0.f, 0.f, 0.f};
    float zs[W], zt[W];
    for (int v = threadIdx.x; v < vectors; v += blockDim.x) {
      Io<T>::unpack(reinterpret_cast<const uint4*>(s_smem)[v], zs);
      Io<T>::unpack(reinterpret_cast<const uint4*>(t_smem)[v], zt);
#pragma unroll
      for (int k = 0; k < W; ++k) math.accumulate_sums(zs[k], zt[k], sums);
    }
    block_combine<4, false>(sums, scratch_sum);
    cluster_combine<4, false>(sums, slot_sum, cluster_size);
    math.finish_sums(sums);

    if (KIND == int(KdKind::jsd)) {  // Stage 3: the two KL(. || m) sums
      float kl[2] = {0.f, 0.f};
      for (int v = threadIdx.x; v < vectors; v += blockDim.x) {
        Io<T>::unpack(reinterpret_cast<const uint4*>(s_smem)[v], zs);
        Io<T>::unpack(reinterpret_cast<const uint4*>(t_smem)[v], zt);
#pragma unroll
        for (int k = 0; k < W; ++k) math.accumulate_jsd(zs[k], zt[k], kl);
      }
      block_combine<2, false>(kl, scratch_kl);
      cluster_combine<2, false>(kl, slot_kl, cluster_size);
      math.finish_jsd(kl);
    }
    if (writes_loss) p.row_loss[row] = math.row_loss(p.kd_weight, p.ce_weight, has_ce, label_logit);

    // Stage 4: the gradient, written once.
    if (grad_slice) {
      const float kd_factor = grad_scale * p.kd_weight * p.temperature, ce_factor = grad_scale * p.ce_weight;
      const int64_t local = has_ce && label_in_range ? label - begin : -1;
      const int local_label = local >= 0 && local < count ? static_cast<int>(local) : -1;
      if (has_ce)
        gradient_pass<T, KIND, true>(math, s_smem, t_smem, vectors, grad_slice, count, grad_vector_ok, local_label,
                                     kd_factor, ce_factor);
      else
        gradient_pass<T, KIND, false>(math, s_smem, t_smem, vectors, grad_slice, count, grad_vector_ok, -1, kd_factor,
                                      ce_factor);
    }
  }
  cp_async_wait_pending(0);  // no copy may still target shared memory when the block exits
  // No block may leave while another still reads its slots (every read's value was used before this arrive).
  if (cluster_size > 1) {
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
    asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
  }
}

template <typename T, bool STAGED>
void* pick_kernel(KdKind kind) {
  switch (kind) {
    case KdKind::forward_kl: return reinterpret_cast<void*>(&kd_rows_kernel<T, int(KdKind::forward_kl), STAGED>);
    case KdKind::reverse_kl: return reinterpret_cast<void*>(&kd_rows_kernel<T, int(KdKind::reverse_kl), STAGED>);
    case KdKind::jsd: return reinterpret_cast<void*>(&kd_rows_kernel<T, int(KdKind::jsd), STAGED>);
  }
  return nullptr;
}

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

template <typename T>
void* pick_pipelined_kernel(KdKind kind) {
  switch (kind) {
    case KdKind::forward_kl: return reinterpret_cast<void*>(&kd_rows_pipelined_kernel<T, int(KdKind::forward_kl)>);
    case KdKind::reverse_kl: return reinterpret_cast<void*>(&kd_rows_pipelined_kernel<T, int(KdKind::reverse_kl)>);
    case KdKind::jsd: return reinterpret_cast<void*>(&kd_rows_pipelined_kernel<T, int(KdKind::jsd)>);
  }
  return nullptr;
}

// Launches cluster_pipelined when a plan exists: the smallest cluster whose slice buffers fit at least
// `min_stages` times in one block's shared memory (V 131072 bf16: 8 blocks, 3 stages of 64 KiB). Returns
// cudaErrorNotSupported (nothing launched, no error left pending) when the row is too long for that or the
// device cannot co-schedule such a cluster.
template <typename T>
cudaError_t launch_pipelined(const KdRowParams& p, int min_stages, cudaStream_t stream) {
  int device = 0, optin = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  const int64_t budget = int64_t(optin) - 2048;  // the kernel's static shared memory (~1 KiB) and some margin
  int cluster_size = 0, stages = 0;
  int64_t slice_len = 0;
  for (int c = 1; c <= kMaxCluster && !cluster_size; c *= 2) {
    slice_len = round_up((p.vocab + c - 1) / c, kSliceAlign);
    const int64_t fit = budget / (2 * slice_len * int64_t(sizeof(T)));
    if (fit >= 2 || (c == kMaxCluster && fit >= min_stages)) {
      cluster_size = c;
      stages = static_cast<int>(std::min<int64_t>(fit, kMaxStages));
    }
  }
  if (!cluster_size || stages < min_stages) return cudaErrorNotSupported;
  const size_t smem = size_t(stages) * size_t(2 * slice_len) * sizeof(T);
  void* kernel = pick_pipelined_kernel<T>(p.kind);
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return cudaErrorNotSupported;
  }
  int slice = static_cast<int>(slice_len);
  void* args[] = {const_cast<KdRowParams*>(&p), &cluster_size, &slice, &stages};
  return launch_persistent_clusters(kernel, cluster_size, kPipelinedThreads, smem, p.rows, args, stream);
}

template <typename T>
cudaError_t launch_typed(const KdRowParams& p, KdKernel variant, cudaStream_t stream, KdKernel* used) {
  if (variant == KdKernel::automatic || variant == KdKernel::cluster_tma) {
    const cudaError_t err = kd_rows_tma_launch(p, stream);
    if (err != cudaErrorNotSupported) {
      if (used) *used = KdKernel::cluster_tma;
      return err;
    }
    if (variant == KdKernel::cluster_tma) return cudaErrorInvalidValue;
  }
  if (variant == KdKernel::cluster_pipelined) {
    // Only when asked for: on the H100 it measured 4.54 ms against cluster_smem's 3.42 ms (N 8192, V 131072,
    // bf16), so the automatic choice skips it (cluster_tma, then cluster_smem). Any plan, one stage included
    // (tests run all).
    const cudaError_t err = launch_pipelined<T>(p, 1, stream);
    if (err != cudaErrorNotSupported) {
      if (used) *used = KdKernel::cluster_pipelined;
      return err;
    }
    if (variant == KdKernel::cluster_pipelined) return cudaErrorInvalidValue;
  }
  // Smallest cluster whose slices fit the target; rows too long for it get the biggest slices that still fit.
  int cluster_size = 0;
  int64_t slice_len = 0;
  for (int c = 1; c <= kMaxCluster && !cluster_size; c *= 2) {
    slice_len = round_up((p.vocab + c - 1) / c, kSliceAlign);
    if (2 * slice_len * int64_t(sizeof(T)) <= kTargetSliceBytes) cluster_size = c;
  }
  if (!cluster_size && 2 * slice_len * int64_t(sizeof(T)) <= kMaxSliceBytes) cluster_size = kMaxCluster;

  if (variant != KdKernel::two_pass && cluster_size) {
    const size_t smem = size_t(2 * slice_len) * sizeof(T);
    void* kernel = pick_kernel<T, true>(p.kind);
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    cudaLaunchConfig_t config = {};
    cudaLaunchAttribute attribute[1];
    attribute[0].id = cudaLaunchAttributeClusterDimension;
    attribute[0].val.clusterDim.x = cluster_size;
    attribute[0].val.clusterDim.y = 1;
    attribute[0].val.clusterDim.z = 1;
    config.gridDim = dim3(static_cast<unsigned>(p.rows * cluster_size));
    config.blockDim = dim3(kThreads);
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    config.attrs = attribute;
    config.numAttrs = 1;
    int active_clusters = 0;
    if (err == cudaSuccess) err = cudaOccupancyMaxActiveClusters(&active_clusters, kernel, &config);
    if (err == cudaSuccess && active_clusters > 0) {
      void* args[] = {const_cast<KdRowParams*>(&p), &cluster_size, &slice_len};
      err = cudaLaunchKernelExC(&config, kernel, args);
      if (used) *used = KdKernel::cluster_smem;
      return err;
    }
    if (variant == KdKernel::cluster_smem) return err == cudaSuccess ? cudaErrorInvalidConfiguration : err;
    (void)cudaGetLastError();  // the automatic choice falls back to two_pass
  } else if (variant == KdKernel::cluster_smem) {
    return cudaErrorInvalidValue;  // the row does not fit the cluster's shared memory
  }
  void* kernel = pick_kernel<T, false>(p.kind);
  int one = 1;
  int64_t vocab = p.vocab;
  void* args[] = {const_cast<KdRowParams*>(&p), &one, &vocab};
  if (used) *used = KdKernel::two_pass;
  return cudaLaunchKernel(kernel, dim3(static_cast<unsigned>(p.rows)), dim3(kThreads), args, 0, stream);
}

}  // namespace

cudaError_t kd_rows_launch(const KdRowParams& params, KdKernel variant, cudaStream_t stream,
                           KdKernel* used) {
  if (params.rows == 0) return cudaSuccess;
  switch (params.dtype) {
    case KdDtype::f32: return launch_typed<float>(params, variant, stream, used);
    case KdDtype::f16: return launch_typed<__half>(params, variant, stream, used);
    case KdDtype::bf16: return launch_typed<__nv_bfloat16>(params, variant, stream, used);
  }
  return cudaErrorInvalidValue;
}

}  // namespace mp::kernels
