// Shared by the Mamba-2 kernel launchers (causal_conv1d, gated_rmsnorm, ssd_scan): the element types a kernel
// reads or writes. No torch here; the bindings translate ATen dtypes into these tags.
#pragma once
#include <cstdint>

namespace mp::kernels {

enum class ElemType : int { f32 = 0, bf16 = 1 };

}  // namespace mp::kernels
