"""First and second load time of a model, and the peak memory of each, each in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

PROBE = """
import json, re, sys, time
import torch
from lens import HookedTransformer
started = time.perf_counter()
model = HookedTransformer.from_pretrained(sys.argv[1], device="cpu")
seconds = time.perf_counter() - started
# VmHWM is this process's own peak; ru_maxrss would carry the parent's peak across exec.
peak_mib = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) / 1024
print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_mib, "from_cache": model.load_info["from_cache"]}))
"""


def load_once(name: str, cache_dir: str) -> dict:
    env = dict(os.environ, LENS_CACHE=cache_dir)
    out = subprocess.run([sys.executable, "-c", PROBE, name], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(name: str = "smollm2-135m") -> dict:
    with tempfile.TemporaryDirectory() as cache_dir:  # a cold cache, so the first load converts
        first = load_once(name, cache_dir)
        second = load_once(name, cache_dir)
    return {"model": name, "first": first, "second": second}


def report(result: dict) -> str:
    f, s = result["first"], result["second"]
    return (f"{result['model']}: first load {f['seconds']:.1f} s (peak RSS {f['peak_rss_mib']:.0f} MiB, converts the GGUF); "
            f"second load {s['seconds']:.2f} s (peak RSS {s['peak_rss_mib']:.0f} MiB, from cache: {s['from_cache']}; "
            f"target ≤ 3 s)")
