"""Functional forms of minipuzzle's fused KD losses (torch custom ops, differentiable, torch.compile-traceable).

Loss per valid token (label != ignore_index, or every token without labels):
    kd_weight * T^2 * D(teacher_T || student_T) + ce_weight * CE(student logits at T = 1, label)
with D forward_kl KL(p||q), reverse_kl KL(q||p) or jsd beta*KL(p||m) + (1-beta)*KL(q||m), m = beta*p + (1-beta)*q
(p teacher, q student, softmax of logits / T); mean over valid tokens or sum. The teacher gets no gradient.
The same math and kernels as the C++ trainer (include/minipuzzle/kd.h).

fused_linear_jsd and kl_div mirror Liger-Kernel's liger_fused_linear_jsd and liger_kl_div (arguments and value),
so switching is a one-line change.
"""
from typing import Optional

import torch

from . import _ops  # noqa: F401  (registers fake kernels and autograd)

_lib = torch.ops.minipuzzle
_DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


def _wants_grad(t: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and t.requires_grad


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: Optional[torch.Tensor] = None, *,
            divergence: str = "forward_kl", temperature: float = 1.0, jsd_beta: float = 0.5,
            kd_weight: float = 1.0, ce_weight: float = 0.0, ignore_index: int = -100,
            reduction: str = "mean") -> torch.Tensor:
    """Fused KD loss on logits [..., V] (float32/float16/bfloat16, student and teacher alike) -> float32 scalar.

    Forward computes the gradient too (one pass over both logits); backward hands it out.
    """
    loss, _ = _lib.kd_loss(student_logits, teacher_logits, labels, divergence, float(temperature), float(jsd_beta),
                           float(kd_weight), float(ce_weight), int(ignore_index), reduction,
                           _wants_grad(student_logits))
    return loss


def linear_kd(student_input: torch.Tensor, student_weight: torch.Tensor,
              teacher_input: Optional[torch.Tensor] = None, teacher_weight: Optional[torch.Tensor] = None,
              labels: Optional[torch.Tensor] = None, *, teacher_logits: Optional[torch.Tensor] = None,
              divergence: str = "forward_kl", temperature: float = 1.0, jsd_beta: float = 0.5,
              kd_weight: float = 1.0, ce_weight: float = 0.0, ignore_index: int = -100, reduction: str = "mean",
              token_chunk: int = 0, logits_buffer_bytes: int = 384 << 20) -> torch.Tensor:
    """Fused lm_head + KD loss: student hidden states [..., Hs] and lm_head [V, Hs]; the teacher as hidden states
    [..., Ht] and lm_head [V, Ht], or as logits [..., V] (teacher_logits=). Full [N, V] logits never exist: they
    are made token_chunk tokens at a time (0: as many as fit logits_buffer_bytes). Gradients reach student_input
    and student_weight (each only if it requires grad)."""
    gi, gw = _wants_grad(student_input), _wants_grad(student_weight)
    loss, _, _ = _lib.linear_kd(student_input, student_weight, teacher_input, teacher_weight, teacher_logits, labels,
                                divergence, float(temperature), float(jsd_beta), float(kd_weight), float(ce_weight),
                                int(ignore_index), reduction, int(token_chunk), int(logits_buffer_bytes), gi, gw)
    return loss


def _liger_divergence(jsd_beta: float):
    # Liger's generalized JSD: beta = 0 is forward KL(p||q), beta = 1 reverse KL(q||p), in between the JSD.
    if jsd_beta == 0.0:
        return "forward_kl"
    if jsd_beta == 1.0:
        return "reverse_kl"
    return "jsd"


def fused_linear_jsd(student_input: torch.Tensor, student_weight: torch.Tensor, teacher_input: torch.Tensor,
                     teacher_weight: torch.Tensor, shift_labels: Optional[torch.Tensor] = None,
                     jsd_beta: float = 0.5, ignore_index: int = -100, temperature: float = 1.0) -> torch.Tensor:
    """Liger's liger_fused_linear_jsd, same arguments and value: the generalized JSD of softmax(logits / T),
    mean over tokens whose shift_label != ignore_index, without the T^2 factor (so kd_weight = 1 / T^2 here)."""
    if not 0.0 <= jsd_beta <= 1.0:
        raise ValueError(f"fused_linear_jsd: jsd_beta must be in [0, 1], got {jsd_beta}")
    return linear_kd(student_input, student_weight, teacher_input, teacher_weight, shift_labels,
                     divergence=_liger_divergence(jsd_beta), temperature=temperature, jsd_beta=jsd_beta,
                     kd_weight=1.0 / (temperature * temperature), ignore_index=ignore_index)


def kl_div(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean", log_target: bool = False,
           eps: float = 1e-10) -> torch.Tensor:
    """Liger's liger_kl_div / torch's kl_div over the last (vocabulary) dimension: input holds the student's
    log-probabilities, target the teacher's probabilities (log-probabilities with log_target). Runs the fused
    forward-KL kernel, which log-softmaxes its input again (the identity on log-probabilities; the gradient that
    reaches the logits before a log_softmax is kl_div's). reduction: mean (sum / numel, torch's and Liger's
    default), batchmean (sum / input.size(0)) or sum; no "none". Target entries of 0 contribute 0; no gradient
    reaches the target; eps is accepted for Liger's signature (zeros are exact here)."""
    if reduction not in ("batchmean", "sum", "mean"):
        raise ValueError(f"kl_div: reduction is '{reduction}'; supported: batchmean, sum, mean")
    teacher = target if log_target else torch.log(target)
    total = kd_loss(input, teacher.to(input.dtype), divergence="forward_kl", reduction="sum")
    if reduction == "batchmean":
        return total / input.shape[0]
    if reduction == "mean":
        return total / input.numel()
    return total


def built_with_cuda() -> bool:
    """Whether this build of the package has the CUDA kernels."""
    return bool(_lib.built_with_cuda())
