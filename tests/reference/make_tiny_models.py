#!/usr/bin/env python3
"""Seeded tiny random NemotronH models made by `transformers`: the independent reference for the C++ model.

For each configuration it saves the checkpoint with save_pretrained and a `reference.safetensors` holding
input ids (sequence lengths 1, 7 and 300) and the fp32 CPU logits transformers computes for them.
Weights are perturbed away from their initial values (norm weights of 1, D of 1, ...) so that every
parameter influences the output and a wrong slice or formula shows.
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file
from transformers import NemotronHConfig, NemotronHForCausalLM

CONFIGS = {
    # n_groups = 1, GQA 4 query heads over 2 KV heads, untied, all three layer types, chunk 16 < 300 tokens.
    "hybrid_g1": dict(hybrid_override_pattern="M*-M-*M-", vocab_size=97, hidden_size=48, intermediate_size=80,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=12, mamba_num_heads=6,
                      mamba_head_dim=8, n_groups=1, ssm_state_size=16, conv_kernel=4, chunk_size=16,
                      tie_word_embeddings=False),
    # n_groups = 2 with 4 heads per group, multi-query attention (1 KV head), tied embeddings, biases on.
    "hybrid_g2_tied": dict(hybrid_override_pattern="M-*M-M", vocab_size=113, hidden_size=64, intermediate_size=96,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=16, mamba_num_heads=8,
                           mamba_head_dim=8, n_groups=2, ssm_state_size=8, conv_kernel=4, chunk_size=32,
                           tie_word_embeddings=True, use_bias=True, use_conv_bias=True, mlp_bias=True),
    # n_groups = 4, conv kernel 3, chunk 64, saved sharded (several files plus an index).
    "hybrid_g4_sharded": dict(hybrid_override_pattern="MM*-M*--M", vocab_size=131, hidden_size=40,
                              intermediate_size=72, num_attention_heads=6, num_key_value_heads=3, head_dim=8,
                              mamba_num_heads=8, mamba_head_dim=6, n_groups=4, ssm_state_size=12, conv_kernel=3,
                              chunk_size=64, tie_word_embeddings=False, use_conv_bias=False),
}
SEQ_LENS = (1, 7, 300)


def perturb(model):
    """Moves every parameter away from its initial value (seeded by the caller's torch.manual_seed)."""
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("A_log"):
                p.copy_(torch.log(torch.rand_like(p) * 15 + 1))
            elif pname.endswith("dt_bias"):
                p.copy_(torch.randn_like(p) * 0.5 - 1.0)
            elif pname.endswith(".D") or "norm" in pname:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif pname.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * (1.0 / p.shape[-1] ** 0.5))
    return model


def build(name, cfg, seed):
    torch.manual_seed(seed)
    config = NemotronHConfig(**cfg, time_step_min=0.001, layer_norm_epsilon=1e-5)
    return perturb(NemotronHForCausalLM(config).eval())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for i, (name, cfg) in enumerate(CONFIGS.items()):
        d = os.path.join(args.out, name)
        model = build(name, cfg, seed=1234 + i)
        shard = "20KB" if "sharded" in name else "5GB"
        model.save_pretrained(d, max_shard_size=shard)
        gen = torch.Generator().manual_seed(99 + i)
        ref = {}
        with torch.no_grad():
            for L in SEQ_LENS:
                ids = torch.randint(0, cfg["vocab_size"], (2, L), generator=gen)
                logits = model(input_ids=ids).logits.float()
                ref[f"input_ids_{L}"] = ids.to(torch.int64).contiguous()
                ref[f"logits_{L}"] = logits.contiguous()
        save_file(ref, os.path.join(d, "reference.safetensors"))
        with open(os.path.join(d, "reference.json"), "w") as f:
            json.dump({"seq_lens": list(SEQ_LENS), "batch": 2}, f)
    print("made", len(CONFIGS), "reference models in", args.out)


if __name__ == "__main__":
    main()
