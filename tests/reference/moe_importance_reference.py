#!/usr/bin/env python3
"""Independent reference for the MoE scores of `minipuzzle score`: transformers' NemotronH MoE blocks, a hook on
each block's input, and explicit per-token loops over the experts transformers' own router chose.

Per MoE layer (see MoeScores in include/minipuzzle/importance.h):
  experts          sqrt(mean over all tokens of ||w_e(x) E_e(x)||^2), 0 for tokens not routed to e
  frequency        fraction of tokens routed to e
  expert_channels  per expert and channel, sqrt(sum over its routed tokens of relu(up_e x)^4)
  shared           the shared expert's relu^2 channels, mean_l2 (sqrt over samples of (mean_t |a|)^2)
  loss             mean next-token CE with e removed (its correction bias set to -inf, so neither top-k nor the
                   group ranking can pick it) minus the full model's, over batches of 4
Writes moe_importance_ids.safetensors (calibration ids [N, L]) and moe_importance_reference.json per model.
"""
import argparse
import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

MODELS = ["moe_g1", "moe_grouped_latent"]
N, L = 6, 40


def mean_ce(model, ids):
    total, count = 0.0, 0
    for s in range(0, N, 4):
        b = ids[s:s + 4]
        z = model(input_ids=b).logits.double()
        total += F.cross_entropy(z[:, :-1].reshape(-1, z.shape[-1]), b[:, 1:].reshape(-1), reduction="sum").item()
        count += b.shape[0] * (b.shape[1] - 1)
    return total / count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", required=True)
    a = ap.parse_args()
    for name in MODELS:
        d = os.path.join(a.models, name)
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        cfg = model.config
        ids = torch.randint(0, cfg.vocab_size, (N, L), generator=torch.Generator().manual_seed(31))
        inputs = {}
        hooks = []
        moe_layers = [i for i, blk in enumerate(model.model.layers) if blk.block_type == "moe"]
        for i in moe_layers:
            def keep(mod, inp, i=i):
                inputs.setdefault(i, []).append(inp[0].detach())
            hooks.append(model.model.layers[i].mixer.register_forward_pre_hook(keep))
        with torch.no_grad():
            for s in range(0, N, 4):
                model(input_ids=ids[s:s + 4])
        for h in hooks:
            h.remove()
        layers = []
        with torch.no_grad():
            full = mean_ce(model, ids)
            for i in moe_layers:
                mix = model.model.layers[i].mixer
                E, F_ = cfg.n_routed_experts, cfg.moe_intermediate_size
                out_sq = torch.zeros(E, dtype=torch.float64)
                count = torch.zeros(E, dtype=torch.float64)
                ch_sq = torch.zeros(E, F_, dtype=torch.float64)
                shared_means = []
                tokens = 0
                for x in inputs[i]:
                    a_s = F.relu(mix.shared_experts.up_proj(x)).pow(2)
                    shared_means.append(a_s.abs().mean(1).double())
                    flat = x.reshape(-1, x.shape[-1])
                    _, w, idx = mix.gate(flat)
                    xl = mix.fc1_latent_proj(flat)
                    for t in range(flat.shape[0]):
                        for j in range(idx.shape[1]):
                            e = idx[t, j].item()
                            act = F.relu(mix.experts.up_proj[e] @ xl[t]).pow(2)
                            y = (mix.experts.down_proj[e] @ act) * w[t, j]
                            out_sq[e] += y.double().norm().pow(2)
                            count[e] += 1
                            ch_sq[e] += act.double().pow(2)
                    tokens += flat.shape[0]
                loss = []
                bias = mix.gate.e_score_correction_bias
                for e in range(E):
                    saved = bias[e].item()
                    bias[e] = float("-inf")
                    loss.append(mean_ce(model, ids) - full)
                    bias[e] = saved
                layers.append({"index": i, "experts": (out_sq / tokens).sqrt().tolist(),
                               "frequency": (count / tokens).tolist(),
                               "expert_channels": ch_sq.sqrt().reshape(-1).tolist(),
                               "shared": torch.cat(shared_means, 0).pow(2).sum(0).sqrt().tolist(),
                               "loss": loss})
        save_file({"ids": ids.contiguous()}, os.path.join(d, "moe_importance_ids.safetensors"))
        with open(os.path.join(d, "moe_importance_reference.json"), "w") as f:
            json.dump({"layers": layers}, f)
    print("MoE importance references written")


if __name__ == "__main__":
    main()
