"""minipuzzle's fused KD losses for any PyTorch trainer (issue 23).

    from minipuzzle_kernels import FusedLinearKDLoss          # instead of liger_kernel's LigerFusedLinearJSD
    loss_fn = FusedLinearKDLoss(jsd_beta=0.5, temperature=2.0)
    loss = loss_fn(student_hidden, student.lm_head.weight, teacher_hidden, teacher.lm_head.weight, labels)

Ops: torch.ops.minipuzzle.kd_loss, torch.ops.minipuzzle.linear_kd (differentiable, fake kernels registered).
"""
from .functional import built_with_cuda, fused_linear_jsd, kd_loss, kl_div, linear_kd
from .modules import FusedLinearKDLoss, KDLoss, KLDivLoss

__all__ = ["FusedLinearKDLoss", "KDLoss", "KLDivLoss", "built_with_cuda", "fused_linear_jsd", "kd_loss", "kl_div",
           "linear_kd"]
