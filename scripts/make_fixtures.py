#!/usr/bin/env python3
"""Generate PyTorch reference fixtures for wgconv's conv2d / pooling tests.

Writes three JSON files (paths are relative to the repository root, which is
found from this script's own location, so the cwd does not matter):

    tests/fixtures/conv2d.json      conv2d forward + backward (dx, dw, db)
    tests/fixtures/max_pool2d.json  max_pool2d forward (y, indices) + backward
    tests/fixtures/avg_pool2d.json  avg_pool2d forward + backward
    tests/fixtures/sixteen_bit.json the same ops in bfloat16 and float16 (below)

Run:  python3 scripts/make_fixtures.py

How values are produced
-----------------------
* Every input tensor (x, w, bias, dy) is drawn as float32 from a seeded
  ``torch.Generator`` (deterministic), then converted to float64.  The stored
  inputs are those float64 values (exactly the f32 draws).
* Every output / gradient is computed by PyTorch on CPU in float64 with
  autograd, using the stored upstream gradient ``dy``.
* conv2d with asymmetric padding is ``F.pad(x, (left, right, top, bottom))``
  followed by ``F.conv2d(..., padding=0)``; gradients flow back through the pad.
* max_pool2d y/indices are computed on both the float32 and the float64 input
  and the indices are asserted to agree.
* Running the script twice produces byte-identical files (single-threaded
  torch, fixed seeds, no dict/set ordering dependence).

16-bit cases (sixteen_bit.json)
-------------------------------
A subset of the cases above (the named ones, and the first random ones) again in
``torch.bfloat16`` and ``torch.float16``: the f32 inputs rounded to the dtype
(stored as those exact values), then
* ``"torch"``: the outputs PyTorch computes on the CPU in that dtype (autograd in
  the dtype, with ``dy`` rounded too), stored as their exact 16-bit values;
* ``"exact"``: the same outputs computed in float64 on the rounded inputs (not
  rounded), the oracle a once-rounding implementation is held to.
PyTorch's CPU kernels do not all round once: its bfloat16 convolutions and pool
forwards do, its float16 convolutions and its pool backwards (which add rounded
terms in the dtype) do not, so a test holds wgconv to ``exact`` rounded once, and
to ``torch`` within PyTorch's own distance from ``exact`` plus one unit in the last
place. Extra fields: ``"op"`` (conv2d, max_pool2d, avg_pool2d) and ``"dtype"``
(bf16, f16); the spec fields are those of the op's own file.

JSON encoding
-------------
Top level: ``{"generator": "scripts/make_fixtures.py", "torch": <version>,
"cases": [...]}``.  Every case has a unique ``"name"``.  A tensor is
``{"shape": [...], "data": [flat row-major values]}``.  Finite floats are JSON
numbers with full round-trip precision (Python ``repr``); non-finite floats
are the strings ``"nan"``, ``"inf"``, ``"-inf"`` (the JSON itself is strict,
written with ``allow_nan=False``).  Index tensors hold integers.

conv2d case fields:     name, stride [sh,sw], padding [top,bottom,left,right],
                        dilation [dh,dw], groups, x, w, bias|null, dy,
                        y, dx, dw, db|null
max_pool2d case fields: name, kernel [kh,kw], stride [sh,sw], padding [ph,pw],
                        dilation [dh,dw], ceil_mode, x, dy, y, indices, dx
avg_pool2d case fields: name, kernel, stride, padding [ph,pw], ceil_mode,
                        count_include_pad, x, dy, y, dx
                        (dilation is always 1, no divisor_override)
"""

import json
import math
import random
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "tests" / "fixtures"

torch.set_num_threads(1)


# --------------------------------------------------------------------------
# encoding helpers
# --------------------------------------------------------------------------

def _enc_float(v):
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return float(v)


def enc(t):
    """Encode a float tensor (values converted to float64)."""
    t = t.detach().to(torch.float64).contiguous()
    return {"shape": list(t.shape), "data": [_enc_float(v) for v in t.reshape(-1).tolist()]}


def enc_int(t):
    t = t.detach().contiguous()
    return {"shape": list(t.shape), "data": [int(v) for v in t.reshape(-1).tolist()]}


def write(name, cases):
    names = [c["name"] for c in cases]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise SystemExit(f"{name}: duplicate case names {sorted(dup)}")
    obj = {"generator": "scripts/make_fixtures.py", "torch": torch.__version__, "cases": cases}
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / name
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, separators=(",", ":"), allow_nan=False)
        f.write("\n")
    print(f"wrote {path.relative_to(ROOT)}: {len(cases)} cases, {path.stat().st_size} bytes")


def gen_for(name):
    """Per-case generator seeded from the case name (stable across runs)."""
    return torch.Generator().manual_seed(zlib.crc32(name.encode("utf-8")))


def randn32(g, shape):
    return torch.randn(shape, generator=g, dtype=torch.float32)


def pair(v):
    return [v, v] if isinstance(v, int) else list(v)


# --------------------------------------------------------------------------
# conv2d
# --------------------------------------------------------------------------

def conv_out(n, pa, pb, k, s, d):
    eff = d * (k - 1) + 1
    return (n + pa + pb - eff) // s + 1 if n + pa + pb >= eff else 0


def conv_case(name, n, c, h, w, k, kh, kw, stride=1, padding=0, dilation=1,
              groups=1, bias=True):
    """padding: int (all four sides) or [top, bottom, left, right]."""
    sh, sw = pair(stride)
    dh, dw = pair(dilation)
    pad = [padding] * 4 if isinstance(padding, int) else list(padding)
    top, bottom, left, right = pad
    assert c % groups == 0 and k % groups == 0, name
    oh = conv_out(h, top, bottom, kh, sh, dh)
    ow = conv_out(w, left, right, kw, sw, dw)
    assert oh > 0 and ow > 0, f"{name}: empty output"

    g = gen_for(name)
    x32 = randn32(g, (n, c, h, w))
    w32 = randn32(g, (k, c // groups, kh, kw))
    b32 = randn32(g, (k,)) if bias else None
    dy32 = randn32(g, (n, k, oh, ow))

    x = x32.double().requires_grad_(True)
    wt = w32.double().requires_grad_(True)
    b = b32.double().requires_grad_(True) if bias else None
    dy = dy32.double()

    xp = F.pad(x, (left, right, top, bottom))
    y = F.conv2d(xp, wt, b, stride=(sh, sw), padding=0, dilation=(dh, dw), groups=groups)
    assert list(y.shape) == [n, k, oh, ow], (name, y.shape, (n, k, oh, ow))
    if bias:
        dx, dwt, db = torch.autograd.grad(y, [x, wt, b], dy)
    else:
        dx, dwt = torch.autograd.grad(y, [x, wt], dy)
        db = None

    return {
        "name": name,
        "stride": [sh, sw],
        "padding": pad,
        "dilation": [dh, dw],
        "groups": groups,
        "x": enc(x32),
        "w": enc(w32),
        "bias": enc(b32) if bias else None,
        "dy": enc(dy32),
        "y": enc(y),
        "dx": enc(dx),
        "dw": enc(dwt),
        "db": enc(db) if bias else None,
    }


def conv_cases():
    cs = []
    a = cs.append
    # conv_case(name, N, C, H, W, K, kh, kw, stride, padding, dilation, groups, bias)
    a(conv_case("plain_3x3_s1_p1", 1, 2, 5, 5, 3, 3, 3, 1, 1))
    a(conv_case("pointwise_1x1", 2, 3, 3, 4, 4, 1, 1))
    a(conv_case("pointwise_1x1_s2_downsample", 1, 3, 5, 6, 4, 1, 1, stride=2))
    # stride 2, k=3, pad 0: H: 6-2-1=3 (rem 1), W: 8-2-1=5 (rem 1)
    a(conv_case("stride2_remainder_h1_w1", 1, 2, 6, 8, 2, 3, 3, stride=2))
    # stride 3, pad 1: H: 8+2-3=7 (rem 1), W: 9+2-3=8 (rem 2)
    a(conv_case("stride3_remainder_h1_w2", 1, 2, 8, 9, 2, 3, 3, stride=3, padding=1))
    # stride (2,3), k=2, pad 0: H: 7-1-1=5 (rem 1 mod 2), W: 10-1-1=8 (rem 2 mod 3)
    a(conv_case("stride2x3_remainder_h1_w2", 1, 2, 7, 10, 2, 2, 2, stride=(2, 3)))
    a(conv_case("kernel_3x5_larger_than_input_2x3", 1, 2, 2, 3, 2, 3, 5, padding=[1, 1, 2, 2]))
    a(conv_case("asym_padding_t2_b0_l1_r3", 1, 2, 4, 5, 3, 3, 3, padding=[2, 0, 1, 3]))
    a(conv_case("asym_padding_1x1_kernel_top2_right1", 1, 2, 3, 4, 2, 1, 1, padding=[2, 0, 0, 1]))
    a(conv_case("asym_padding_exceeds_kernel_reach_s2", 1, 2, 4, 4, 2, 2, 2, stride=2,
                padding=[3, 0, 0, 2]))
    a(conv_case("dilation2_3x3_p2", 1, 2, 7, 7, 2, 3, 3, padding=2, dilation=2))
    a(conv_case("dilation_2x3_nonsquare", 1, 2, 7, 9, 2, 3, 3, padding=[1, 2, 3, 0],
                dilation=(2, 3)))
    a(conv_case("groups2", 1, 4, 5, 5, 6, 3, 3, padding=1, groups=2))
    a(conv_case("depthwise_c3", 1, 3, 5, 5, 3, 3, 3, padding=1, groups=3))
    a(conv_case("depthwise_multiplier2_c3_k6", 1, 3, 4, 5, 6, 3, 3, padding=1, groups=3))
    a(conv_case("depthwise_multiplier3_c2_k6_s2", 1, 2, 5, 6, 6, 3, 3, stride=2, padding=1,
                groups=2))
    a(conv_case("no_bias_3x3_p1", 1, 2, 4, 5, 3, 3, 3, padding=1, bias=False))
    a(conv_case("nonsquare_everything", 2, 2, 7, 9, 3, 2, 3, stride=(2, 1),
                padding=[0, 1, 2, 3], dilation=(1, 2)))
    a(conv_case("batch3_3x3_p1", 3, 2, 4, 4, 2, 3, 3, padding=1))
    a(conv_case("spatial_1x1_input_1x1_kernel", 2, 3, 1, 1, 4, 1, 1))
    a(conv_case("spatial_1x1_input_3x3_kernel_p1", 2, 3, 1, 1, 4, 3, 3, padding=1))
    a(conv_case("stride3_gt_kernel2", 1, 2, 8, 7, 2, 2, 2, stride=3))
    a(conv_case("groups2_no_bias_stride2_dil2", 2, 4, 6, 7, 4, 2, 3, stride=2, padding=[1, 0, 2, 1],
                dilation=2, groups=2, bias=False))

    # seeded random mixes
    rng = random.Random(20240611)
    i = 0
    while i < 24:
        n = rng.randint(1, 3)
        grp = rng.choice([1, 2, 3])
        cpg = rng.randint(1, 4)
        kpg = rng.randint(1, 4)
        h = rng.randint(1, 9)
        w = rng.randint(1, 9)
        kh = rng.randint(1, 4)
        kw = rng.randint(1, 4)
        sh, sw = rng.randint(1, 3), rng.randint(1, 3)
        dh, dw = rng.randint(1, 3), rng.randint(1, 3)
        pad = [rng.randint(0, 3) for _ in range(4)]
        bias = rng.random() < 0.5
        c, k = grp * cpg, grp * kpg
        oh = conv_out(h, pad[0], pad[1], kh, sh, dh)
        ow = conv_out(w, pad[2], pad[3], kw, sw, dw)
        if oh == 0 or ow == 0:
            continue
        # keep the fixture file small: bound the total tensor volume per case
        vol = n * c * h * w + k * cpg * kh * kw + n * k * oh * ow
        if vol > 600:
            continue
        a(conv_case(f"random_{i:02d}", n, c, h, w, k, kh, kw, (sh, sw), pad, (dh, dw), grp, bias))
        i += 1
    return cs


# --------------------------------------------------------------------------
# pooling helpers
# --------------------------------------------------------------------------

def windows_all_hit_input(size, out, k, s, p, d):
    for o in range(out):
        start = o * s - p
        if not any(0 <= start + i * d < size for i in range(k)):
            return False
    return True


def pool_out_naive_ceil(size, k, s, p, d):
    """ceil-mode output size WITHOUT PyTorch's 'drop last window' rule."""
    return -(-(size + 2 * p - d * (k - 1) - 1) // s) + 1


# --------------------------------------------------------------------------
# max_pool2d
# --------------------------------------------------------------------------

def max_pool_case(name, x32, kernel, stride=None, padding=0, dilation=1, ceil_mode=False,
                  g=None, expect=None):
    kh, kw = pair(kernel)
    sh, sw = pair(stride if stride is not None else kernel)
    ph, pw = pair(padding)
    dh, dw = pair(dilation)
    kw_args = dict(kernel_size=(kh, kw), stride=(sh, sw), padding=(ph, pw),
                   dilation=(dh, dw), ceil_mode=ceil_mode, return_indices=True)

    y32, i32 = F.max_pool2d(x32, **kw_args)
    x = x32.double().requires_grad_(True)
    y, idx = F.max_pool2d(x, **kw_args)
    if not torch.equal(i32, idx):
        raise SystemExit(f"max_pool2d {name}: f32 and f64 indices differ\n{i32}\n{idx}")
    if not torch.equal(torch.isnan(y32), torch.isnan(y.detach())) or not torch.equal(
            torch.nan_to_num(y32.double(), nan=0.0), torch.nan_to_num(y.detach(), nan=0.0)):
        raise SystemExit(f"max_pool2d {name}: f32 and f64 values differ")
    n, c, h, w = x32.shape
    _, _, oh, ow = y.shape
    if expect is not None:
        assert (oh, ow) == expect, (name, (oh, ow), expect)
    assert windows_all_hit_input(h, oh, kh, sh, ph, dh) and windows_all_hit_input(
        w, ow, kw, sw, pw, dw), name
    if g is None:
        g = gen_for(name + "/dy")
    dy32 = randn32(g, (n, c, oh, ow))
    (dx,) = torch.autograd.grad(y, [x], dy32.double())
    return {
        "name": name,
        "kernel": [kh, kw],
        "stride": [sh, sw],
        "padding": [ph, pw],
        "dilation": [dh, dw],
        "ceil_mode": bool(ceil_mode),
        "x": enc(x32),
        "dy": enc(dy32),
        "y": enc(y),
        "indices": enc_int(idx),
        "dx": enc(dx),
    }


def max_pool_cases():
    cs = []
    a = cs.append
    nan, inf = float("nan"), float("inf")

    def rx(name, shape):
        return randn32(gen_for(name), shape)

    nm = "plain_2x2_s2"
    a(max_pool_case(nm, rx(nm, (2, 2, 4, 6)), 2, 2))
    nm = "resnet_stem_3x3_s2_p1"
    a(max_pool_case(nm, rx(nm, (1, 2, 7, 8)), 3, 2, 1))
    # ceil_mode: H=3,k=2,s=2,p=1 -> naive ceil gives 3 windows, the 3rd would start
    # at row 3 == H (entirely in bottom padding) and is dropped -> 2.
    # W=5,k=2,s=2,p=1 -> likewise 4 -> 3.
    nm = "ceil_mode_last_window_in_padding_dropped"
    assert pool_out_naive_ceil(3, 2, 2, 1, 1) == 3 and pool_out_naive_ceil(5, 2, 2, 1, 1) == 4
    a(max_pool_case(nm, rx(nm, (1, 2, 3, 5)), 2, 2, 1, ceil_mode=True, expect=(2, 3)))
    # ceil_mode keeps a partial window: H=4,k=3,s=2,p=0 -> floor 1, ceil 2 (window at
    # rows 2..4, row 4 out of bounds); W=6,k=3,s=2,p=1 -> floor 3, ceil 4 (last window
    # starts at col 5, in-bounds, extends into padding and past it).
    nm = "ceil_mode_partial_window_kept"
    a(max_pool_case(nm, rx(nm, (1, 2, 4, 6)), 3, 2, (0, 1), ceil_mode=True, expect=(2, 4)))
    # mixed: partial window kept in H, last window dropped in W
    nm = "ceil_mode_kept_h_dropped_w"
    assert pool_out_naive_ceil(5, 2, 2, 1, 1) == 4
    a(max_pool_case(nm, rx(nm, (1, 1, 4, 5)), (3, 2), 2, (0, 1), ceil_mode=True,
                    expect=(2, 3)))
    nm = "dilation2_3x3_s1"
    a(max_pool_case(nm, rx(nm, (1, 2, 7, 6)), 3, 1, 1, dilation=2))
    nm = "dilation2_ceil_mode_s2"
    a(max_pool_case(nm, rx(nm, (1, 1, 8, 7)), 2, 2, 1, dilation=2, ceil_mode=True))
    nm = "nonsquare_k2x3_s1x2_p1x0"
    a(max_pool_case(nm, rx(nm, (2, 1, 5, 8)), (2, 3), (1, 2), (1, 0)))
    nm = "nonsquare_dilation_1x2_k3x2"
    a(max_pool_case(nm, rx(nm, (1, 2, 6, 7)), (3, 2), (2, 1), (1, 1), dilation=(1, 2)))
    # ties: small integers, many equal maxima, first max wins
    nm = "ties_small_ints_2x2_s2"
    g = gen_for(nm)
    xt = torch.randint(-2, 3, (1, 2, 6, 6), generator=g).to(torch.float32)
    a(max_pool_case(nm, xt, 2, 2, g=g))
    nm = "ties_small_ints_overlap_3x3_s1_p1"
    g = gen_for(nm)
    xt = torch.randint(-2, 3, (1, 2, 5, 6), generator=g).to(torch.float32)
    a(max_pool_case(nm, xt, 3, 1, 1, g=g))
    nm = "ties_all_equal_3x3_s2_p1"
    a(max_pool_case(nm, torch.ones(1, 1, 5, 5), 3, 2, 1))
    # NaN: window (0,0) has NaN as its first element; window (0,1) has two NaNs;
    # window (1,1) has a NaN as its last element.
    nm = "nan_2x2_s2"
    xn = rx(nm, (1, 2, 4, 4))
    xn[0, 0, 0, 0] = nan
    xn[0, 0, 0, 3] = nan
    xn[0, 0, 1, 2] = nan
    xn[0, 0, 3, 3] = nan
    xn[0, 1, 2, 1] = nan
    xn[0, 1, 3, 0] = nan
    a(max_pool_case(nm, xn, 2, 2))
    # NaN shared by overlapping windows, two NaNs in one window, NaN at a window start
    nm = "nan_overlap_3x3_s2_p1"
    xn = rx(nm, (1, 1, 6, 6))
    xn[0, 0, 0, 0] = nan  # first in-bounds element of window (0,0)
    xn[0, 0, 2, 2] = nan  # shared by windows (0,0),(0,1),(1,0),(1,1)
    xn[0, 0, 3, 3] = nan  # second NaN in window (1,1) / first element of window (2,2)
    xn[0, 0, 5, 0] = nan
    a(max_pool_case(nm, xn, 3, 2, 1))
    nm = "all_negative_padded_3x3_s2_p1"
    g = gen_for(nm)
    xneg = -randn32(g, (1, 2, 5, 6)).abs() - 1.0
    a(max_pool_case(nm, xneg, 3, 2, 1, g=g))
    nm = "all_negative_padded_2x2_s1_p1"
    g = gen_for(nm)
    xneg = -randn32(g, (1, 1, 4, 5)).abs() - 1.0
    a(max_pool_case(nm, xneg, 2, 1, 1, g=g))
    # windows whose in-bounds values are all -inf: index = first in-bounds element
    nm = "all_neg_inf_windows"
    xi = rx(nm, (1, 1, 6, 6))
    xi[0, 0, 0:2, 0:2] = -inf  # window (0,0) with padding: in-bounds part all -inf
    xi[0, 0, 3:6, 3:6] = -inf  # window (2,2) fully -inf (and part of others)
    xi[0, 0, 1, 4] = inf
    a(max_pool_case(nm, xi, 3, 2, 1))
    nm = "overlap_3x3_s1_backward_accumulates"
    g = gen_for(nm)
    # a few large values so that several windows pick the same argmax
    xo = randn32(g, (1, 2, 5, 5))
    xo[0, 0, 2, 2] = 10.0
    xo[0, 1, 1, 3] = 10.0
    a(max_pool_case(nm, xo, 3, 1, g=g))
    nm = "padding_half_kernel_4x4_s2_p2"
    a(max_pool_case(nm, rx(nm, (1, 1, 6, 7)), 4, 2, 2))
    nm = "padding_half_kernel_2x2_s1_p1_ceil"
    a(max_pool_case(nm, rx(nm, (1, 2, 3, 4)), 2, 1, 1, ceil_mode=True))
    nm = "stride3_gt_kernel2"
    a(max_pool_case(nm, rx(nm, (1, 2, 7, 8)), 2, 3))
    nm = "global_kernel_eq_input"
    a(max_pool_case(nm, rx(nm, (2, 3, 4, 5)), (4, 5)))

    rng = random.Random(777001)
    i = 0
    while i < 16:
        kh, kw = rng.randint(1, 4), rng.randint(1, 4)
        sh, sw = rng.randint(1, 3), rng.randint(1, 3)
        ph, pw = rng.randint(0, kh // 2), rng.randint(0, kw // 2)
        dh, dw = rng.randint(1, 2), rng.randint(1, 2)
        ceil = rng.random() < 0.5
        h, w = rng.randint(1, 10), rng.randint(1, 10)
        n, c = rng.randint(1, 2), rng.randint(1, 3)
        nm = f"random_{i:02d}"
        x32 = rx(nm, (n, c, h, w))
        try:
            y = F.max_pool2d(x32, (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil_mode=ceil)
        except RuntimeError:
            continue
        oh, ow = y.shape[2], y.shape[3]
        if oh == 0 or ow == 0:
            continue
        if not (windows_all_hit_input(h, oh, kh, sh, ph, dh)
                and windows_all_hit_input(w, ow, kw, sw, pw, dw)):
            continue
        a(max_pool_case(nm, x32, (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil))
        i += 1
    return cs


# --------------------------------------------------------------------------
# avg_pool2d
# --------------------------------------------------------------------------

def avg_pool_case(name, x32, kernel, stride=None, padding=0, ceil_mode=False,
                  count_include_pad=True, expect=None):
    kh, kw = pair(kernel)
    sh, sw = pair(stride if stride is not None else kernel)
    ph, pw = pair(padding)
    x = x32.double().requires_grad_(True)
    y = F.avg_pool2d(x, (kh, kw), (sh, sw), (ph, pw), ceil_mode=ceil_mode,
                     count_include_pad=count_include_pad)
    n, c, h, w = x32.shape
    _, _, oh, ow = y.shape
    if expect is not None:
        assert (oh, ow) == expect, (name, (oh, ow), expect)
    assert windows_all_hit_input(h, oh, kh, sh, ph, 1) and windows_all_hit_input(
        w, ow, kw, sw, pw, 1), name
    dy32 = randn32(gen_for(name + "/dy"), (n, c, oh, ow))
    (dx,) = torch.autograd.grad(y, [x], dy32.double())
    return {
        "name": name,
        "kernel": [kh, kw],
        "stride": [sh, sw],
        "padding": [ph, pw],
        "ceil_mode": bool(ceil_mode),
        "count_include_pad": bool(count_include_pad),
        "x": enc(x32),
        "dy": enc(dy32),
        "y": enc(y),
        "dx": enc(dx),
    }


def avg_pool_cases():
    cs = []
    a = cs.append

    def rx(name, shape):
        return randn32(gen_for(name), shape)

    nm = "plain_2x2_s2"
    a(avg_pool_case(nm, rx(nm, (2, 2, 4, 6)), 2, 2))
    for cip in (True, False):
        nm = f"3x3_s1_p1_count_include_pad_{str(cip).lower()}"
        a(avg_pool_case(nm, rx(nm, (1, 2, 5, 5)), 3, 1, 1, count_include_pad=cip))
    for cip in (True, False):
        tag = str(cip).lower()
        # H=4,k=3,s=2,p=1: floor 2, ceil 3; last window rows 3..5, divisor window
        # clipped to H+pad=5 -> 2 rows (count_include_pad) / 1 row in bounds.
        # W=6,k=3,s=2,p=1: floor 3, ceil 4; last window cols 5..7 clipped to 7 -> 2.
        nm = f"ceil_mode_clipped_window_cip_{tag}"
        a(avg_pool_case(nm, rx(nm, (1, 2, 4, 6)), 3, 2, 1, ceil_mode=True,
                        count_include_pad=cip, expect=(3, 4)))
        # H=3,k=2,s=2,p=1 / W=5: naive ceil adds a window starting in the padding,
        # PyTorch drops it.
        nm = f"ceil_mode_last_window_in_padding_dropped_cip_{tag}"
        a(avg_pool_case(nm, rx(nm, (1, 2, 3, 5)), 2, 2, 1, ceil_mode=True,
                        count_include_pad=cip, expect=(2, 3)))
        # no padding, ceil window runs past the input edge
        nm = f"ceil_mode_no_padding_partial_cip_{tag}"
        a(avg_pool_case(nm, rx(nm, (1, 1, 5, 7)), (2, 3), (2, 2), 0, ceil_mode=True,
                        count_include_pad=cip, expect=(3, 3)))
    nm = "nonsquare_k2x3_s1x2_p1x0"
    a(avg_pool_case(nm, rx(nm, (2, 1, 5, 8)), (2, 3), (1, 2), (1, 0)))
    nm = "nonsquare_k3x2_s2x1_p1x1_no_cip"
    a(avg_pool_case(nm, rx(nm, (1, 2, 6, 5)), (3, 2), (2, 1), (1, 1), count_include_pad=False))
    nm = "overlap_3x3_s1"
    a(avg_pool_case(nm, rx(nm, (1, 2, 5, 6)), 3, 1))
    nm = "overlap_4x4_s2_p2_ceil"
    a(avg_pool_case(nm, rx(nm, (1, 1, 7, 6)), 4, 2, 2, ceil_mode=True))
    nm = "stride3_gt_kernel2"
    a(avg_pool_case(nm, rx(nm, (1, 2, 7, 8)), 2, 3))
    nm = "global_kernel_eq_input"
    a(avg_pool_case(nm, rx(nm, (2, 3, 4, 5)), (4, 5)))
    nm = "global_1x1_input"
    a(avg_pool_case(nm, rx(nm, (2, 3, 1, 1)), 1))

    rng = random.Random(888002)
    i = 0
    while i < 16:
        kh, kw = rng.randint(1, 4), rng.randint(1, 4)
        sh, sw = rng.randint(1, 3), rng.randint(1, 3)
        ph, pw = rng.randint(0, kh // 2), rng.randint(0, kw // 2)
        ceil = rng.random() < 0.5
        cip = rng.random() < 0.5
        h, w = rng.randint(1, 10), rng.randint(1, 10)
        n, c = rng.randint(1, 2), rng.randint(1, 3)
        nm = f"random_{i:02d}"
        x32 = rx(nm, (n, c, h, w))
        try:
            y = F.avg_pool2d(x32, (kh, kw), (sh, sw), (ph, pw), ceil_mode=ceil,
                             count_include_pad=cip)
        except RuntimeError:
            continue
        oh, ow = y.shape[2], y.shape[3]
        if oh == 0 or ow == 0:
            continue
        if not (windows_all_hit_input(h, oh, kh, sh, ph, 1)
                and windows_all_hit_input(w, ow, kw, sw, pw, 1)):
            continue
        a(avg_pool_case(nm, x32, (kh, kw), (sh, sw), (ph, pw), ceil, cip))
        i += 1
    return cs


# --------------------------------------------------------------------------
# 16-bit cases
# --------------------------------------------------------------------------

SIXTEEN = (("bf16", torch.bfloat16), ("f16", torch.float16))
INPUTS = ("x", "w", "bias", "dy")


def dec(v):
    """A fixture tensor back as float64 (the inverse of enc)."""
    data = [float(x) for x in v["data"]]
    return torch.tensor(data, dtype=torch.float64).reshape(v["shape"])


def run_op(op, case, ins, dtype):
    """The op of a case on inputs ins (name -> tensor) in dtype: its outputs by name."""
    x = ins["x"].to(dtype).requires_grad_(True)
    dy = ins["dy"].to(dtype)
    if op == "conv2d":
        top, bottom, left, right = case["padding"]
        w = ins["w"].to(dtype).requires_grad_(True)
        b = ins["bias"].to(dtype).requires_grad_(True) if "bias" in ins else None
        y = F.conv2d(F.pad(x, (left, right, top, bottom)), w, b, stride=case["stride"],
                     dilation=case["dilation"], groups=case["groups"])
        grads = torch.autograd.grad(y, [x, w] + ([b] if b is not None else []), dy)
        out = {"y": y, "dx": grads[0], "dw": grads[1]}
        if b is not None:
            out["db"] = grads[2]
        return out
    if op == "max_pool2d":
        y, idx = F.max_pool2d(x, case["kernel"], case["stride"], case["padding"],
                              case["dilation"], ceil_mode=case["ceil_mode"],
                              return_indices=True)
        (dx,) = torch.autograd.grad(y, [x], dy)
        return {"y": y, "indices": idx, "dx": dx}
    y = F.avg_pool2d(x, case["kernel"], case["stride"], case["padding"],
                     ceil_mode=case["ceil_mode"], count_include_pad=case["count_include_pad"])
    (dx,) = torch.autograd.grad(y, [x], dy)
    return {"y": y, "dx": dx}


def sixteen_bit_case(op, case, tag, dtype):
    """A case of op again in a 16-bit dtype (see the module docs)."""
    rounded = {k: dec(case[k]).to(dtype).double() for k in INPUTS if case.get(k) is not None}
    mine = run_op(op, case, rounded, dtype)
    exact = run_op(op, case, rounded, torch.float64)
    out = {k: v for k, v in case.items() if k not in ("y", "dx", "dw", "db", "indices")}
    out.update({"name": f"{op}/{tag}/{case['name']}", "op": op, "dtype": tag})
    out.update({k: enc(v) for k, v in rounded.items()})
    out["torch"] = {k: enc_int(v) if k == "indices" else enc(v) for k, v in mine.items()}
    out["exact"] = {k: enc(v) for k, v in exact.items() if k != "indices"}
    return out


def sixteen_bit_cases(conv, max_pool, avg_pool):
    """The named cases of each op and its first random ones, in each 16-bit dtype."""
    def subset(cases, randoms):
        named = [c for c in cases if not c["name"].startswith("random_")]
        return named + [c for c in cases if c["name"].startswith("random_")][:randoms]

    cs = []
    for tag, dtype in SIXTEEN:
        for op, cases in (("conv2d", subset(conv, 8)), ("max_pool2d", subset(max_pool, 4)),
                          ("avg_pool2d", subset(avg_pool, 4))):
            cs.extend(sixteen_bit_case(op, c, tag, dtype) for c in cases)
    return cs


def main():
    conv, max_pool, avg_pool = conv_cases(), max_pool_cases(), avg_pool_cases()
    write("conv2d.json", conv)
    write("max_pool2d.json", max_pool)
    write("avg_pool2d.json", avg_pool)
    write("sixteen_bit.json", sixteen_bit_cases(conv, max_pool, avg_pool))


if __name__ == "__main__":
    main()
