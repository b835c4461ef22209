#!/usr/bin/env python3
"""Independent reference for `minipuzzle eval --tasks`: multiple-choice log-likelihoods computed with transformers'
NemotronH on a tiny reference model, one request at a time (no batching, no padding), following the
lm-evaluation-harness recipe for causal LMs.

Writes OUT/tiny_tasks.jsonl (a small task in docs/TASKS.md's schema: 2 few-shot examples and 10 questions whose text
stays below id 97, the tiny models' vocabulary, under the byte-level tokenizer: ids = UTF-8 bytes) and
OUT/tiny_tasks_reference.json: for each maximum length, every choice's log-likelihood, acc and acc_norm.
"""
import argparse
import json
import os
import random

import torch
from transformers import AutoModelForCausalLM

WORDS = ["THE", "CAT", "SAT", "ON", "A", "MAT", "DOG", "RAN", "TO", "PARK", "1", "22", "333", "RED", "BLUE", "SKY",
         "IS", "AND", "OF", "SEA", "WAVE", "STONE", "-", "?"]


def sentence(rng, lo, hi):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def make_task(seed=7):
    rng = random.Random(seed)
    lines = []
    for q in range(12):
        n = rng.randint(2, 4)
        # Some contexts end with a space or a newline: lm-eval moves them to the continuation.
        end = rng.choice(["", " ", "\n", ":"])
        context = "Q: " + sentence(rng, 3, 9) + "?\nA:" + end
        choices = [(" " if end in ("", ":") else "") + sentence(rng, 1, 6) for _ in range(n)]
        row = {"context": context, "choices": choices, "answer": rng.randrange(n)}
        if q < 2:
            row["fewshot"] = True
        lines.append(row)
    return lines


def loglik(model, context, continuation, max_length):
    """lm-eval's loglikelihood of one (context, continuation) pair for a byte-level tokenizer."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = list((context + continuation).encode())
    ctx = list(context.encode())
    cont = whole[len(ctx):]
    inp = (ctx + cont)[-(max_length + 1):][:-1]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([inp])).logits[0].float()
    lp = torch.log_softmax(logits[len(inp) - len(cont):], dim=-1)
    return float(lp[torch.arange(len(cont)), torch.tensor(cont)].double().sum())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rows = make_task()
    with open(os.path.join(a.out, "tiny_tasks.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    shots = [r for r in rows if r.get("fewshot")]
    questions = [r for r in rows if not r.get("fewshot")]
    prefix = "".join(s["context"] + s["choices"][s["answer"]] + "\n\n" for s in shots)
    out = {}
    for max_length in (2048, 48):
        scores, right, right_norm = [], 0, 0
        for q in questions:
            ll = [loglik(model, prefix + q["context"], c, max_length) for c in q["choices"]]
            norm = [x / len(c.encode()) for x, c in zip(ll, q["choices"])]
            right += int(max(range(len(ll)), key=lambda i: (ll[i], -i)) == q["answer"])
            right_norm += int(max(range(len(norm)), key=lambda i: (norm[i], -i)) == q["answer"])
            scores.append(ll)
        out[str(max_length)] = {"logliks": scores, "acc": right / len(questions),
                                "acc_norm": right_norm / len(questions)}
    json.dump(out, open(os.path.join(a.out, "tiny_tasks_reference.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
