#!/usr/bin/env python3
"""Per-layer table of a wgconv-bench report joined with torch_baseline.py's ratios.

    python3 scripts/ratio_table.py main.json ratios.json [--ops conv2d_forward,...]
"""
import argparse
import json
import statistics

p = argparse.ArgumentParser()
p.add_argument("report")
p.add_argument("ratios")
p.add_argument("--ops", default="conv2d_forward,conv2d_backward_input,conv2d_backward_weight")
a = p.parse_args()
ops = a.ops.split(",")
rep = {(r["layer"], r["op"]): r for r in json.load(open(a.report))["results"]}
rows = [r for r in json.load(open(a.ratios))["results"] if r["op"] in ops]
print(f"{'layer':18s} {'op':24s} {'wgconv ms':>9s} {'torch ms':>9s} {'ratio':>6s} {'TFLOP/s':>7s}")
for r in rows:
    w = rep[(r["layer"], r["op"])]
    print(f"{r['layer']:18s} {r['op']:24s} {w['median_ms']:9.3f} {r['torch_ms']:9.3f} {r['ratio']:6.2f} {w['gflops'] / 1e3:7.1f}")
for op in ops:
    v = [r["ratio"] for r in rows if r["op"] == op]
    if v:
        print(f"median torch/wgconv {op}: {statistics.median(v):.3f} over {len(v)} layers")
