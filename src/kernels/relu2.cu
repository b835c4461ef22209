// relu(x)^2 forward and backward as single elementwise passes (see relu2_cuda.h), grid-stride loops.
#include "kernels/mamba_cuda_common.cuh"
#include "kernels/relu2_cuda.h"

namespace mp::kernels {
namespace {

constexpr int kThreads = 256;

unsigned grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return unsigned(blocks < 65535 * 16 ? blocks : 65535 * 16);
}

__global__ void relu_squared_forward_kernel(const void* x, void* out, int64_t n, ElemType type) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = fmaxf(load_elem(x, i, type), 0.f);
    store_elem(out, i, type, v * v);
  }
}

__global__ void relu_squared_backward_kernel(const void* x, const void* grad_out, void* grad_x, int64_t n,
                                             ElemType type) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = fmaxf(load_elem(x, i, type), 0.f);
    store_elem(grad_x, i, type, 2.f * v * load_elem(grad_out, i, type));
  }
}

}  // namespace

cudaError_t relu_squared_forward_launch(const void* x, void* out, int64_t n, ElemType type, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  relu_squared_forward_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, out, n, type);
  return cudaGetLastError();
}

cudaError_t relu_squared_backward_launch(const void* x, const void* grad_out, void* grad_x, int64_t n, ElemType type,
                                         cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  relu_squared_backward_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, grad_out, grad_x, n, type);
  return cudaGetLastError();
}

}  // namespace mp::kernels
