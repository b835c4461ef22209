// Device helpers shared by the Mamba-2 kernels: loading and storing the element types of mamba_cuda_common.h
// as float (the branch on the type is uniform across a launch, so it costs nothing next to the memory traffic).
#pragma once
#include <cuda_bf16.h>

#include "kernels/mamba_cuda_common.h"

namespace mp::kernels {

__device__ __forceinline__ float load_elem(const void* base, int64_t i, ElemType type) {
  return type == ElemType::f32 ? static_cast<const float*>(base)[i]
                               : __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
}

__device__ __forceinline__ void store_elem(void* base, int64_t i, ElemType type, float v) {
  if (type == ElemType::f32)
    static_cast<float*>(base)[i] = v;
  else
    static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16(v);
}

__device__ __forceinline__ float sigmoidf_fast(float v) { return 1.f / (1.f + __expf(-v)); }

}  // namespace mp::kernels
