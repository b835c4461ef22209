// Raw launchers of the relu^2 activation (relu2.cu): out = relu(x)^2, dx = 2 relu(x) dout. No torch here.
// Fusing saves ATen's separate relu and multiply passes (and their saved intermediate) over the MLP's widest
// activation.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/mamba_cuda_common.h"

namespace mp::kernels {

// x, out: n contiguous elements of `type`.
cudaError_t relu_squared_forward_launch(const void* x, void* out, int64_t n, ElemType type, cudaStream_t stream);
// x, grad_out, grad_x: n contiguous elements of `type`.
cudaError_t relu_squared_backward_launch(const void* x, const void* grad_out, void* grad_x, int64_t n, ElemType type,
                                         cudaStream_t stream);

}  // namespace mp::kernels
