"""nn.Module forms. FusedLinearKDLoss and KLDivLoss take Liger's constructor and forward arguments
(LigerFusedLinearJSD, LigerKLDIVLoss) and give Liger's value with the defaults; KDLoss is the full native form."""
from typing import Optional

import torch
from torch import nn

from . import functional as F


class FusedLinearKDLoss(nn.Module):
    """Fused lm_head + KD loss, a drop-in for LigerFusedLinearJSD(jsd_beta, ignore_index, temperature).

    forward(student_input [..., Hs], student_weight [V, Hs], teacher_input [..., Ht], teacher_weight [V, Ht],
    shift_labels [...] or None) -> scalar float32.
    Defaults reproduce Liger's value: generalized JSD (jsd_beta 0 forward KL, 1 reverse KL) without the T^2
    factor. Beyond Liger: divergence= ("forward_kl", "reverse_kl", "jsd") overrides the beta rule; kd_weight (None:
    1 / T^2, Liger's scale; 1.0: the usual Hinton T^2 scaling); ce_weight adds cross-entropy on shift_labels;
    reduction "mean" or "sum"; token_chunk (0: automatic, logits buffer of logits_buffer_bytes).
    """

    def __init__(self, jsd_beta: float = 0.5, ignore_index: int = -100, temperature: float = 1.0, *,
                 divergence: Optional[str] = None, kd_weight: Optional[float] = None, ce_weight: float = 0.0,
                 reduction: str = "mean", token_chunk: int = 0, logits_buffer_bytes: int = 384 << 20):
        super().__init__()
        if divergence is None:
            if not 0.0 <= jsd_beta <= 1.0:
                raise ValueError(f"FusedLinearKDLoss: jsd_beta must be in [0, 1], got {jsd_beta}")
            divergence = F._liger_divergence(jsd_beta)
        if divergence not in F._DIVERGENCES:
            raise ValueError(f"FusedLinearKDLoss: divergence is '{divergence}'; expected one of {F._DIVERGENCES}")
        self.jsd_beta, self.ignore_index, self.temperature = jsd_beta, ignore_index, temperature
        self.divergence = divergence
        self.kd_weight = 1.0 / (temperature * temperature) if kd_weight is None else kd_weight
        self.ce_weight, self.reduction = ce_weight, reduction
        self.token_chunk, self.logits_buffer_bytes = token_chunk, logits_buffer_bytes

    def forward(self, student_input, student_weight, teacher_input, teacher_weight, shift_labels=None):
        return F.linear_kd(student_input, student_weight, teacher_input, teacher_weight, shift_labels,
                           divergence=self.divergence, temperature=self.temperature, jsd_beta=self.jsd_beta,
                           kd_weight=self.kd_weight, ce_weight=self.ce_weight, ignore_index=self.ignore_index,
                           reduction=self.reduction, token_chunk=self.token_chunk,
                           logits_buffer_bytes=self.logits_buffer_bytes)

    def extra_repr(self):
        return (f"divergence={self.divergence}, jsd_beta={self.jsd_beta}, temperature={self.temperature}, "
                f"kd_weight={self.kd_weight}, ce_weight={self.ce_weight}, ignore_index={self.ignore_index}")


class KDLoss(nn.Module):
    """Fused KD loss on logits: forward(student_logits [..., V], teacher_logits [..., V], labels=None) -> scalar.
    kd_weight * T^2 * D(teacher || student) + ce_weight * CE, mean over valid tokens or sum (see functional)."""

    def __init__(self, divergence: str = "forward_kl", temperature: float = 1.0, jsd_beta: float = 0.5,
                 kd_weight: float = 1.0, ce_weight: float = 0.0, ignore_index: int = -100, reduction: str = "mean"):
        super().__init__()
        if divergence not in F._DIVERGENCES:
            raise ValueError(f"KDLoss: divergence is '{divergence}'; expected one of {F._DIVERGENCES}")
        self.divergence, self.temperature, self.jsd_beta = divergence, temperature, jsd_beta
        self.kd_weight, self.ce_weight, self.ignore_index, self.reduction = kd_weight, ce_weight, ignore_index, reduction

    def forward(self, student_logits, teacher_logits, labels=None):
        return F.kd_loss(student_logits, teacher_logits, labels, divergence=self.divergence,
                         temperature=self.temperature, jsd_beta=self.jsd_beta, kd_weight=self.kd_weight,
                         ce_weight=self.ce_weight, ignore_index=self.ignore_index, reduction=self.reduction)


class KLDivLoss(nn.Module):
    """A drop-in for LigerKLDIVLoss / nn.KLDivLoss over the last (vocabulary) dimension: forward(y_pred, y_true)
    with y_pred the student's log-probabilities and y_true the teacher's probabilities (log with log_target)."""

    def __init__(self, eps: float = 1e-10, reduction: str = "mean", log_target: bool = False):
        super().__init__()
        self.eps, self.reduction, self.log_target = eps, reduction, log_target

    def forward(self, y_pred, y_true):
        return F.kl_div(y_pred, y_true, self.reduction, self.log_target, self.eps)
