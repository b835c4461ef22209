#!/usr/bin/env python3
"""GPU-host reference for the bf16 CUDA model: a seeded NemotronH (all layer types, 4 groups, GQA) run by
transformers on CUDA in float32 (the reference) and in bfloat16 (the error a bf16 implementation is allowed),
at sequence lengths 300 and 4096. Writes the checkpoint and gpu_reference.safetensors to --out."""
import argparse
import copy
import os

import torch
from safetensors.torch import save_file
from transformers import NemotronHConfig, NemotronHForCausalLM

from make_tiny_models import perturb  # same weight perturbation as the CPU references


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.manual_seed(5)
    cfg = NemotronHConfig(hybrid_override_pattern="M-M*-M-", vocab_size=1024, hidden_size=256,
                          intermediate_size=768, num_attention_heads=8, num_key_value_heads=2, head_dim=32,
                          mamba_num_heads=16, mamba_head_dim=32, n_groups=4, ssm_state_size=64, conv_kernel=4,
                          chunk_size=128, tie_word_embeddings=False)
    model = perturb(NemotronHForCausalLM(cfg).eval())
    model.save_pretrained(a.out)
    ref = {}
    gen = torch.Generator().manual_seed(3)
    for L in (300, 4096):
        ids = torch.randint(0, cfg.vocab_size, (1, L), generator=gen)
        ref[f"input_ids_{L}"] = ids
        for dtype, tag in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            m = copy.deepcopy(model).to("cuda", dtype)  # .to() is in place: keep the float32 weights intact
            with torch.no_grad():
                ref[f"logits_{tag}_{L}"] = m(input_ids=ids.cuda()).logits.float().cpu()
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(a.out, "gpu_reference.safetensors"))
    print("gpu reference written to", a.out)


if __name__ == "__main__":
    main()
