#!/usr/bin/env python3
"""Independent reference for `minipuzzle score`: the same importance criteria computed with transformers'
NemotronH, forward hooks and explicit loops, on the tiny reference models.

Writes, per model, importance_ids.safetensors (the calibration ids [N, L]) and importance_reference.json.
"""
import argparse
import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

MODELS = ["hybrid_g1", "hybrid_g2_tied"]
N, L = 6, 40


def mean_l2(acts):
    """acts: list of [B,T,C] -> per channel sqrt(sum over samples of (mean_t |a|)^2)."""
    m = torch.cat([a.abs().mean(1) for a in acts], 0).double()
    return m.pow(2).sum(0).sqrt()


def variance(acts):
    a = torch.cat([x.reshape(-1, x.shape[-1]) for x in acts], 0).double()
    return a.var(0, unbiased=False)


def taylor(model, ids, cfg):
    """First-order Taylor importance, as `score --taylor` defines it: per sample |sum over tokens of a * dL/da| per
    channel, summed over samples, with L the mean next-token cross-entropy of each batch of 4. The activations: the
    down_proj input (MLP neurons), the o_proj input (attention heads), the x part of in_proj's output (Mamba heads;
    the C++ model taps x before the conv). Heads sum their channels. Returns {(kind, layer): per-unit list}."""
    sums = {}
    di = cfg.mamba_num_heads * cfg.mamba_head_dim
    for s in range(0, N, 4):
        batch = ids[s:s + 4]
        kept = []

        def keep(key):
            def hook(mod, inp, out=None):
                t = inp[0] if out is None else out
                t.retain_grad()
                kept.append((key, t))
            return hook

        hooks = []
        for i, blk in enumerate(model.model.layers):
            t = blk.block_type
            if t == "mlp":
                hooks.append(blk.mixer.down_proj.register_forward_pre_hook(keep(("mlp", i))))
            elif t == "full_attention":
                hooks.append(blk.mixer.o_proj.register_forward_pre_hook(keep(("attn", i))))
            elif t == "linear_attention":
                hooks.append(blk.mixer.in_proj.register_forward_hook(keep(("mamba", i))))
        logits = model(input_ids=batch).logits.float()
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        loss.backward()
        for h in hooks:
            h.remove()
        for key, t in kept:
            a, g = t.detach(), t.grad
            if key[0] == "mamba":
                a, g = a[..., di:2 * di], g[..., di:2 * di]
            v = (a * g).double().sum(1).abs().sum(0)
            sums[key] = sums[key] + v if key in sums else v
        model.zero_grad(set_to_none=True)
    out = {}
    for (kind, i), v in sums.items():
        if kind == "attn":
            v = v.view(cfg.num_attention_heads, cfg.head_dim).sum(1)
        elif kind == "mamba":
            v = v.view(cfg.mamba_num_heads, cfg.mamba_head_dim).sum(1)
        out[(kind, i)] = v.tolist()
    return out


def run(model, ids, skip=()):
    """Forward with the layers in `skip` replaced by the identity; returns logits and final hidden state."""
    saved = {}
    for i in skip:
        blk = model.model.layers[i]
        saved[i] = blk.forward
        blk.forward = lambda hidden_states, *a, **k: hidden_states
    try:
        out = model.model(input_ids=ids)
        h = out.last_hidden_state
        return model.lm_head(h).float(), h.float()
    finally:
        for i, f in saved.items():
            model.model.layers[i].forward = f


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", required=True)
    a = ap.parse_args()
    for k, name in enumerate(MODELS):
        d = os.path.join(a.models, name)
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        cfg = model.config
        gen = torch.Generator().manual_seed(7 + k)
        ids = torch.randint(0, cfg.vocab_size, (N, L), generator=gen)
        acts = {}

        def grab(key):
            def hook(mod, inp, out=None):
                acts.setdefault(key, []).append((inp[0] if out is None else out).detach().clone())
            return hook

        hooks = []
        for i, blk in enumerate(model.model.layers):
            hooks.append(blk.norm.register_forward_hook(grab(("norm", i))))
            hooks.append(blk.register_forward_pre_hook(grab(("in", i))))
            hooks.append(blk.register_forward_hook(grab(("out", i))))
            t = blk.block_type
            if t == "mlp":
                hooks.append(blk.mixer.down_proj.register_forward_pre_hook(grab(("mlp", i))))
            elif t == "full_attention":
                hooks.append(blk.mixer.o_proj.register_forward_pre_hook(grab(("attn", i))))
            elif t == "linear_attention":
                hooks.append(blk.mixer.in_proj.register_forward_hook(grab(("in_proj", i))))
                hooks.append(blk.mixer.out_proj.register_forward_pre_hook(grab(("mamba_y", i))))
        with torch.no_grad():
            for s in range(0, N, 4):  # two batches, as the C++ side streams them
                model(input_ids=ids[s:s + 4])
        for h in hooks:
            h.remove()

        layers = []
        hidden = torch.zeros(cfg.hidden_size, dtype=torch.float64)
        for i, blk in enumerate(model.model.layers):
            t = blk.block_type
            e = {"index": i}
            hidden += mean_l2(acts[("norm", i)])
            if t == "mlp":
                e["mlp_neurons"] = mean_l2(acts[("mlp", i)]).tolist()
            elif t == "full_attention":
                hd = cfg.head_dim
                ch = mean_l2(acts[("attn", i)])
                e["attn_heads"] = ch.view(-1, hd).norm(dim=1).tolist()
                W = blk.mixer.o_proj.weight
                contrib = [torch.stack([(x[..., h * hd:(h + 1) * hd] @ W[:, h * hd:(h + 1) * hd].T).norm(dim=-1)
                                        for h in range(cfg.num_attention_heads)], -1) for x in acts[("attn", i)]]
                e["attn_heads_out"] = mean_l2(contrib).tolist()
            else:
                H, P = cfg.mamba_num_heads, cfg.mamba_head_dim
                di = H * P
                xs = [o[..., di:2 * di] for o in acts[("in_proj", i)]]
                ch = mean_l2(xs).view(H, P)
                e["mamba_heads"] = ch.norm(dim=1).tolist()
                e["mamba_head_dim"] = ch.norm(dim=0).tolist()
                W = blk.mixer.out_proj.weight
                ys = acts[("mamba_y", i)]
                contrib = [torch.stack([(y[..., h * P:(h + 1) * P] @ W[:, h * P:(h + 1) * P].T).norm(dim=-1)
                                        for h in range(H)], -1) for y in ys]
                e["mamba_heads_out"] = mean_l2(contrib).tolist()
                col = W.double().pow(2).sum(0)
                e["mamba_heads_flap"] = (variance(ys) * col).view(H, P).sum(1).tolist()
            # block influence: 1 - cos(input, output) averaged over tokens
            cos_sum, count = 0.0, 0
            for x_in, x_out in zip(acts[("in", i)], acts[("out", i)]):
                cos_sum += (1 - F.cosine_similarity(x_in.double(), x_out.double(), dim=-1)).sum().item()
                count += x_in.shape[0] * x_in.shape[1]
            e["block_influence"] = cos_sum / count
            layers.append(e)

        # Depth: each layer skipped, against the full model.
        with torch.no_grad():
            z_full, h_full = run(model, ids)
            lp_full = z_full.log_softmax(-1)
            ce_full = F.nll_loss(lp_full[:, :-1].reshape(-1, lp_full.shape[-1]), ids[:, 1:].reshape(-1))
            for i in range(len(layers)):
                z, h = run(model, ids, skip=(i,))
                lp = z.log_softmax(-1)
                ce = F.nll_loss(lp[:, :-1].reshape(-1, lp.shape[-1]), ids[:, 1:].reshape(-1))
                layers[i]["lm_loss_increase"] = (ce - ce_full).item()
                layers[i]["kl"] = (lp_full.exp() * (lp_full - lp)).sum(-1).mean().item()
                layers[i]["mse_hidden"] = (h - h_full).pow(2).mean().item()
                layers[i]["mse_logits"] = (z - z_full).pow(2).mean().item()

        names = {"mlp": "taylor_mlp_neurons", "attn": "taylor_attn_heads", "mamba": "taylor_mamba_heads"}
        for (kind, i), v in taylor(model, ids, cfg).items():
            layers[i][names[kind]] = v

        save_file({"ids": ids.contiguous()}, os.path.join(d, "importance_ids.safetensors"))
        with open(os.path.join(d, "importance_reference.json"), "w") as f:
            json.dump({"hidden": hidden.tolist(), "layers": layers}, f)
    print("importance references written")


if __name__ == "__main__":
    main()
