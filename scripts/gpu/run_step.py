#!/usr/bin/env python3
"""Runs one benchmark step and prints one JSON line: step, seconds, exit code, peak host RSS, peak GPU memory.

usage: run_step.py NAME LOG_FILE -- COMMAND [ARGS...]
Peak host RSS is the largest resident set of the step's processes (getrusage of the waited-for children, so a
fresh interpreter per step counts only that step). Peak GPU memory is the largest memory.used that
`nvidia-smi -lms 100` reports during the step, less what was in use before it started (null without
nvidia-smi). The command's stdout and stderr go to LOG_FILE. Extra JSON fields: MP_STEP_EXTRA='{"k": v}'.
"""
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time


def gpu_used_mib():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
        return sum(int(x) for x in out.split())
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def main():
    name, log = sys.argv[1], sys.argv[2]
    cmd = sys.argv[sys.argv.index("--") + 1:]
    smi = shutil.which("nvidia-smi")
    base = gpu_used_mib() if smi else None
    peak = [base]
    sampler = None
    if base is not None:
        sampler = subprocess.Popen([smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-lms", "100"],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

        def read():
            for line in sampler.stdout:
                try:
                    peak[0] = max(peak[0], int(line.split()[0]))
                except (ValueError, IndexError):
                    pass
        threading.Thread(target=read, daemon=True).start()
    t0 = time.monotonic()
    with open(log, "w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - t0
    if sampler:
        time.sleep(0.3)  # one more sample after the end
        sampler.terminate()
        sampler.wait()
    rss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    line = {"step": name, "seconds": round(seconds, 3), "exit": rc, "peak_rss_gib": round(rss_kib / 2**20, 3),
            "peak_gpu_gib": None if base is None else round((peak[0] - base) / 1024, 3)}
    line.update(json.loads(os.environ.get("MP_STEP_EXTRA", "{}") or "{}"))
    print(json.dumps(line), flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
