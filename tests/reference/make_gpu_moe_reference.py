#!/usr/bin/env python3
"""GPU-host reference for the bf16 CUDA MoE model: a seeded MoE hybrid (Mamba, attention, MLP and three MoE layers
of 32 experts in 4 routing groups, top-4 of the best 2 groups, shared expert) run by transformers on CUDA in float32
(the reference) and loaded with from_pretrained in bfloat16 (as users load it: the router's correction bias stays
float32) for the error a bf16 implementation is allowed, at 300 and 4096 tokens. Writes the checkpoint and
gpu_reference.safetensors to --out."""
import argparse
import os

import torch
from safetensors.torch import save_file
from transformers import NemotronHConfig, NemotronHForCausalLM

from make_tiny_models import perturb


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.manual_seed(6)
    cfg = NemotronHConfig(hybrid_override_pattern="ME*EM-E", vocab_size=1024, hidden_size=256, intermediate_size=512,
                          num_attention_heads=8, num_key_value_heads=2, head_dim=32, mamba_num_heads=8,
                          mamba_head_dim=32, n_groups=2, ssm_state_size=64, conv_kernel=4, chunk_size=128,
                          n_routed_experts=32, num_experts_per_tok=4, moe_intermediate_size=128,
                          moe_shared_expert_intermediate_size=256, n_group=4, topk_group=2, routed_scaling_factor=2.5,
                          tie_word_embeddings=False)
    perturb(NemotronHForCausalLM(cfg).eval()).save_pretrained(a.out)
    ref = {}
    gen = torch.Generator().manual_seed(4)
    models = {tag: NemotronHForCausalLM.from_pretrained(a.out, dtype=dt).to("cuda").eval()
              for tag, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    for L in (300, 4096):
        ids = torch.randint(0, cfg.vocab_size, (1, L), generator=gen)
        ref[f"input_ids_{L}"] = ids
        for tag, m in models.items():
            with torch.no_grad():
                ref[f"logits_{tag}_{L}"] = m(input_ids=ids.cuda()).logits.float().cpu()
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(a.out, "gpu_reference.safetensors"))
    print("gpu MoE reference written to", a.out)


if __name__ == "__main__":
    main()
