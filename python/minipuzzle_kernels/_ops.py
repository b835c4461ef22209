"""Fake (meta) kernels for the minipuzzle:: custom ops, registered with torch.library.

The C++ ops (csrc/ops.cpp) return the loss together with the gradient for a loss gradient of 1 (the kernels
make both in one pass); their autograd kernels (C++, Autograd key) save that gradient and, at backward, scale it
in place by the incoming loss gradient (minipuzzle::scale_grad_, a no-op for the usual 1.0). The fake kernels
give torch.compile the output shapes and dtypes, so a loss built on these ops traces with fullgraph=True.
"""
import torch

from . import _C  # noqa: F401  (loads the library: TORCH_LIBRARY(minipuzzle, ...))



@torch.library.register_fake("minipuzzle::kd_loss")
def _kd_loss_fake(student_logits, teacher_logits, labels=None, divergence="forward_kl", temperature=1.0,
                  jsd_beta=0.5, kd_weight=1.0, ce_weight=0.0, ignore_index=-100, reduction="mean",
                  compute_grad=True):
    torch._check(student_logits.dim() >= 1 and student_logits.shape == teacher_logits.shape,
                 lambda: f"kd_loss: student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape [..., vocab]")
    torch._check(student_logits.dtype == teacher_logits.dtype,
                 lambda: f"kd_loss: student logits are {student_logits.dtype}, teacher {teacher_logits.dtype}")
    loss = student_logits.new_empty((), dtype=torch.float32)
    if compute_grad:
        grad = torch.empty_like(student_logits, memory_format=torch.contiguous_format)
    else:
        grad = student_logits.new_empty((0,))
    return loss, grad


@torch.library.register_fake("minipuzzle::linear_kd")
def _linear_kd_fake(student_input, student_weight, teacher_input, teacher_weight, teacher_logits=None, labels=None,
                    divergence="forward_kl", temperature=1.0, jsd_beta=0.5, kd_weight=1.0, ce_weight=0.0,
                    ignore_index=-100, reduction="mean", token_chunk=0, logits_buffer_bytes=384 << 20,
                    grad_input=True, grad_weight=True):
    torch._check(student_weight.dim() == 2 and student_input.shape[-1] == student_weight.shape[1],
                 lambda: f"linear_kd: student input {tuple(student_input.shape)} does not match its lm_head "
                         f"{tuple(student_weight.shape)} (expected [..., H] and [V, H])")
    loss = student_input.new_empty((), dtype=torch.float32)
    gi = (torch.empty_like(student_input, memory_format=torch.contiguous_format) if grad_input
          else student_input.new_empty((0,)))
    gw = (torch.empty_like(student_weight, memory_format=torch.contiguous_format) if grad_weight
          else student_weight.new_empty((0,)))
    return loss, gi, gw


@torch.library.register_fake("minipuzzle::scale_grad_")
def _scale_grad_fake(grad, grad_output):
    return None
