//! The stride phases of dx: the transposed convolution split into stride-1 GEMMs over dy, one
//! per (row phase, column phase), each with only the kernel taps that reach its input rows and
//! columns, so no zero of the stride dilation is ever loaded or multiplied.

use crate::spec::Conv2dGeometry;

/// The reduction lattice `r = (q, t, s)` of one implicit GEMM: `taps` rows and columns of
/// kernel taps per channel `q`, the activation shift per tap row and column, and the weight
/// offset `w_first + q * w_steps[0] + t * w_steps[1] + s * w_steps[2]` (see
/// `shaders/conv2d_gemm.wgsl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lattice {
    /// Tap rows and columns per channel.
    pub taps: [usize; 2],
    /// Activation row and column shift per tap row and column.
    pub shift: [i64; 2],
    /// Weight offset per channel, tap row and tap column.
    pub w_steps: [usize; 3],
    /// Weight offset of the first tap.
    pub w_first: usize,
}

/// One stride phase of dx: the input rows (and columns) `first + stride * u`, `u < rows`, and the
/// lattice of kernel taps that reach them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phase {
    /// The phase's taps.
    pub lattice: Lattice,
    /// First input row and column of the phase.
    pub first: [usize; 2],
    /// Input rows and columns of the phase.
    pub rows: [usize; 2],
    /// Output row (column) reached from `u = 0` by the phase's first tap.
    pub base: [i64; 2],
    /// Reduction length `kg * taps_h * taps_w`.
    pub reduce: usize,
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// One axis of a phase: first input position and count, the output index of `u = 0` through
/// the first tap, and the taps `i0 + t * step` (each `delta` outputs further back).
struct Axis {
    first: usize,
    rows: usize,
    base: i64,
    i0: usize,
    taps: usize,
    step: usize,
    delta: i64,
}

/// Per axis and phase `ph`: input positions with `(pos + pad) % stride == ph`, kernel taps
/// `i = i0 + t * step` with `i * dil % stride == ph` (`step = stride / gcd(stride, dil)`),
/// output index `(pos + pad - i * dil) / stride = base + u - t * delta`,
/// `delta = step * dil / stride`.
fn axis(len: usize, pad: usize, k: usize, s: usize, d: usize) -> Vec<Axis> {
    let step = s / gcd(s, d);
    let delta = (step * d / s) as i64;
    // Only the first min(s, len) input positions start a phase that holds any input.
    (0..s.min(len))
        .map(|first| {
            let ph = (first + pad) % s;
            let rows = (len - first).div_ceil(s);
            let (i0, taps, base) = match (0..k.min(step)).find(|i| (i * d) % s == ph) {
                Some(i0) => (
                    i0,
                    (k - i0).div_ceil(step),
                    (first as i64 + pad as i64 - (i0 * d) as i64) / s as i64,
                ),
                None => (0, 0, 0),
            };
            Axis {
                first,
                rows,
                base,
                i0,
                taps,
                step,
                delta,
            }
        })
        .collect()
}

/// The stride phases of dx that hold input elements, row phases outer.
pub fn dx_phases(g: &Conv2dGeometry) -> Vec<Phase> {
    let ah = axis(g.h, g.padding.top, g.kh, g.stride[0], g.dilation[0]);
    let aw = axis(g.w, g.padding.left, g.kw, g.stride[1], g.dilation[1]);
    let mut phases = Vec::new();
    for h in &ah {
        for w in &aw {
            if h.rows == 0 || w.rows == 0 {
                continue;
            }
            phases.push(Phase {
                first: [h.first, w.first],
                rows: [h.rows, w.rows],
                base: [h.base, w.base],
                reduce: g.kg() * h.taps * w.taps,
                lattice: Lattice {
                    taps: [h.taps, w.taps],
                    shift: [-h.delta, -w.delta],
                    w_steps: [g.cg() * g.kh * g.kw, h.step * g.kw, w.step],
                    w_first: h.i0 * g.kw + w.i0,
                },
            });
        }
    }
    phases
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::spec::{Conv2dSpec, Padding2d};

    /// A small deterministic generator (the tests need no crate for it).
    struct Lcg(u64);
    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) as usize) % n
        }
    }

    /// The `(tap, output)` pairs that reach input position `pos` of one axis in the explicit
    /// construction: dy dilated by the stride and padded by `before` (output `o` sits at
    /// `before + o * s`), convolved at stride 1 and dilation `d` with the kernel rotated 180°.
    fn explicit(
        pos: usize,
        k: usize,
        s: usize,
        d: usize,
        out: usize,
        before: isize,
    ) -> BTreeSet<(usize, usize)> {
        let mut set = BTreeSet::new();
        for rot in 0..k {
            let at = pos as isize + (rot * d) as isize - before;
            if at >= 0 && (at as usize).is_multiple_of(s) && (at as usize / s) < out {
                set.insert((k - 1 - rot, at as usize / s));
            }
        }
        set
    }

    /// What the phases give for position `pos` of axis `a` (0 rows, 1 columns).
    fn phased(
        phases: &[Phase],
        g: &Conv2dGeometry,
        a: usize,
        pos: usize,
    ) -> BTreeSet<(usize, usize)> {
        let (k, s, out) = if a == 0 {
            (g.kh, g.stride[0], g.oh)
        } else {
            (g.kw, g.stride[1], g.ow)
        };
        let mut set = BTreeSet::new();
        let mut seen = 0;
        // The phase holding `pos` on this axis (any phase of the other axis will do).
        for ph in phases
            .iter()
            .filter(|ph| pos >= ph.first[a] && (pos - ph.first[a]).is_multiple_of(s))
        {
            let u = (pos - ph.first[a]) / s;
            if u >= ph.rows[a] {
                continue;
            }
            seen += 1;
            let lat = ph.lattice;
            let (i0, step) = if a == 0 {
                (lat.w_first / g.kw, lat.w_steps[1] / g.kw)
            } else {
                (lat.w_first % g.kw, lat.w_steps[2])
            };
            let mut here = BTreeSet::new();
            for t in 0..lat.taps[a] {
                let o = ph.base[a] + u as i64 + t as i64 * lat.shift[a];
                let i = i0 + t * step;
                assert!(i < k, "tap {i} past the kernel");
                if o >= 0 && (o as usize) < out {
                    here.insert((i, o as usize));
                }
            }
            if seen == 1 {
                set = here;
            } else {
                assert_eq!(set, here, "phases of one position disagree");
            }
        }
        assert!(seen > 0 || set.is_empty(), "position {pos} is in no phase");
        set
    }

    #[test]
    fn dx_phases_match_the_explicit_transposed_convolution() {
        let mut rng = Lcg(0x5eed);
        for case in 0..400 {
            let (kh, kw) = (1 + rng.below(5), 1 + rng.below(5));
            let stride = [1 + rng.below(4), 1 + rng.below(4)];
            let dilation = [1 + rng.below(3), 1 + rng.below(3)];
            let padding = Padding2d {
                top: rng.below(4),
                bottom: rng.below(4),
                left: rng.below(4),
                right: rng.below(4),
            };
            let (h, w) = (1 + rng.below(12), 1 + rng.below(12));
            let spec = Conv2dSpec {
                stride,
                padding,
                dilation,
                groups: 1,
            };
            let Ok(g) = spec.forward_geometry([1, 2, h, w], [3, 2, kh, kw]) else {
                continue;
            };
            let phases = dx_phases(&g);
            let before = g.transposed_padding();
            let axes = [(g.h, g.kh, g.oh), (g.w, g.kw, g.ow)];
            for (a, &(len, k, out)) in axes.iter().enumerate() {
                for pos in 0..len {
                    let want = explicit(pos, k, g.stride[a], g.dilation[a], out, before[a].0);
                    let got = phased(&phases, &g, a, pos);
                    assert_eq!(got, want, "case {case} {g:?} axis {a} position {pos}");
                }
            }
            // Every input element is in exactly one phase.
            let covered: usize = phases.iter().map(|ph| ph.rows[0] * ph.rows[1]).sum();
            assert_eq!(covered, g.h * g.w, "case {case}");
            // Where every residue holds input, the phases' taps cover the kernel exactly once.
            if g.h >= g.stride[0] && g.w >= g.stride[1] {
                let taps: usize = phases
                    .iter()
                    .map(|ph| ph.lattice.taps[0] * ph.lattice.taps[1])
                    .sum();
                assert_eq!(taps, g.kh * g.kw, "case {case}: {g:?}");
            }
        }
    }
}
