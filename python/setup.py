# Builds minipuzzle_kernels: the KD kernels as torch custom ops (issue 23), compiled from the repository's own
# kernel sources (../src/kernels) against the torch already installed, so install WITHOUT build isolation:
#     pip install --no-build-isolation ./python
# MINIPUZZLE_KERNELS_CUDA=auto (default: CUDA kernels when nvcc and a CUDA torch are present), 1 (require them)
# or 0 (CPU only, e.g. for the CPU test suite: nvcc on the KD kernels takes minutes).
# TORCH_CUDA_ARCH_LIST defaults to 9.0a (Hopper: the TMA/cluster kernels need sm_90a), as the CMake build.
import os
import shutil

from setuptools import setup
from torch.utils import cpp_extension

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(here)
kernels = os.path.join(root, "src", "kernels")
# The same sources the CLI links for the KD losses (src/kernels/CMakeLists.txt): binding, fused linear, CPU twin.
cpp_sources = [os.path.join(here, "minipuzzle_kernels", "csrc", "ops.cpp")] + [
    os.path.join(kernels, f) for f in ("kd_binding.cpp", "linear_kd.cpp", "kd_loss_cpu.cpp")
]
cuda_sources = [os.path.join(kernels, f) for f in ("kd_loss.cu", "kd_loss_tma.cu", "kd_scale_grad.cu")]

want = os.environ.get("MINIPUZZLE_KERNELS_CUDA", "auto").lower()
if want not in ("auto", "0", "1"):
    raise SystemExit(f"MINIPUZZLE_KERNELS_CUDA is '{want}'; expected auto, 0 or 1")
import torch  # noqa: E402

have_cuda = torch.version.cuda is not None and (cpp_extension.CUDA_HOME is not None or shutil.which("nvcc"))
if want == "1" and not have_cuda:
    raise SystemExit("MINIPUZZLE_KERNELS_CUDA=1 but nvcc or a CUDA build of torch is missing "
                     f"(torch {torch.__version__}, CUDA_HOME {cpp_extension.CUDA_HOME})")
use_cuda = bool(have_cuda) and want != "0"

# -g0: Python's CFLAGS add -g (slow to build, large). Unused function: kd_binding.cpp's CUDA-only helper.
cxx_flags = ["-O3", "-std=c++17", "-Wno-unused-parameter", "-Wno-unused-function", "-g0"]
include_dirs = [os.path.join(root, "include"), os.path.join(root, "src")]
if use_cuda:
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0a")
    ext = cpp_extension.CUDAExtension(
        "minipuzzle_kernels._C", cpp_sources + cuda_sources, include_dirs=include_dirs,
        define_macros=[("MINIPUZZLE_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx_flags,
                            "nvcc": ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr"]})
else:
    ext = cpp_extension.CppExtension("minipuzzle_kernels._C", cpp_sources, include_dirs=include_dirs,
                                     extra_compile_args={"cxx": cxx_flags})

setup(
    name="minipuzzle_kernels",
    version="0.1.0",
    description="minipuzzle's fused KD losses (KD loss, fused lm_head + KD) as torch custom ops",
    packages=["minipuzzle_kernels"],
    ext_modules=[ext],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
    python_requires=">=3.9",
)
