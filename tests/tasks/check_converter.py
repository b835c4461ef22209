#!/usr/bin/env python3
"""scripts/tasks_from_lm_eval.py on one row of each supported format, against the rows written out by hand from
lm-evaluation-harness's default prompts (docs/TASKS.md), and a malformed row refused with file:line."""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "tasks_from_lm_eval.py")

CASES = {
    "hellaswag": ({"activity_label": "Baking", "ctx_a": "A man mixes flour.", "ctx_b": "he", "label": "1",
                   "endings": ["sings [title] loudly.", "  adds  water. "]},
                  {"context": "Baking: A man mixes flour. He", "choices": [" sings. loudly.", " adds water."],
                   "answer": 1}),
    "arc": ({"question": "What do plants need?", "answerKey": "B",
             "choices": {"text": ["rocks", "light"], "label": ["A", "B"]}},
            {"context": "Question: What do plants need?\nAnswer:", "choices": [" rocks", " light"], "answer": 1}),
    "mmlu": ({"question": " 2+2? ", "choices": ["3", "4", "5", "6"], "answer": 1},
             {"context": "2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:", "choices": [" A", " B", " C", " D"], "answer": 1}),
    "piqa": ({"goal": "Open a jar", "sol1": "twist the lid", "sol2": "freeze it", "label": 0},
             {"context": "Question: Open a jar\nAnswer:", "choices": [" twist the lid", " freeze it"], "answer": 0}),
}


def main():
    with tempfile.TemporaryDirectory() as d:
        for fmt, (row, want) in CASES.items():
            src, out = os.path.join(d, fmt + ".jsonl"), os.path.join(d, fmt + ".out.jsonl")
            open(src, "w").write(json.dumps(row) + "\n" + json.dumps(row) + "\n")
            subprocess.run([sys.executable, SCRIPT, "--format", fmt, src, "-o", out, "--fewshot", "1"], check=True)
            got = [json.loads(l) for l in open(out)]
            assert got[0] == dict(want, fewshot=True), (fmt, got[0])
            assert got[1] == want, (fmt, got[1])
        bad = os.path.join(d, "bad.jsonl")
        open(bad, "w").write("{\"question\": \"x\"}\n")
        r = subprocess.run([sys.executable, SCRIPT, "--format", "arc", bad, "-o", bad + ".out"], capture_output=True,
                           text=True)
        assert r.returncode != 0 and "bad.jsonl:1: not arc data" in r.stderr, r.stderr
    print("converter: 4 formats and a malformed row ok")


if __name__ == "__main__":
    main()
