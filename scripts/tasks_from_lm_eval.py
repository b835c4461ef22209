#!/usr/bin/env python3
"""Converts lm-evaluation-harness task data (the Hugging Face datasets it reads, exported as JSONL) into the task
schema of `minipuzzle eval --tasks` (docs/TASKS.md), with lm-eval's default prompt for the task:

  hellaswag  {"ctx_a", "ctx_b", "activity_label", "endings": [...], "label"}  (Rowan/hellaswag)
             context: preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()),
             choices: " " + preprocess(ending)   (lm-eval's preprocess: strip, " [title]" -> ". ", drop [..], "  " -> " ")
  arc        {"question", "choices": {"text": [...], "label": [...]}, "answerKey"}  (allenai/ai2_arc)
             context: "Question: {question}\\nAnswer:", choices: " " + text
  mmlu       {"question", "choices": [4 texts], "answer": int}  (cais/mmlu)
             context: "{question}\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:", choices: " A" .. " D"
  piqa       {"goal", "sol1", "sol2", "label"}  (ybisk/piqa)
             context: "Question: {goal}\\nAnswer:", choices: " " + sol

Usage: scripts/tasks_from_lm_eval.py --format hellaswag IN.jsonl -o OUT.jsonl [--fewshot K]
(--fewshot K marks the first K rows as few-shot examples). Standard library only.
"""
import argparse
import json
import re
import sys


def hellaswag_preprocess(text):
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag(doc):
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return (hellaswag_preprocess(doc["activity_label"] + ": " + ctx),
            [" " + hellaswag_preprocess(e) for e in doc["endings"]], int(doc["label"]))


def arc(doc):
    labels = list(doc["choices"]["label"])
    return ("Question: " + doc["question"] + "\nAnswer:", [" " + t for t in doc["choices"]["text"]],
            labels.index(doc["answerKey"]))


def mmlu(doc):
    letters = "ABCDEFGHIJ"[: len(doc["choices"])]
    lines = [doc["question"].strip()] + [f"{l}. {c}" for l, c in zip(letters, doc["choices"])]
    return "\n".join(lines) + "\nAnswer:", [" " + l for l in letters], int(doc["answer"])


def piqa(doc):
    return "Question: " + doc["goal"] + "\nAnswer:", [" " + doc["sol1"], " " + doc["sol2"]], int(doc["label"])


FORMATS = {"hellaswag": hellaswag, "arc": arc, "mmlu": mmlu, "piqa": piqa}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input")
    ap.add_argument("--format", required=True, choices=sorted(FORMATS))
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--fewshot", type=int, default=0, help="mark the first K rows as few-shot examples")
    a = ap.parse_args()
    convert = FORMATS[a.format]
    rows = []
    with open(a.input, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                context, choices, answer = convert(json.loads(line))
            except (KeyError, ValueError, TypeError) as e:
                sys.exit(f"{a.input}:{n}: not {a.format} data ({type(e).__name__}: {e})")
            row = {"context": context, "choices": choices, "answer": answer}
            if len(rows) < a.fewshot:
                row["fewshot"] = True
            rows.append(row)
    with open(a.output, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {a.output}: {len(rows)} rows ({min(a.fewshot, len(rows))} few-shot)", file=sys.stderr)


if __name__ == "__main__":
    main()
