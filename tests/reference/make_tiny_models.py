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
    # Mixture-of-experts hybrids (Nemotron 3): 8 experts, top-2, shared expert, routed scale 2.5, one plain MLP too.
    "moe_g1": dict(hybrid_override_pattern="ME*EM-E", vocab_size=89, hidden_size=32, intermediate_size=40,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=8, mamba_num_heads=4, mamba_head_dim=8,
                   n_groups=1, ssm_state_size=8, conv_kernel=4, chunk_size=16, tie_word_embeddings=False,
                   n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
                   moe_shared_expert_intermediate_size=24, n_group=1, topk_group=1, norm_topk_prob=True,
                   routed_scaling_factor=2.5),
    # Grouped routing (12 experts in 4 groups, the best 2 groups, top-3), latent projections, biases, no
    # normalisation of the top-k weights, tied embeddings; the layer list given as a pattern string.
    "moe_grouped_latent": dict(hybrid_override_pattern="MEM*E", vocab_size=101, hidden_size=40, intermediate_size=48,
                               num_attention_heads=4, num_key_value_heads=1, head_dim=10, mamba_num_heads=4,
                               mamba_head_dim=10, n_groups=2, ssm_state_size=8, conv_kernel=4, chunk_size=32,
                               tie_word_embeddings=True, mlp_bias=True, n_routed_experts=12, num_experts_per_tok=3,
                               moe_intermediate_size=12, moe_shared_expert_intermediate_size=20, moe_latent_size=24,
                               n_group=4, topk_group=2, norm_topk_prob=False, routed_scaling_factor=1.5),
}
MOE_MTP = "moe_mtp"  # moe_g1 plus NVIDIA-style `mtp.*` tensors (attention + MoE MTP layers), which transformers ignores
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
        for bname, b in model.named_buffers():
            if bname.endswith("e_score_correction_bias"):  # a buffer: it moves the expert choice, not the weights
                b.copy_(0.1 * torch.randn_like(b))
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
    add_mtp(os.path.join(args.out, "moe_g1"), os.path.join(args.out, MOE_MTP))
    print("made", len(CONFIGS) + 1, "reference models in", args.out)


def add_mtp(src, dst):
    """A copy of `src` with MTP layers as NVIDIA ships them (num_nextn_predict_layers 1; `mtp.layers.0` an attention
    block with enorm/hnorm/eh_proj, `mtp.layers.1` an MoE block with final_layernorm). transformers must load it
    ignoring them, with unchanged logits; minipuzzle must carry them through."""
    import shutil
    from safetensors.torch import load_file
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    cfg["num_nextn_predict_layers"] = 1
    cfg["mtp_layers_block_type"] = ["full_attention", "moe"]
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    w = load_file(os.path.join(src, "model.safetensors"))
    g = torch.Generator().manual_seed(7)
    H = cfg["hidden_size"]
    a = cfg["num_attention_heads"] * cfg["head_dim"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    E, F, S = cfg["n_routed_experts"], cfg["moe_intermediate_size"], cfg["moe_shared_expert_intermediate_size"]
    shapes = {"mtp.layers.0.enorm.weight": [H], "mtp.layers.0.hnorm.weight": [H], "mtp.layers.0.norm.weight": [H],
              "mtp.layers.0.eh_proj.weight": [H, 2 * H], "mtp.layers.0.mixer.q_proj.weight": [a, H],
              "mtp.layers.0.mixer.k_proj.weight": [kv, H], "mtp.layers.0.mixer.v_proj.weight": [kv, H],
              "mtp.layers.0.mixer.o_proj.weight": [H, a], "mtp.layers.1.norm.weight": [H],
              "mtp.layers.1.final_layernorm.weight": [H], "mtp.layers.1.mixer.gate.weight": [E, H],
              "mtp.layers.1.mixer.shared_experts.up_proj.weight": [S, H],
              "mtp.layers.1.mixer.shared_experts.down_proj.weight": [H, S]}
    for e in range(E):
        shapes[f"mtp.layers.1.mixer.experts.{e}.up_proj.weight"] = [F, H]
        shapes[f"mtp.layers.1.mixer.experts.{e}.down_proj.weight"] = [H, F]
    for name, shape in shapes.items():
        w[name] = torch.randn(shape, generator=g)
    w["mtp.layers.1.mixer.gate.e_score_correction_bias"] = 0.1 * torch.randn([E], generator=g)
    save_file(w, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})


if __name__ == "__main__":
    main()
