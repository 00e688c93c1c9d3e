#!/usr/bin/env python3
"""Time the layers and ops of a wgconv-bench JSON report in PyTorch and print time ratios.

    cargo run --release --bin wgconv-bench -- --suite quick --json /tmp/r.json
    python3 scripts/torch_baseline.py /tmp/r.json                  # CUDA when available, else CPU
    python3 scripts/torch_baseline.py /tmp/r.json --device cpu --threads 2 --json /tmp/ratios.json

ratio = torch_ms / wgconv_ms per (layer, op): above 1 means wgconv is faster. The median ratio
per op closes the output.

Every op is timed alone through its aten op (no autograd): aten.convolution for the forward,
aten.convolution_backward with output_mask [dx, dW, db] selecting one gradient,
aten.max_pool2d_with_indices(_backward), aten.avg_pool2d(_backward). float32 (TF32 off), or
--dtype float16 / bfloat16 (default: the report's "dtype", as wgconv-bench --dtype wrote it).
PyTorch's conv2d pads symmetrically only: a layer with asymmetric padding is padded once with
F.pad before timing and only the convolution on the pre-padded tensor is timed (the pad copy,
and for dx the crop back to the input size, are excluded).
CUDA (after warm-up, cudnn.benchmark on): CUDA events around the replay of a CUDA graph that
holds the op up to 64 times, so the time is the GPU's, as wgconv's timestamp queries measure it,
not the host's launch overhead (--no-cuda-graph: eager calls). CPU: time.perf_counter around
each call, a sample being the median call of those run back to back for at least
--min-sample-ms, honouring --threads (wgconv-bench --device cpu measures the same way). Median
of --repeats samples.
"""

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

OPS = [
    "conv2d_forward",
    "conv2d_backward_input",
    "conv2d_backward_weight",
    "conv2d_backward_bias",
    "max_pool2d_forward",
    "max_pool2d_backward",
    "avg_pool2d_forward",
    "avg_pool2d_backward",
]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("report", help="wgconv-bench JSON report")
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="PyTorch device (default: cuda when available, else cpu)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per op (default 3)")
    p.add_argument("--repeats", type=int, default=10, help="timing samples per op (default 10)")
    p.add_argument(
        "--min-sample-ms",
        type=float,
        default=20.0,
        help="CPU: each sample repeats the op for at least this long (default 20)",
    )
    p.add_argument(
        "--min-sample-ms-cuda",
        type=float,
        default=1.0,
        help="CUDA: each sample runs the op up to 64 times, for at least this long (default 1)",
    )
    p.add_argument(
        "--no-cuda-graph",
        action="store_true",
        help="CUDA: time eager calls (host launch overhead included) instead of graph replays",
    )
    p.add_argument("--layers", default=None, help="only layers whose name contains this")
    p.add_argument(
        "--no-cudnn-benchmark",
        action="store_true",
        help="CUDA: keep cudnn.benchmark off (default: on, algorithms autotuned during warm-up)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--dtype",
        choices=["f32", "f16", "bf16"],
        default=None,
        help="tensor dtype (default: the report's results' dtype, else f32)",
    )
    p.add_argument("--json", metavar="OUT", default=None, help="write the ratios here")
    return p.parse_args()


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_op(fn, device, args):
    """Median, min and max milliseconds per call of fn, calls per sample, and the method."""
    for _ in range(args.warmup):
        fn()
    sync(device)
    if device == "cuda":
        return time_cuda(fn, args)
    one = []
    for _ in range(3):
        t = time.perf_counter()
        fn()
        one.append((time.perf_counter() - t) * 1e3)
    one_ms = statistics.median(one)
    iters = calls_per_sample(one_ms, args.min_sample_ms)
    if one_ms < 100.0:
        iters = max(iters, 3)  # a median of at least three calls
    samples = []
    for _ in range(args.repeats):
        calls = []
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            calls.append((time.perf_counter() - t) * 1e3)
        # The median call, as wgconv-bench --device cpu does: robust to a worker thread that a
        # busy machine deschedules for a time slice.
        samples.append(statistics.median(calls))
    return statistics.median(samples), min(samples), max(samples), iters, "perf_counter"


def calls_per_sample(one_ms, min_ms, most=1000):
    if one_ms >= min_ms:
        return 1
    return min(most, max(1, int(min_ms / max(one_ms, 1e-6)) + 1))


def event_ms(run):
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def time_cuda(fn, args):
    """CUDA events around each sample. By default the op is captured `iters` times into a CUDA
    graph and a sample is one replay, so the time is the GPU's (like wgconv's timestamp queries)
    and not the host's launch overhead; with --no-cuda-graph (or when capture fails) a sample is
    `iters` eager calls."""
    one_ms = statistics.median(event_ms(fn) for _ in range(3))
    iters = calls_per_sample(one_ms, args.min_sample_ms_cuda, most=64)
    if not args.no_cuda_graph:
        try:
            graph = torch.cuda.CUDAGraph()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                fn()
            torch.cuda.current_stream().wait_stream(side)
            with torch.cuda.graph(graph):
                for _ in range(iters):
                    fn()
            graph.replay()
            torch.cuda.synchronize()
            samples = [event_ms(graph.replay) / iters for _ in range(args.repeats)]
            del graph
            return statistics.median(samples), min(samples), max(samples), iters, "cuda_graph"
        except Exception as e:  # noqa: BLE001 - any capture failure falls back to eager timing
            print(f"  (CUDA graph capture failed: {e}; timing eager calls)", file=sys.stderr)
            torch.cuda.synchronize()

    def run():
        for _ in range(iters):
            fn()

    samples = [event_ms(run) / iters for _ in range(args.repeats)]
    return statistics.median(samples), min(samples), max(samples), iters, "cuda_events"


DTYPE = None  # set in main from --dtype or the report


def rand(shape, device):
    return (torch.rand(shape, dtype=torch.float32, device=device) * 2 - 1).to(DTYPE)


def conv_case(op, s, device):
    """The timed closure for a conv op, and a note (asymmetric padding)."""
    n, c, h, w, k = s["n"], s["c"], s["h"], s["w"], s["k"]
    kh, kw, groups = s["kh"], s["kw"], s["groups"]
    stride, dilation = list(s["stride"]), list(s["dilation"])
    top, bottom, left, right = s["padding"]
    x = rand((n, c, h, w), device)
    wt = rand((k, c // groups, kh, kw), device)
    b = rand((k,), device)
    note = ""
    if top == bottom and left == right:
        padding = [top, left]
    else:
        x = F.pad(x, (left, right, top, bottom))
        padding = [0, 0]
        note = "asymmetric padding: input pre-padded with F.pad, pad copy not timed"
    conv = torch.ops.aten.convolution
    y = conv(x, wt, b, stride, padding, dilation, False, [0, 0], groups)
    dy = rand(tuple(y.shape), device)
    back = torch.ops.aten.convolution_backward
    if op == "conv2d_forward":
        return (lambda: conv(x, wt, b, stride, padding, dilation, False, [0, 0], groups)), note
    mask = {
        "conv2d_backward_input": [True, False, False],
        "conv2d_backward_weight": [False, True, False],
        "conv2d_backward_bias": [False, False, True],
    }[op]
    bias_sizes = [k] if mask[2] else None
    return (
        lambda: back(dy, x, wt, bias_sizes, stride, padding, dilation, False, [0, 0], groups, mask)
    ), note


def pool_case(op, s, device):
    n, c, h, w = s["n"], s["c"], s["h"], s["w"]
    kernel, stride = list(s["kernel"]), list(s["stride"])
    padding, dilation = list(s["padding"]), list(s["dilation"])
    ceil_mode = bool(s["ceil_mode"])
    x = rand((n, c, h, w), device)
    aten = torch.ops.aten
    if op.startswith("max"):
        y, idx = aten.max_pool2d_with_indices(x, kernel, stride, padding, dilation, ceil_mode)
        if op == "max_pool2d_forward":
            return lambda: aten.max_pool2d_with_indices(x, kernel, stride, padding, dilation, ceil_mode)
        dy = rand(tuple(y.shape), device)
        return lambda: aten.max_pool2d_with_indices_backward(
            dy, x, kernel, stride, padding, dilation, ceil_mode, idx
        )
    cip = bool(s.get("count_include_pad", True))
    if op == "avg_pool2d_forward":
        return lambda: aten.avg_pool2d(x, kernel, stride, padding, ceil_mode, cip, None)
    y = aten.avg_pool2d(x, kernel, stride, padding, ceil_mode, cip, None)
    dy = rand(tuple(y.shape), device)
    return lambda: aten.avg_pool2d_backward(dy, x, kernel, stride, padding, ceil_mode, cip, None)


def main():
    args = parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if args.device == "cuda":
        if not torch.cuda.is_available():
            sys.exit("torch_baseline: --device cuda but torch.cuda.is_available() is False")
        torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    with open(args.report) as f:
        report = json.load(f)
    global DTYPE
    name = args.dtype or next((r.get("dtype") for r in report.get("results", [])), None) or "f32"
    DTYPE = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[name]
    adapter = report.get("adapter", {})
    if args.device == "cuda":
        torch_dev = torch.cuda.get_device_name()
    else:
        torch_dev = f"CPU, {torch.get_num_threads()} threads"
    print(
        f"wgconv: {report.get('device')} on {adapter.get('name')} ({adapter.get('backend')}), "
        f"timing {report.get('timing', '?')}"
    )
    print(f"torch {torch.__version__}: {args.device} ({torch_dev}), {DTYPE}, TF32 off")
    print("ratio = torch_ms / wgconv_ms  (> 1: wgconv is faster)\n")

    rows = []
    notes = set()
    methods = set()
    header = f"{'layer':<20} {'op':<24} {'wgconv ms':>11} {'torch ms':>11} {'ratio':>8}"
    print(header)
    print("-" * len(header))
    with torch.no_grad():
        for r in report["results"]:
            layer, op = r["layer"], r["op"]
            if args.layers and args.layers not in layer:
                continue
            if op not in OPS:
                print(f"skipping unknown op {op}", file=sys.stderr)
                continue
            if op.startswith("conv2d"):
                fn, note = conv_case(op, r["shape"], args.device)
            else:
                fn, note = pool_case(op, r["shape"], args.device), ""
            med, lo, hi, iters, method = time_op(fn, args.device, args)
            methods.add(method)
            wg = r["median_ms"]
            ratio = med / wg if wg > 0 else float("nan")
            mark = " *" if note else ""
            if note:
                notes.add(note)
            print(f"{layer:<20} {op:<24} {wg:>11.4f} {med:>11.4f} {ratio:>8.3f}{mark}")
            rows.append(
                {
                    "layer": layer,
                    "op": op,
                    "wgconv_ms": wg,
                    "torch_ms": med,
                    "torch_min_ms": lo,
                    "torch_max_ms": hi,
                    "torch_iterations": iters,
                    "torch_timing": method,
                    "ratio": ratio,
                    "wgconv_check": r.get("check"),
                    **({"note": note} if note else {}),
                }
            )
    for n in sorted(notes):
        print(f"* {n}")
    print(f"torch timing: {', '.join(sorted(methods))}")

    per_op = {}
    print("\nmedian ratio per op (torch_ms / wgconv_ms):")
    for op in OPS:
        ratios = [x["ratio"] for x in rows if x["op"] == op and x["ratio"] == x["ratio"]]
        if ratios:
            per_op[op] = statistics.median(ratios)
            print(f"  {op:<24} {per_op[op]:8.3f}   ({len(ratios)} layers)")

    if args.json:
        out = {
            "wgconv_report": args.report,
            "wgconv_device": report.get("device"),
            "wgconv_adapter": adapter,
            "torch_version": torch.__version__,
            "torch_device": args.device,
            "torch_device_name": torch_dev,
            "threads": torch.get_num_threads() if args.device == "cpu" else None,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if args.device == "cuda" else None,
            "torch_timing": sorted(methods),
            "results": rows,
            "median_ratio_per_op": per_op,
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
