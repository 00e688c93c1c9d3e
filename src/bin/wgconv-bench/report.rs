//! The report: JSON (the contract), CSV, the stdout table and the SVG bar chart.

use std::fmt::Write as _;

use serde::Serialize;
use wgconv::{Conv2dSpec, Pool2dSpec};

use crate::runner::{CheckOutcome, Measured};
use crate::suite::{Layer, Op};

/// Outcome of the comparison with the reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    Ok,
    Mismatch,
    Skipped,
}

impl Check {
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Ok => "ok",
            Check::Mismatch => "mismatch",
            Check::Skipped => "skipped",
        }
    }
}

/// The adapter (or CPU) the run used.
#[derive(Clone, Debug, Serialize)]
pub struct Adapter {
    pub name: String,
    pub backend: String,
    pub device_type: String,
}

/// A conv layer's `shape`.
#[derive(Clone, Debug, Serialize)]
pub struct ConvShape {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    /// `[top, bottom, left, right]`.
    pub padding: [usize; 4],
    pub dilation: [usize; 2],
    pub groups: usize,
}

/// A pool layer's `shape`.
#[derive(Clone, Debug, Serialize)]
pub struct PoolShape {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub ceil_mode: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count_include_pad: Option<bool>,
}

/// The `shape` object: conv or pool fields.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Shape {
    Conv(ConvShape),
    Pool(PoolShape),
}

impl Shape {
    pub fn conv(x: [usize; 4], k: usize, kernel: [usize; 2], spec: &Conv2dSpec) -> Shape {
        Shape::Conv(ConvShape {
            n: x[0],
            c: x[1],
            h: x[2],
            w: x[3],
            k,
            kh: kernel[0],
            kw: kernel[1],
            stride: spec.stride,
            padding: spec.padding.to_array(),
            dilation: spec.dilation,
            groups: spec.groups,
        })
    }

    pub fn pool(x: [usize; 4], spec: &Pool2dSpec, count_include_pad: Option<bool>) -> Shape {
        Shape::Pool(PoolShape {
            n: x[0],
            c: x[1],
            h: x[2],
            w: x[3],
            kernel: spec.kernel,
            stride: spec.stride,
            padding: spec.padding,
            dilation: spec.dilation,
            ceil_mode: spec.ceil_mode,
            count_include_pad,
        })
    }

    /// A compact one-line description for the table.
    pub fn summary(&self) -> String {
        match self {
            Shape::Conv(s) => {
                let [t, b, l, r] = s.padding;
                let pad = if t == b && l == r && t == l {
                    format!("p{t}")
                } else {
                    format!("p{t},{b},{l},{r}")
                };
                let mut out = format!(
                    "{}x{}x{}x{} k{} {}x{} s{} {pad}",
                    s.n,
                    s.c,
                    s.h,
                    s.w,
                    s.k,
                    s.kh,
                    s.kw,
                    pair(s.stride)
                );
                if s.dilation != [1, 1] {
                    let _ = write!(out, " d{}", pair(s.dilation));
                }
                if s.groups != 1 {
                    let _ = write!(out, " g{}", s.groups);
                }
                out
            }
            Shape::Pool(s) => {
                let kind = if s.count_include_pad.is_some() {
                    "avg"
                } else {
                    "max"
                };
                let mut out = format!(
                    "{}x{}x{}x{} {kind}{}x{} s{} p{}",
                    s.n,
                    s.c,
                    s.h,
                    s.w,
                    s.kernel[0],
                    s.kernel[1],
                    pair(s.stride),
                    pair(s.padding)
                );
                if s.dilation != [1, 1] {
                    let _ = write!(out, " d{}", pair(s.dilation));
                }
                if s.ceil_mode {
                    out.push_str(" ceil");
                }
                if s.count_include_pad == Some(false) {
                    out.push_str(" excl-pad");
                }
                out
            }
        }
    }
}

/// A rate with about three significant digits (at least two decimals).
pub fn rate(v: f64) -> String {
    if !v.is_finite() {
        format!("{v}")
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 0.1 || v == 0.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn pair(v: [usize; 2]) -> String {
    if v[0] == v[1] {
        v[0].to_string()
    } else {
        format!("{},{}", v[0], v[1])
    }
}

/// One (layer, op) result.
#[derive(Clone, Debug, Serialize)]
pub struct OpResult {
    pub layer: String,
    pub op: &'static str,
    /// The tensors' element type: `"f32"`, `"f16"` or `"bf16"`.
    pub dtype: String,
    pub shape: Shape,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub gflops: f64,
    pub gbps: f64,
    pub check: Check,
    /// `null` when the check was skipped.
    pub max_rel_err: Option<f64>,
    /// `"timestamp"` (GPU timestamp queries) or `"wall"` (submit-to-completion wall time).
    pub timing: &'static str,
    /// FLOPs (element ops for db and pools) of one call.
    pub flops: f64,
    /// Minimum bytes one call moves.
    pub bytes: f64,
    /// Op calls per sample.
    pub iterations: usize,
    /// Milliseconds per call, one per sample.
    pub samples_ms: Vec<f64>,
    /// Other layer names with the same shapes (folded into this one).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// What differed, for mismatches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mismatch_detail: Option<String>,
}

/// Median of a non-empty slice.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

impl OpResult {
    pub fn new(
        layer: &Layer,
        op: Op,
        shape: Shape,
        m: Measured,
        c: CheckOutcome,
        (flops, bytes): (f64, f64),
        dtype: wgconv::DType,
    ) -> OpResult {
        let median_ms = median(&m.samples_ms);
        let min_ms = m.samples_ms.iter().copied().fold(f64::INFINITY, f64::min);
        let max_ms = m
            .samples_ms
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        let per_s = |amount: f64| {
            if median_ms > 0.0 {
                amount / (median_ms * 1e-3) / 1e9
            } else {
                0.0
            }
        };
        OpResult {
            layer: layer.name.clone(),
            op: op.name(),
            dtype: dtype.to_string(),
            shape,
            median_ms,
            min_ms,
            max_ms,
            gflops: per_s(flops),
            gbps: per_s(bytes),
            check: c.check,
            max_rel_err: c.max_rel_err,
            timing: m.timing,
            flops,
            bytes,
            iterations: m.iterations,
            samples_ms: m.samples_ms,
            aliases: layer.aliases.clone(),
            mismatch_detail: c.detail,
        }
    }
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub adapter: Adapter,
    /// `"gpu"` or `"cpu"`.
    pub device: &'static str,
    pub suite: &'static str,
    pub warmup: usize,
    pub repeats: usize,
    /// `"timestamp"`, `"wall"`, or `"mixed"`.
    pub timing: String,
    pub wgconv_version: &'static str,
    /// Wall time of the whole run in seconds (setup, checks and all).
    pub total_s: f64,
    pub results: Vec<OpResult>,
    /// The latency-bound chain's host cost, eager against recorded (GPU runs with `--chain`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_chain: Option<crate::chain::ChainReport>,
}

impl Report {
    pub fn to_csv(&self) -> String {
        let mut s = String::from(
            "layer,op,n,c,h,w,k,kh,kw,stride_h,stride_w,pad_top,pad_bottom,pad_left,pad_right,\
             dilation_h,dilation_w,groups,ceil_mode,count_include_pad,median_ms,min_ms,max_ms,\
             gflops,gbps,check,max_rel_err,timing,flops,bytes,iterations,dtype\n",
        );
        for r in &self.results {
            let geo = match &r.shape {
                Shape::Conv(c) => format!(
                    "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},,",
                    c.n,
                    c.c,
                    c.h,
                    c.w,
                    c.k,
                    c.kh,
                    c.kw,
                    c.stride[0],
                    c.stride[1],
                    c.padding[0],
                    c.padding[1],
                    c.padding[2],
                    c.padding[3],
                    c.dilation[0],
                    c.dilation[1],
                    c.groups
                ),
                Shape::Pool(p) => format!(
                    "{},{},{},{},,{},{},{},{},{},{},{},{},{},{},,{},{}",
                    p.n,
                    p.c,
                    p.h,
                    p.w,
                    p.kernel[0],
                    p.kernel[1],
                    p.stride[0],
                    p.stride[1],
                    p.padding[0],
                    p.padding[0],
                    p.padding[1],
                    p.padding[1],
                    p.dilation[0],
                    p.dilation[1],
                    p.ceil_mode,
                    p.count_include_pad
                        .map(|b| b.to_string())
                        .unwrap_or_default()
                ),
            };
            let _ = writeln!(
                s,
                "{},{},{geo},{},{},{},{},{},{},{},{},{},{},{},{}",
                r.layer,
                r.op,
                r.median_ms,
                r.min_ms,
                r.max_ms,
                r.gflops,
                r.gbps,
                r.check.as_str(),
                r.max_rel_err.map(|e| e.to_string()).unwrap_or_default(),
                r.timing,
                r.flops,
                r.bytes,
                r.iterations,
                r.dtype
            );
        }
        s
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let head = [
            "layer",
            "op",
            "shape",
            "median ms",
            "min ms",
            "max ms",
            "GFLOP/s",
            "GB/s",
            "check",
            "rel err",
        ];
        let rows: Vec<[String; 10]> = self
            .results
            .iter()
            .map(|r| {
                [
                    r.layer.clone(),
                    r.op.to_string(),
                    r.shape.summary(),
                    format!("{:.3}", r.median_ms),
                    format!("{:.3}", r.min_ms),
                    format!("{:.3}", r.max_ms),
                    rate(r.gflops),
                    rate(r.gbps),
                    r.check.as_str().to_string(),
                    r.max_rel_err
                        .map(|e| format!("{e:.1e}"))
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        let mut width = head.map(str::len);
        for row in &rows {
            for (w, cell) in width.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        // Text columns left-aligned, numbers right-aligned.
        let left = [
            true, true, true, false, false, false, false, false, true, false,
        ];
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i > 0 {
                    s.push_str("  ");
                }
                if left[i] {
                    let _ = write!(s, "{cell:<w$}", w = width[i]);
                } else {
                    let _ = write!(s, "{cell:>w$}", w = width[i]);
                }
            }
            s.trim_end().to_string()
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "wgconv-bench: suite {}, device {} ({}, {}, {}), timing {}, warm-up {}, {} samples",
            self.suite,
            self.device,
            self.adapter.name,
            self.adapter.backend,
            self.adapter.device_type,
            self.timing,
            self.warmup,
            self.repeats
        );
        let head: Vec<String> = head.iter().map(|s| s.to_string()).collect();
        let header = line(&head);
        let _ = writeln!(out, "{header}");
        let _ = writeln!(out, "{}", "-".repeat(header.len()));
        for row in &rows {
            let _ = writeln!(out, "{}", line(row));
        }
        out
    }

    /// A horizontal bar chart of GFLOP/s per layer and op.
    pub fn svg(&self) -> String {
        let colors = [
            "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
        ];
        let color = |op: &str| {
            let i = Op::ALL.iter().position(|o| o.name() == op).unwrap_or(0);
            colors[i]
        };
        let short = |op: &str| {
            Op::ALL
                .iter()
                .find(|o| o.name() == op)
                .map(|o| o.short())
                .unwrap_or("?")
        };
        let (label_w, bar_w, row_h, gap, top) = (230.0, 560.0, 16.0, 8.0, 70.0);
        let max = self
            .results
            .iter()
            .map(|r| r.gflops)
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max)
            .max(1e-9);
        let mut body = String::new();
        let mut y = top;
        let mut prev_layer: Option<&str> = None;
        for r in &self.results {
            if prev_layer != Some(r.layer.as_str()) {
                if prev_layer.is_some() {
                    y += gap;
                }
                let _ = writeln!(
                    body,
                    r#"<text x="8" y="{:.1}" font-weight="bold">{}</text>"#,
                    y + row_h * 0.75,
                    esc(&r.layer)
                );
                prev_layer = Some(&r.layer);
            }
            let w = if r.gflops.is_finite() {
                r.gflops / max * bar_w
            } else {
                0.0
            };
            let _ = writeln!(
                body,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                label_w - 6.0,
                y + row_h * 0.75,
                short(r.op)
            );
            let _ = writeln!(
                body,
                r#"<rect x="{label_w}" y="{:.1}" width="{w:.1}" height="{:.1}" fill="{}"><title>{} {}: {:.3} GFLOP/s, {:.3} ms</title></rect>"#,
                y + 1.0,
                row_h - 2.0,
                color(r.op),
                esc(&r.layer),
                r.op,
                r.gflops,
                r.median_ms
            );
            let mark = if r.check == Check::Mismatch {
                " MISMATCH"
            } else {
                ""
            };
            let _ = writeln!(
                body,
                r#"<text x="{:.1}" y="{:.1}">{}{mark}</text>"#,
                label_w + w + 4.0,
                y + row_h * 0.75,
                rate(r.gflops)
            );
            y += row_h;
        }
        let height = y + 30.0;
        let width = label_w + bar_w + 110.0;
        let mut legend = String::new();
        let mut lx = 8.0;
        for op in Op::ALL {
            if self.results.iter().any(|r| r.op == op.name()) {
                let _ = write!(
                    legend,
                    r#"<rect x="{lx}" y="40" width="10" height="10" fill="{}"/><text x="{}" y="49">{}</text>"#,
                    color(op.name()),
                    lx + 14.0,
                    op.short()
                );
                lx += 24.0 + 7.0 * op.short().len() as f64;
            }
        }
        format!(
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="8" y="18" font-size="14" font-weight="bold">wgconv-bench {suite} on {dev}: {name} ({backend}), timing {timing}</text>
<text x="8" y="32">GFLOP/s per layer and op (median); db and pools: G element-ops/s (adds or compares)</text>
{legend}
<line x1="{label_w}" y1="{top0:.1}" x2="{label_w}" y2="{yend:.1}" stroke="#333"/>
{body}</svg>
"##,
            suite = self.suite,
            dev = self.device,
            name = esc(&self.adapter.name),
            backend = esc(&self.adapter.backend),
            timing = self.timing,
            top0 = top - 4.0,
            yend = y + 4.0,
        )
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
