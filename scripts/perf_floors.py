#!/usr/bin/env python3
"""Floors of each conv op in a wgconv-bench report on an H100 (FP32 67 TFLOP/s, HBM 3.35 TB/s)
next to the measured time and, when a torch_baseline.py ratios file is given, cuDNN's time.

    python3 scripts/perf_floors.py report.json [ratios.json] > table.md
"""
import json
import sys

PEAK_FLOPS = 67e12
PEAK_BYTES = 3.35e12
OPS = ("conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight")

rep = json.load(open(sys.argv[1]))["results"]
torch = {}
if len(sys.argv) > 2:
    torch = {(r["layer"], r["op"]): r for r in json.load(open(sys.argv[2]))["results"]}
print("| layer | op | GFLOP | MB | floor ms | wgconv ms | % of floor speed | TFLOP/s | cuDNN ms | torch/wgconv |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in rep:
    if r["op"] not in OPS:
        continue
    floor = max(r["flops"] / PEAK_FLOPS, r["bytes"] / PEAK_BYTES) * 1e3
    t = torch.get((r["layer"], r["op"]))
    tms = f"{t['torch_ms']:.3f}" if t else "-"
    ratio = f"{t['ratio']:.2f}" if t else "-"
    print(f"| {r['layer']} | {r['op'][7:]} | {r['flops'] / 1e9:.2f} | {r['bytes'] / 1e6:.1f} | "
          f"{floor:.3f} | {r['median_ms']:.3f} | {100 * floor / r['median_ms']:.0f}% | "
          f"{r['gflops'] / 1e3:.1f} | {tms} | {ratio} |")
