// Which CUDA kernel shape runs the KD loss rows (kd_loss.cu, kd_loss_tma.cu): the one enum shared by the options
// (KdOptions::kernel, include/minipuzzle/kd.h) and the raw launcher (src/kernels/kd_loss_cuda.h). No torch and no
// CUDA here, so both sides include it. Ignored on CPU.
//   automatic    : cluster_tma where it applies (forward KL, 16-bit logits, V a multiple of 8 up to 262144, CE
//                  only at T = 1), else cluster_smem when a row fits the cluster's shared memory (and the device
//                  can co-schedule the cluster), otherwise two_pass. cluster_pipelined only when asked.
//   cluster_tma  : persistent clusters of up to 16 blocks; a producer warp streams rows into a ring of shared-memory
//                  buffers with TMA bulk copies while the workers keep stage 2's exponentials in registers for the
//                  gradient (two exps per element instead of four); kd_loss_tma.cu says why.
//   cluster_smem : a cluster of up to 8 blocks holds one row in shared memory: logits are read from HBM once and
//                  the gradient written once (the bandwidth-optimal shape on Hopper).
//   two_pass     : one block per row reading the row from global memory in each stage (any size; the fallback).
//   cluster_pipelined : cluster_smem made persistent: each block keeps several slice buffers and copies the next
//                  rows while computing the current one (memory and arithmetic overlap). automatic takes it when
//                  at least two buffers fit (16-bit logits up to V ~ 230k, fp32 ~ 115k), else cluster_smem, else two_pass.
#pragma once
#include <cstring>

namespace mp {

enum class KdKernel : int { automatic = 0, cluster_smem = 1, two_pass = 2, cluster_pipelined = 3, cluster_tma = 4 };

inline const char* kd_kernel_name(KdKernel k) {
  switch (k) {
    case KdKernel::automatic: return "auto";
    case KdKernel::cluster_smem: return "cluster_smem";
    case KdKernel::two_pass: return "two_pass";
    case KdKernel::cluster_pipelined: return "cluster_pipelined";
    case KdKernel::cluster_tma: return "cluster_tma";
  }
  return "?";
}

// "auto", "cluster_tma", "cluster_pipelined", "cluster_smem" or "two_pass" -> true and *out; anything else false.
inline bool parse_kd_kernel(const char* name, KdKernel* out) {
  for (KdKernel k : {KdKernel::automatic, KdKernel::cluster_smem, KdKernel::two_pass, KdKernel::cluster_pipelined,
                     KdKernel::cluster_tma})
    if (std::strcmp(name, kd_kernel_name(k)) == 0) return *out = k, true;
  return false;
}

}  // namespace mp
