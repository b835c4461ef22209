// Forward-KL rows streamed by TMA bulk copies, exponentials kept in registers: the `cluster_tma` shape of the
// fused KD loss.
//
// Why a third shape. Measured on an H100 (N 8192, V 131072, bf16; the HBM floor is 2.14 ms):
//  - cluster_smem (kd_loss.cu) reads each logit once but spends four exponentials per element (two for the sums,
//    two again for the gradient) and three passes over shared memory: 3.40 ms, as if its co-resident blocks,
//    started together, did their loading and their arithmetic in lock-step.
//  - keeping a row's logits and stage 2's exponentials in registers (two exps per element) without a separate
//    load buffer: 3.56 ms with 512 threads, 4.8 ms with 256 — a row's loads could only start once the previous
//    row's logits had become exponentials, so load latency stayed on the critical path.
//  - the design below with one block of 512 workers per SM and two cluster barriers per row: 3.43 ms; with the
//    online merge (one cluster barrier per row): 3.21 ms, 1.50x the floor; with the blocks pushing their parts
//    instead of reading the others' (row_merge): 2.69-2.77 ms; pushing with st.async onto mbarriers instead of a
//    fence and cluster barrier: 2.49 ms, 1.16x (256 workers, clusters of 16: 2.41 ms).
// Here each block of a cluster (up to 16 blocks split a row) is persistent and keeps a ring of 3 slice buffers in
// shared memory, filled by cp.async.bulk (TMA) copies that one producer warp issues two rows ahead; an mbarrier
// per buffer says when its bytes have landed. The worker warps read their 2 x 32 logits of the current row from
// shared memory and compute stages 1 and 2 in online form (kd_row_math.h's KdOnlinePart): each thread takes the
// exps at its own maxima and keeps them in registers, and the block and then the cluster merge the parts, so a
// row costs one cluster barrier instead of two. Stage 4 writes the gradient from the kept exps with one multiply
// each: two exponentials per element instead of four. The producer warp also pushes the block's part to the
// cluster's blocks (st.async onto their mbarriers) and writes the row loss; it stores no gradient.
//
// Scope: forward KL, 16-bit logits, V a multiple of 8 up to 16 x 16384, rows 16-byte aligned, CE only at T = 1
// (CE at T != 1 needs another sum of exps; reverse KL and JSD need the logits again in stage 4). The launcher
// answers cudaErrorNotSupported otherwise, having launched nothing.
//
// Per row: (1+2) each thread's maxima, exps at them and sums; warp, block and cluster merges (row_merge: in rank
// order, every block gets bitwise the same statistics); (4) the gradient from the kept exps rescaled to the row
// maxima.
#include "kernels/kd_device.cuh"
#include "kernels/kd_loss_cuda.h"
#include "kernels/kd_row_math.h"

#include <cstdlib>
#include <cstring>

namespace mp::kernels {
namespace {

using namespace kd_device;

constexpr int kVectorsPerThread = 4;   // per tensor: 4 x 8 logits per worker thread
constexpr int kMaxClusterBlocks = 16;  // Hopper's non-portable cluster limit
constexpr int kStages = 3;             // slice buffers per block
// The producer lane that writes the row loss: past the lanes that push parts (0..cluster size - 1) and past
// thread 0, which issues the copies, so that neither waits behind a global store.
constexpr int kLossThread = 31;
static_assert(kLossThread >= kMaxClusterBlocks, "the row-loss lane must not push parts");

// WORKERS worker threads plus the producer warp; a block holds WORKERS x 32 logits of a row (8192 or 16384).
// 512 workers: one block per SM (3 x 64 KiB of buffers), V up to 262144. 256: two blocks per SM, V up to 131072.
template <int WORKERS>
struct Shape {
  static constexpr int threads = WORKERS + 32;
  static constexpr int slice = kVectorsPerThread * 8 * WORKERS;
  static constexpr int blocks_per_sm = WORKERS <= 256 ? 2 : 1;
};

__device__ inline unsigned smem_address(const void* p) { return static_cast<unsigned>(__cvta_generic_to_shared(p)); }

__device__ inline void mbarrier_init(uint64_t* bar, unsigned arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_address(bar)), "r"(arrivals) : "memory");
}
__device__ inline void mbarrier_arrive_expect_bytes(uint64_t* bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_address(bar)), "r"(bytes)
               : "memory");
}
__device__ inline void mbarrier_wait(uint64_t* bar, unsigned parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n"
      "}\n" ::"r"(smem_address(bar)),
      "r"(parity)
      : "memory");
}
// Bulk copy of `bytes` (a multiple of 16, both addresses 16-byte aligned) from global to this block's shared
// memory, counted on `bar`. Evict-first in L2: each logit is read once.
__device__ inline void bulk_copy(void* smem_dst, const void* global_src, unsigned bytes, uint64_t* bar) {
  asm volatile(
      "{\n"
      ".reg .b64 policy;\n"
      "createpolicy.fractional.L2::evict_first.b64 policy, 1.0;\n"
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], policy;\n"
      "}\n" ::"r"(smem_address(smem_dst)),
      "l"(global_src), "r"(bytes), "r"(smem_address(bar))
      : "memory");
}

// Online merge of the parts a warp's lanes hold: maxima by butterfly, each lane rescales its sums to them, sums
// by butterfly, in the same order in every warp. Every lane gets the merged part; empty parts add nothing.
__device__ inline KdOnlinePart warp_merge(KdOnlinePart part, float c) {
  float max_s = part.max_s, max_t = part.max_t;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    max_s = fmaxf(max_s, __shfl_xor_sync(0xffffffffu, max_s, offset));
    max_t = fmaxf(max_t, __shfl_xor_sync(0xffffffffu, max_t, offset));
  }
  part.rescale_to(max_s, max_t, c);
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    part.sum_s += __shfl_xor_sync(0xffffffffu, part.sum_s, offset);
    part.sum_t += __shfl_xor_sync(0xffffffffu, part.sum_t, offset);
    part.cross += __shfl_xor_sync(0xffffffffu, part.cross, offset);
  }
  return part;
}

constexpr int kPartFloats = 5;
__device__ inline void store_part(float* dst, const KdOnlinePart& part) {
  dst[0] = part.max_s;
  dst[1] = part.max_t;
  dst[2] = part.sum_s;
  dst[3] = part.sum_t;
  dst[4] = part.cross;
}
__device__ inline KdOnlinePart load_part(const float* src) { return {src[0], src[1], src[2], src[3], src[4]}; }

// A block's part in another block's shared memory: 5 floats padded to 32 bytes (16-byte aligned for st.async.v4).
struct alignas(16) PartSlot {
  float v[8];
};
constexpr unsigned kPushedBytes = kPartFloats * sizeof(float);  // what st.async writes per part

__device__ inline void mbarrier_wait_cluster(uint64_t* bar, unsigned parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n"
      "}\n" ::"r"(smem_address(bar)),
      "r"(parity)
      : "memory");
}

// Writes `part` into `slot` of block `to_rank` with st.async, each store counting its bytes on that block's
// mbarrier `landed` (the same shared-memory offsets in every block of the cluster).
__device__ inline void push_part(PartSlot* slot, uint64_t* landed, unsigned to_rank, const KdOnlinePart& part) {
  unsigned remote_slot, remote_bar;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote_slot) : "r"(smem_address(slot)), "r"(to_rank));
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote_bar) : "r"(smem_address(landed)), "r"(to_rank));
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.f32 [%0], {%1, %2, %3, %4}, [%5];\n" ::"r"(
                   remote_slot),
               "f"(part.max_s), "f"(part.max_t), "f"(part.sum_s), "f"(part.sum_t), "r"(remote_bar)
               : "memory");
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.f32 [%0], %1, [%2];\n" ::"r"(remote_slot + 16),
               "f"(part.cross), "r"(remote_bar)
               : "memory");
}

// The row's statistics from every thread's part, with one block barrier and no cluster barrier, and no remote
// read. Each warp merges its lanes and writes the warp's part; after a block barrier warp 0 merges those into the
// block's part and pushes it into slot [rank] of every block's `rank_parts` with st.async, which counts the bytes
// on that block's mbarrier `landed`; every thread waits there until all the cluster's parts have landed and merges
// them from its own shared memory in rank order, so every block gets bitwise the same row statistics.
// Measured (ncu, H100): reading the other blocks' parts through distributed shared memory after a cluster barrier
// (lane r of every warp reading rank r) kept the warps waiting on remote latency for ~30% of the kernel's time;
// pushes with a cluster fence and barrier left ~24% waiting at the barrier.
// Reuse. `rank_parts` and `landed` are double-buffered by the caller: the k-th merged row uses buffer k % 2, whose
// mbarrier phase is (k / 2) % 2. Block A pushes into block B's buffer for row k + 2 only after A has merged row
// k + 1, which needs B's part of row k + 1, which B pushes after all its warps passed the block barrier of row
// k + 1, so after they read buffer k % 2 for row k (and B's local arrival for row k + 2 comes after its wait for
// row k). Warps rewrite `warp_parts` for the next row after this row's phase completed, which needs warp 0's
// arrival, made after it read them. Bytes landing before the local expect_tx only make the count transiently
// negative, which mbarriers allow.
__device__ inline KdOnlinePart row_merge(const KdOnlinePart& mine, float c, float (*warp_parts)[kPartFloats],
                                         PartSlot* rank_parts, uint64_t* landed, unsigned parity, int cluster_size,
                                         int rank) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const KdOnlinePart warp_part = warp_merge(mine, c);
  if (lane == 0) store_part(warp_parts[warp], warp_part);
  __syncthreads();
  if (warp == 0) {
    const int warps = static_cast<int>(blockDim.x >> 5);
    const KdOnlinePart block_part = warp_merge(lane < warps ? load_part(warp_parts[lane]) : KdOnlinePart{}, c);
    if (cluster_size == 1) {
      if (lane == 0) store_part(rank_parts[0].v, block_part);
    } else {
      if (lane < cluster_size) push_part(&rank_parts[rank], landed, static_cast<unsigned>(lane), block_part);
      if (lane == 0) mbarrier_arrive_expect_bytes(landed, static_cast<unsigned>(cluster_size) * kPushedBytes);
    }
  }
  if (cluster_size == 1) __syncthreads();
  else mbarrier_wait_cluster(landed, parity);
  return warp_merge(lane < cluster_size ? load_part(rank_parts[lane].v) : KdOnlinePart{}, c);
}

template <typename T, int WORKERS, bool HAS_CE>
__global__ void __launch_bounds__(Shape<WORKERS>::threads, Shape<WORKERS>::blocks_per_sm)
    kd_forward_kl_tma_kernel(KdRowParams p, int cluster_size) {
  constexpr int W = Io<T>::width;
  constexpr int V4 = kVectorsPerThread;
  constexpr int kSlice = Shape<WORKERS>::slice;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __shared__ __align__(8) uint64_t full[kStages];
  __shared__ float warp_parts[32][kPartFloats];
  // Two buffers of the blocks' pushed parts and their mbarriers: the k-th merged row uses buffer k % 2 (reuse:
  // row_merge). Ignored rows take no buffer, in every block of the cluster alike.
  __shared__ PartSlot rank_parts[2][kMaxClusterBlocks];
  __shared__ __align__(8) uint64_t parts_landed[2];

  const int rank = static_cast<int>(blockIdx.x % cluster_size);
  const int64_t cluster_id = blockIdx.x / cluster_size, clusters = gridDim.x / cluster_size;
  const int64_t my_rows = cluster_id < p.rows ? (p.rows - 1 - cluster_id) / clusters + 1 : 0;
  const int64_t vocab = p.vocab;
  const int64_t begin = int64_t(rank) * kSlice;
  const int count = static_cast<int>(max(int64_t(0), min(int64_t(kSlice), vocab - begin)));
  const bool producer = threadIdx.x < 32;
  const int worker = static_cast<int>(threadIdx.x) - 32;  // 0..WORKERS-1 for worker threads
  T* const buffers = reinterpret_cast<T*>(smem_raw);     // stage s: student at 2 s slice, teacher after it
  auto student_buffer = [&](int64_t i) { return buffers + 2 * int64_t(i % kStages) * kSlice; };
  auto row_of = [&](int64_t i) { return cluster_id + i * clusters; };
  const float grad_scale = p.grad && p.grad_scale ? *p.grad_scale : 1.f;

  // Slice tails past the vocabulary read as -inf (they add nothing); the copies never write there.
  const T minus_inf = Io<T>::from_float(-INFINITY);
  for (int e = count + static_cast<int>(threadIdx.x); e < kSlice; e += blockDim.x)
    for (int s = 0; s < kStages; ++s) {
      buffers[2 * s * kSlice + e] = minus_inf;
      buffers[(2 * s + 1) * kSlice + e] = minus_inf;
    }
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) mbarrier_init(&full[s], 1);
    for (int b = 0; b < 2; ++b) mbarrier_init(&parts_landed[b], 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  // Other blocks push into parts_landed: all of them must be initialised first.
  if (cluster_size > 1) {
    asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
    asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
  } else {
    __syncthreads();
  }

  auto issue_row = [&](int64_t i) {  // thread 0: the copies of the cluster's i-th row into its buffer
    if (i >= my_rows) return;
    const int64_t row = row_of(i);
    T* s_smem = student_buffer(i);
    uint64_t* bar = &full[i % kStages];
    if (count == 0) {  // a block wholly past the vocabulary: nothing to copy, the phase completes at once
      asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_address(bar)) : "memory");
      return;
    }
    const unsigned bytes = static_cast<unsigned>(count) * sizeof(T);
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // our reads of the buffer precede the copy
    mbarrier_arrive_expect_bytes(bar, 2 * bytes);
    bulk_copy(s_smem, static_cast<const T*>(p.student) + row * p.student_stride + begin, bytes, bar);
    bulk_copy(s_smem + kSlice, static_cast<const T*>(p.teacher) + row * p.teacher_stride + begin, bytes, bar);
  };
  if (threadIdx.x == 0)
    for (int i = 0; i < kStages - 1; ++i) issue_row(i);

  int merged = 0;  // rows merged so far (their parity picks the rank_parts buffer)
  for (int64_t i = 0; i < my_rows; ++i) {
    const int64_t row = row_of(i);
    T* grad_row = p.grad ? static_cast<T*>(p.grad) + row * p.grad_stride + begin : nullptr;
    const int64_t label = p.labels ? p.labels[row] : -1;
    // Row i - 1's buffer was last read in its stage 2, and every thread has passed a block barrier since:
    // refill it with row i + stages - 1.
    if (threadIdx.x == 0) issue_row(i + kStages - 1);
    mbarrier_wait(&full[i % kStages], unsigned((i / kStages) & 1));
    if (p.labels && label == p.ignore_index) {  // the whole cluster skips the row together: same label
      if (grad_row && !producer) {
        const float zeros[W] = {};
#pragma unroll
        for (int j = 0; j < V4; ++j) {
          const int e = (j * WORKERS + worker) * W;
          if (e < count) store_vector(grad_row, e, count, true, zeros);
        }
      }
      if (rank == 0 && threadIdx.x == kLossThread) p.row_loss[row] = 0.f;
      __syncthreads();  // keeps the refill rule above: a block barrier between two rows
      continue;
    }
    const bool label_in_range = label >= 0 && label < vocab;
    // Read before the row's cluster barrier: with an in-place gradient no block writes this row before its
    // stage 4 (the bulk copy of this row has landed already).
    float label_logit = 0.f;
    if (HAS_CE && rank == 0 && threadIdx.x == kLossThread)
      label_logit = label_in_range ? Io<T>::to_float(static_cast<const T*>(p.student)[row * p.student_stride + label]) : NAN;

    const uint4* s_vec = reinterpret_cast<const uint4*>(student_buffer(i));
    const uint4* t_vec = reinterpret_cast<const uint4*>(student_buffer(i) + kSlice);
    // Stages 1 and 2 in online form: this thread's maxima, its exps at them (kept), its sums; the producer warp
    // brings an empty part.
    KdOnlinePart mine;
    float es[V4 * W], et[V4 * W];
    KdRowMath<kKindForwardKl> math;
    if (!producer) {
      VectorMax<T> max_s, max_t;
#pragma unroll
      for (int j = 0; j < V4; ++j) {
        max_s.add(s_vec[j * WORKERS + worker]);
        max_t.add(t_vec[j * WORKERS + worker]);
      }
      mine.max_s = max_s.value();
      mine.max_t = max_t.value();
      math.begin(p.temperature, p.jsd_beta, mine.max_s == -INFINITY ? 0.f : mine.max_s,
                 mine.max_t == -INFINITY ? 0.f : mine.max_t, HAS_CE);
      float sums[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int j = 0; j < V4; ++j) {
        float zs[W], zt[W];
        Io<T>::unpack(s_vec[j * WORKERS + worker], zs);
        Io<T>::unpack(t_vec[j * WORKERS + worker], zt);
#pragma unroll
        for (int k = 0; k < W; ++k) math.accumulate_sums_keeping_exps(zs[k], zt[k], sums, es[j * W + k], et[j * W + k]);
      }
      mine.sum_s = sums[0];
      mine.sum_t = sums[1];
      mine.cross = sums[2];
    } else {
      math.begin(p.temperature, p.jsd_beta, 0.f, 0.f, HAS_CE);  // for c only
    }
    const float c = math.c;
    // The merge's barriers also say that nobody reads row i's slice buffer any more.
    const KdOnlinePart row_part = row_merge(mine, c, warp_parts, rank_parts[merged & 1], &parts_landed[merged & 1],
                                            unsigned(merged >> 1) & 1u, cluster_size, rank);
    ++merged;
    math.begin(p.temperature, p.jsd_beta, row_part.max_s, row_part.max_t, HAS_CE);
    const float totals[4] = {row_part.sum_s, row_part.sum_t, row_part.cross, 0.f};
    math.finish_sums(totals);
    if (rank == 0 && threadIdx.x == kLossThread) p.row_loss[row] = math.row_loss(p.kd_weight, p.ce_weight, HAS_CE, label_logit);

    // Stage 4: the gradient, written once, by the workers, from their kept exps rescaled to the row maxima.
    if (grad_row && !producer) {
      const float kd_factor = grad_scale * p.kd_weight * p.temperature, ce_factor = grad_scale * p.ce_weight;
      const float q_scale = KdOnlinePart::factor(mine.max_s, row_part.max_s, c) * math.inv_sum_s;
      const float p_scale = KdOnlinePart::factor(mine.max_t, row_part.max_t, c) * math.inv_sum_t;
      const int64_t local_label = HAS_CE && label_in_range ? label - begin : -1;
#pragma unroll
      for (int j = 0; j < V4; ++j) {
        const int e = (j * WORKERS + worker) * W;
        if (e >= count) continue;
        float g[W];
#pragma unroll
        for (int k = 0; k < W; ++k)
          g[k] = math.forward_kl_gradient_from_exps(es[j * W + k], et[j * W + k], HAS_CE && e + k == local_label,
                                                    HAS_CE, kd_factor, ce_factor, q_scale, p_scale);
        store_vector(grad_row, e, count, true, g);
      }
    }
  }
  // Every block waits for all pushes into its own shared memory before it leaves (each merged row's parts);
  // this barrier also keeps the blocks' exits together, so no block's shared memory goes while a push is in flight.
  if (cluster_size > 1) {
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
    asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
  }
}

template <typename T, int WORKERS, bool HAS_CE>
cudaError_t launch(const KdRowParams& p, cudaStream_t stream) {
  constexpr int slice = Shape<WORKERS>::slice;
  const int64_t cluster_size = (p.vocab + slice - 1) / slice;
  if (cluster_size > kMaxClusterBlocks) return cudaErrorNotSupported;
  void* kernel = reinterpret_cast<void*>(&kd_forward_kl_tma_kernel<T, WORKERS, HAS_CE>);
  const size_t smem = size_t(kStages) * 2 * slice * sizeof(T);
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (err == cudaSuccess && cluster_size > 8)
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // the caller falls back to another shape
    return cudaErrorNotSupported;
  }
  int cluster = static_cast<int>(cluster_size);
  void* args[] = {const_cast<KdRowParams*>(&p), &cluster};
  return launch_persistent_clusters(kernel, cluster, Shape<WORKERS>::threads, smem, p.rows, args, stream);
}

// 512 workers: one block per SM, clusters of 8 at V 131072. 256 workers: two blocks per SM, clusters of 16. With
// the cluster barrier per row 256 took 5.05 ms against 3.21 ms (H100, N 8192, V 131072 bf16); with st.async
// pushes the two are within run-to-run noise (2.41 ms for 256, 2.52 for 512 in one run).
// KdRowParams::tma_workers = 256 (KdOptions::tma_workers) asks for the narrow block (the benchmark and GPU tests time
// and check both).
template <typename T, bool HAS_CE>
cudaError_t launch_workers(const KdRowParams& p, cudaStream_t stream) {
  const bool narrow = p.tma_workers == 256 && p.vocab <= int64_t(kMaxClusterBlocks) * Shape<256>::slice;
  return narrow ? launch<T, 256, HAS_CE>(p, stream) : launch<T, 512, HAS_CE>(p, stream);
}

template <typename T>
cudaError_t launch_typed(const KdRowParams& p, cudaStream_t stream) {
  const bool has_ce = p.labels != nullptr && p.ce_weight != 0.f;
  if (has_ce && p.temperature != 1.f) return cudaErrorNotSupported;
  return has_ce ? launch_workers<T, true>(p, stream) : launch_workers<T, false>(p, stream);
}

bool rows_aligned(const KdRowParams& p) {
  auto aligned = [](const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; };
  constexpr int64_t kElementsPer16Bytes = 8;  // 16-bit logits
  return p.vocab % kElementsPer16Bytes == 0 && aligned(p.student) && aligned(p.teacher) && (!p.grad || aligned(p.grad)) &&
         p.student_stride % kElementsPer16Bytes == 0 && p.teacher_stride % kElementsPer16Bytes == 0 &&
         (!p.grad || p.grad_stride % kElementsPer16Bytes == 0);
}

}  // namespace

cudaError_t kd_rows_tma_launch(const KdRowParams& params, cudaStream_t stream) {
  if (params.kind != KdKind::forward_kl || !rows_aligned(params)) return cudaErrorNotSupported;
  switch (params.dtype) {
    case KdDtype::bf16: return launch_typed<__nv_bfloat16>(params, stream);
    case KdDtype::f16: return launch_typed<__half>(params, stream);
    case KdDtype::f32: return cudaErrorNotSupported;  // 2x the registers and buffers: kd_loss.cu's shapes
  }
  return cudaErrorNotSupported;
}

}  // namespace mp::kernels
