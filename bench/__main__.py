"""python -m bench [--quick]: the engine benchmarks, as ratios against HF in the same process."""

import argparse
import json
from pathlib import Path

import torch

from bench import analysis, circuits, claims, forward, generation, loading, patching, sets

parser = argparse.ArgumentParser(prog="bench")
parser.add_argument("--quick", action="store_true", help="fewer repeats, no load benchmark")
args = parser.parse_args()

print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU fp32\n")
rows = forward.run(repeats=3 if args.quick else 9)
print(forward.report(rows))
results = {"forward": rows}
analysis_rows = analysis.run(repeats=3 if args.quick else 7)
print("\n" + analysis.report(analysis_rows))
results["analysis"] = analysis_rows
gen = generation.run(repeats=3 if args.quick else 7)
print("\n" + generation.report(gen))
results["generation"] = gen
if not args.quick:
    load = loading.run("smollm2-135m")
    print("\n" + loading.report(load))
    results["loading"] = load
# the MCP server: its cost over the lens calls it wraps
from bench import mcp as mcp_bench

mcp_rows = mcp_bench.run(repeats=3 if args.quick else 7)
print("\n" + mcp_bench.report(mcp_rows))
results["mcp"] = mcp_rows
results["patching"] = patching.main(quick=args.quick)  # IOI sweeps: batched vs naive, attribution patching
results["sets"] = sets.main(quick=args.quick)  # a 50-row IOI set: batched vs naive and TransformerLens; steering
results["circuits"] = circuits.main(quick=args.quick)  # EAP, EAP-IG and a faithfulness curve vs forward(+backward)
results["claims"] = claims.main(quick=args.quick)  # each SKILL.md workflow's claim over a set, the figures it quotes
out = Path(__file__).parent / "results" / "latest.json"
out.parent.mkdir(exist_ok=True)
out.write_text(json.dumps(results, indent=1))
print(f"\n(written to {out})")
