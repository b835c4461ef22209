#!/usr/bin/env python3
"""The PyTorch baseline of bench_distill: the same distillation step written the usual way, on the same configs.

transformers' NemotronHForCausalLM for student and teacher (random weights), the student in float32 under bf16
autocast (fp32 master weights, as minipuzzle keeps them), the teacher in bf16 under no_grad, eager KD on full
logits: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE, backward, clip_grad_norm_(1.0),
torch.optim.AdamW (betas 0.9/0.95, weight decay 0.1 on matrices). Prints one JSON line like bench_distill.
usage: bench_distill_torch.py --config-dir DIR [--batch 2] [--seq 2048] [--steps 4] [--warmup 2] [--device cuda]
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import NemotronHConfig, NemotronHForCausalLM


def kd_step(student, teacher, opt, ids, labels, alpha, temperature, device):
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        t_logits = teacher(input_ids=ids).logits.float()
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        s_logits = student(input_ids=ids).logits
    s_logits = s_logits.float().flatten(0, 1)
    t_logits = t_logits.flatten(0, 1)
    log_q = F.log_softmax(s_logits / temperature, dim=-1)
    log_p = F.log_softmax(t_logits / temperature, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean() * temperature**2
    ce = F.cross_entropy(s_logits, labels.flatten())
    loss = alpha * kl + (1 - alpha) * ce
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    opt.step()
    return loss.item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config-dir", required=True)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    device = torch.device(a.device)
    result = {"bench": "distill_step", "implementation": "pytorch (transformers NemotronH + eager KD)",
              "device": str(device), "batch": a.batch, "seq": a.seq, "tokens_per_step": a.batch * a.seq}
    try:
        torch.manual_seed(0)
        s_cfg = NemotronHConfig.from_pretrained(a.config_dir + "/student")
        t_cfg = NemotronHConfig.from_pretrained(a.config_dir + "/teacher")
        with torch.device(device):  # initialise on the device (CPU init of 3B parameters takes minutes)
            student = NemotronHForCausalLM(s_cfg).to(torch.float32).train()
            teacher = NemotronHForCausalLM(t_cfg).to(torch.bfloat16 if device.type == "cuda" else torch.float32).eval()
        teacher.requires_grad_(False)
        result["student_params"] = sum(p.numel() for p in student.parameters())
        result["teacher_params"] = sum(p.numel() for p in teacher.parameters())
        decay = [p for p in student.parameters() if p.dim() >= 2]
        no_decay = [p for p in student.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=1e-4, betas=(0.9, 0.95), eps=1e-8)
        g = torch.Generator().manual_seed(3)
        ids = torch.randint(0, s_cfg.vocab_size, (a.batch, a.seq), generator=g).to(device)
        labels = torch.randint(0, s_cfg.vocab_size, (a.batch, a.seq), generator=g).to(device)
        losses, times = [], []
        for i in range(a.warmup + a.steps):
            if i == a.warmup and device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            losses.append(kd_step(student, teacher, opt, ids, labels, 0.5, 1.0, device))
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= a.warmup:
                times.append(time.perf_counter() - t0)
        step_s = statistics.median(times)
        result.update(steps_timed=a.steps, step_s_median=step_s, tokens_per_s=a.batch * a.seq / step_s, losses=losses,
                      peak_memory_gib=(torch.cuda.max_memory_allocated() / 2**30) if device.type == "cuda" else 0.0,
                      dtype="fp32 params + bf16 autocast (student), bf16 (teacher)")
    except torch.cuda.OutOfMemoryError as e:
        result["error"] = "out of memory: " + str(e).split("\n")[0]
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(result))


if __name__ == "__main__":
    main()
