#!/usr/bin/env python3
"""Distill a tiny transformers student from a tiny teacher twice: once with minipuzzle_kernels' FusedLinearKDLoss
(lm_head + KD fused, no [N, V] logits) and once with the same loss written in eager PyTorch on full logits.
Both runs start from the same weights and see the same batches, so their loss curves must agree; the script
prints them side by side with tokens/s and peak memory (CUDA: max_memory_allocated; CPU: the run's peak RSS,
each run in its own process so the peaks are separate) and exits 1 when the curves differ beyond --rtol.

    python python/examples/distill_tiny.py                 # CPU, a few seconds per run
    python python/examples/distill_tiny.py --device cuda --vocab 32000 --seq 1024 --batch 8

The models are random LLaMA configs from transformers (teacher 4 layers x 256, student 2 x 128 by default) and
the batches random token ids: the point is the loss plumbing, not the model quality.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--jsd-beta", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--rtol", type=float, default=2e-3, help="allowed relative difference of the two loss curves")
    p.add_argument("--variant", choices=["fused", "eager"], help=argparse.SUPPRESS)  # one run, JSON on stdout
    p.add_argument("--json", help="write the comparison here as JSON")
    return p.parse_args(argv)


def build_models(args, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    def config(hidden, layers, heads):
        return LlamaConfig(vocab_size=args.vocab, hidden_size=hidden, intermediate_size=4 * hidden,
                           num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                           max_position_embeddings=max(args.seq, 128), tie_word_embeddings=False)

    torch.manual_seed(0)
    teacher = LlamaForCausalLM(config(256, 4, 4)).to(device).eval().requires_grad_(False)
    torch.manual_seed(1)
    student = LlamaForCausalLM(config(128, 2, 4)).to(device).train()
    return teacher, student


def batches(args, device):
    g = torch.Generator().manual_seed(2)
    for _ in range(args.steps):
        ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g)
        labels = ids[:, 1:].clone()
        labels[:, -args.seq // 8:] = -100  # a padded tail, as real batches have: ignored by the loss
        yield ids.to(device), labels.to(device)


def eager_jsd(student_logits, teacher_logits, labels, beta, temperature, ignore_index=-100):
    """Liger's / FusedLinearKDLoss's default loss written in plain PyTorch on full logits (float32)."""
    log_q = F.log_softmax(student_logits.float() / temperature, -1)
    log_p = F.log_softmax(teacher_logits.float() / temperature, -1)
    log_m = torch.logsumexp(torch.stack([log_p + torch.log(torch.tensor(beta)),
                                         log_q + torch.log(torch.tensor(1 - beta))]), 0)
    per_token = (beta * (log_p.exp() * (log_p - log_m)).sum(-1)
                 + (1 - beta) * (log_q.exp() * (log_q - log_m)).sum(-1))
    valid = labels != ignore_index
    return (per_token * valid).sum() / valid.sum().clamp_min(1)


def run(args):
    device = torch.device(args.device)
    teacher, student = build_models(args, device)
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr)
    if args.variant == "fused":
        from minipuzzle_kernels import FusedLinearKDLoss
        loss_fn = FusedLinearKDLoss(jsd_beta=args.jsd_beta, temperature=args.temperature)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses, times = [], []
    for ids, labels in batches(args, device):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.no_grad():
            teacher_hidden = teacher.model(ids).last_hidden_state[:, :-1]
        hidden = student.model(ids).last_hidden_state[:, :-1]
        if args.variant == "fused":
            loss = loss_fn(hidden, student.lm_head.weight, teacher_hidden, teacher.lm_head.weight, labels)
        else:
            with torch.no_grad():
                teacher_logits = teacher.lm_head(teacher_hidden)
            loss = eager_jsd(student.lm_head(hidden), teacher_logits, labels, args.jsd_beta, args.temperature)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())  # a sync: the step is done
        times.append(time.perf_counter() - start)
    timed = times[1:] or times  # the first step pays one-time costs
    result = {"variant": args.variant, "losses": losses,
              "tokens_per_s": args.batch * (args.seq - 1) * len(timed) / sum(timed)}
    if device.type == "cuda":
        result["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["memory_kind"] = "cuda_max_allocated"
    else:
        result["peak_memory_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["memory_kind"] = "cpu_peak_rss"
    return result


def main(argv=None):
    args = parse_args(argv)
    if args.variant:
        print(json.dumps(run(args)))
        return 0
    runs = {}
    for variant in ("fused", "eager"):
        cmd = [sys.executable, os.path.abspath(__file__), "--variant", variant] + (argv if argv is not None
                                                                                    else sys.argv[1:])
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        runs[variant] = json.loads(out.strip().splitlines()[-1])
    fused, eager = runs["fused"], runs["eager"]
    worst = 0.0
    print(f"{'step':>4} {'fused loss':>12} {'eager loss':>12} {'rel diff':>10}")
    for i, (a, b) in enumerate(zip(fused["losses"], eager["losses"])):
        rel = abs(a - b) / max(abs(b), 1e-12)
        worst = max(worst, rel)
        print(f"{i:>4} {a:>12.6f} {b:>12.6f} {rel:>10.2e}")
    kind = fused["memory_kind"]
    for r in (fused, eager):
        print(f"{r['variant']:>6}: {r['tokens_per_s']:10.0f} tokens/s, peak memory {r['peak_memory_mib']:8.1f} MiB "
              f"({kind})")
    ok = worst <= args.rtol and len(fused["losses"]) == len(eager["losses"]) == args.steps
    print(f"loss curves {'agree' if ok else 'DIFFER'}: worst relative difference {worst:.2e} (allowed {args.rtol})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "runs": runs, "worst_rel_diff": worst, "agree": ok}, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
