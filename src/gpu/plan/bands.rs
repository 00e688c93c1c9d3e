//! Row bands of a conv sample larger than one storage binding.
//!
//! Batch chunks (`DeviceProfile::chunks`) need one sample of every tensor to fit a binding. When
//! one does not, the sample is cut into bands of rows, each a small conv of its own: the band's
//! rows of the input (with the halo its windows reach) and of the output are copied into scratch
//! tensors (buffer copies have no binding limit), the band runs through the ordinary plans, and
//! its result is copied back (forward, dx) or added into the result (dW, db: one band after the
//! other, in order, so the sum is deterministic). A band's geometry is the layer's with the
//! band's input height and a top padding that puts every window where it was: row `o` of the
//! band's output reads the rows its window reads in the whole sample, or padding where the
//! sample has padding.

use super::DeviceProfile;
use super::profile::chunks_of;
use crate::error::{Error, Result};
use crate::spec::Conv2dGeometry;

/// One band: a conv of one sample's rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowBand {
    /// The band's conv (`n = 1`): its input is rows `in_rows` of the sample's input plane
    /// (x, or dx for the backward), its output rows `out_rows` of the output plane (y or dy).
    pub geometry: Conv2dGeometry,
    /// Rows `[a, b)` of the input plane.
    pub in_rows: (usize, usize),
    /// Rows `[o0, o1)` of the output plane.
    pub out_rows: (usize, usize),
}

/// Elements of one band tensor: within a binding, and the band tensors (two) within half the
/// workspace bound (the band's own plan gets the rest, `DeviceProfile::less_workspace`).
fn band_elems(p: &DeviceProfile) -> usize {
    p.binding_elems()
        .min(usize::try_from(p.max_workspace / 16).unwrap_or(usize::MAX))
}

/// The elements of the two band tensors, input `[1, C, rows, W]` and output `[1, K, rows, OW]`:
/// the most any band needs of each.
pub fn band_sizes(bands: &[RowBand]) -> [usize; 2] {
    bands.iter().fold([0, 0], |[i, o], b| {
        let g = &b.geometry;
        [i.max(g.c * g.h * g.w), o.max(g.k * g.oh * g.ow)]
    })
}

/// Whether one sample of each tensor (`(elements per sample, name)`) fits one binding: then the
/// batch is chunked as usual and no sample is cut into bands.
pub fn sample_fits(p: &DeviceProfile, units: &[(usize, &str)]) -> bool {
    units.iter().all(|&(u, _)| u <= p.binding_elems())
}

/// Rows of the padded input a window spans: `(kh - 1) * dilation + 1`.
fn extent(g: &Conv2dGeometry) -> usize {
    (g.kh - 1) * g.dilation[0] + 1
}

/// The band computing output rows `[o0, o1)` from input rows `[a, b)`; `None` when those output
/// rows read only padding. `[a, b)` must hold every real row the windows of `[o0, o1)` read.
fn band(g: &Conv2dGeometry, (a, b): (usize, usize), (o0, o1): (usize, usize)) -> RowBand {
    let s = g.stride[0];
    let m = o1 - o0;
    // The first window's first row, in input rows (negative: in the top padding).
    let start = (o0 * s) as i64 - g.padding.top as i64;
    let (rows, top) = if a < b {
        (b - a, (a as i64 - start) as usize)
    } else {
        // Only padding: one real row, placed below every window (their rows are all < 0).
        (1, (m - 1) * s + extent(g))
    };
    let reach = (m - 1) * s + extent(g);
    let mut geometry = *g;
    geometry.n = 1;
    geometry.h = rows;
    geometry.oh = m;
    geometry.padding.top = top;
    geometry.padding.bottom = reach.saturating_sub(rows + top);
    let in_rows = if a < b {
        (a, b)
    } else {
        let r = a.min(g.h - 1);
        (r, r + 1)
    };
    RowBand {
        geometry,
        in_rows,
        out_rows: (o0, o1),
    }
}

/// The input rows (clipped to the sample) the windows of output rows `[o0, o1)` read.
fn forward_reach(g: &Conv2dGeometry, o0: usize, o1: usize) -> (usize, usize) {
    let s = g.stride[0];
    let pad = g.padding.top as i64;
    let start = (o0 * s) as i64 - pad;
    let end = ((o1 - 1) * s + extent(g)) as i64 - pad;
    let b = end.clamp(0, g.h as i64) as usize;
    let a = start.clamp(0, g.h as i64) as usize;
    (a.min(b), b)
}

fn no_band(what: &str, elems: usize, p: &DeviceProfile) -> Error {
    let bound = if band_elems(p) < p.binding_elems() {
        format!(
            "a band's {} bytes (a sixteenth of max_workspace_bytes {})",
            band_elems(p) * 4,
            p.max_workspace
        )
    } else {
        format!(
            "the {} bytes one binding holds (the largest storage binding, {} bytes, less the \
             offset alignment)",
            band_elems(p) * 4,
            p.max_binding
        )
    };
    Error::DeviceLimit(format!(
        "{what} has {} bytes, more than {bound}; a sample is split by rows, not by channels",
        elems as u64 * 4,
    ))
}

/// Bands of output rows for the forward (and dW, which reduces over the same windows): each
/// as many rows as keep its input rows (all channels) and output rows within one binding. With
/// `skip_padding`, bands that read only padding are left out (they add nothing to dW).
pub fn forward_bands(
    p: &DeviceProfile,
    g: &Conv2dGeometry,
    skip_padding: bool,
) -> Result<Vec<RowBand>> {
    let max = band_elems(p);
    let (in_row, out_row) = (g.c * g.w, g.k * g.ow);
    let fits = |o0: usize, o1: usize| {
        let (a, b) = forward_reach(g, o0, o1);
        (b - a).max(1) * in_row <= max && (o1 - o0) * out_row <= max
    };
    let mut bands = Vec::new();
    let mut o0 = 0;
    while o0 < g.oh {
        if !fits(o0, o0 + 1) {
            let (a, b) = forward_reach(g, o0, o0 + 1);
            let (what, elems) = if (b - a).max(1) * in_row > max {
                (
                    "the input rows one output row reads (all channels)",
                    (b - a) * in_row,
                )
            } else {
                ("one output row (all channels)", out_row)
            };
            return Err(no_band(what, elems, p));
        }
        // The most rows from o0 that fit: a guess from the sizes, then down to a fit.
        let guess = (max / out_row.max(1)).min(max / in_row.max(1) / g.stride[0].max(1) + 1);
        let mut o1 = (o0 + guess.max(1)).min(g.oh);
        while !fits(o0, o1) {
            o1 = o0 + (o1 - o0) / 2;
        }
        while o1 < g.oh && fits(o0, o1 + 1) {
            o1 += 1;
        }
        let reach = forward_reach(g, o0, o1);
        if !(skip_padding && reach.0 == reach.1) {
            bands.push(band(g, reach, (o0, o1)));
        }
        o0 = o1;
    }
    Ok(bands)
}

/// The output rows whose windows reach input rows `[h0, h1)`, as `[o0, o1)` (empty if none).
fn backward_reach(g: &Conv2dGeometry, h0: usize, h1: usize) -> (usize, usize) {
    let s = g.stride[0];
    let pad = g.padding.top;
    // First output whose window ends at or after h0; last whose window starts at or before h1-1.
    let first = (h0 + pad + 1).saturating_sub(extent(g)).div_ceil(s);
    let last_plus = ((h1 - 1 + pad) / s + 1).min(g.oh);
    (first.min(last_plus), last_plus)
}

/// dx's band of input rows `[h0, h1)`: the dy rows that reach them, and of `[h0, h1)` the rows
/// `[a, b)` those windows span (the rest get no gradient); `None` when nothing reaches them.
fn dx_band(g: &Conv2dGeometry, h0: usize, h1: usize) -> Option<RowBand> {
    let (o0, o1) = backward_reach(g, h0, h1);
    if o0 >= o1 {
        return None;
    }
    let (ra, rb) = forward_reach(g, o0, o1);
    let (a, b) = (ra.max(h0), rb.min(h1));
    (a < b).then(|| band(g, (a, b), (o0, o1)))
}

/// Bands of dx rows: disjoint, each with the dy rows whose windows reach it, within one
/// binding. Rows no window reaches are in no band (their gradient is zero).
pub fn backward_input_bands(p: &DeviceProfile, g: &Conv2dGeometry) -> Result<Vec<RowBand>> {
    let max = band_elems(p);
    let (in_row, out_row) = (g.c * g.w, g.k * g.ow);
    let fits = |h0: usize, h1: usize| {
        let (o0, o1) = backward_reach(g, h0, h1);
        (h1 - h0) * in_row <= max && (o1 - o0) * out_row <= max
    };
    let mut bands = Vec::new();
    let mut h0 = 0;
    while h0 < g.h {
        if !fits(h0, h0 + 1) {
            let (o0, o1) = backward_reach(g, h0, h0 + 1);
            let (what, elems) = if in_row > max {
                ("one dx row (all channels)", in_row)
            } else {
                (
                    "the dy rows one dx row reads (all channels)",
                    (o1 - o0) * out_row,
                )
            };
            return Err(no_band(what, elems, p));
        }
        let guess = (max / in_row.max(1)).min(max / out_row.max(1) * g.stride[0]);
        let mut h1 = (h0 + guess.max(1)).min(g.h);
        while !fits(h0, h1) {
            h1 = h0 + (h1 - h0) / 2;
        }
        while h1 < g.h && fits(h0, h1 + 1) {
            h1 += 1;
        }
        bands.extend(dx_band(g, h0, h1));
        h0 = h1;
    }
    Ok(bands)
}

/// Bands `[o0, o1)` of the rows of a dy of `k` channels of `ow` columns and `oh` rows, each
/// within one binding, for db.
pub fn row_ranges(p: &DeviceProfile, [k, oh, ow]: [usize; 3]) -> Result<Vec<(usize, usize)>> {
    let row = k * ow;
    let per = band_elems(p) / row.max(1);
    if per == 0 {
        return Err(no_band("one dy row (all channels)", row, p));
    }
    Ok(chunks_of(oh, per))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use crate::spec::{Conv2dSpec, Padding2d};
    use ndarray::{Array4, s};

    fn profile(binding: u64) -> DeviceProfile {
        let limits = wgpu::Limits {
            min_storage_buffer_offset_alignment: 16,
            ..wgpu::Limits::downlevel_defaults()
        };
        let options = super::super::ProfileOptions {
            max_binding_bytes: Some(binding),
            ..Default::default()
        };
        DeviceProfile::new(&limits, wgpu::DeviceType::Cpu, "test", options).unwrap()
    }

    /// Small deterministic values (exact in f64 sums).
    fn values(shape: [usize; 4], seed: usize) -> Array4<f64> {
        Array4::from_shape_fn(shape, |(a, b, c, d)| {
            ((a * 7 + b * 5 + c * 3 + d + seed) % 11) as f64 - 5.0
        })
    }

    fn specs() -> Vec<(Conv2dSpec, [usize; 2])> {
        let pad = |t, b| Padding2d {
            top: t,
            bottom: b,
            left: 1,
            right: 0,
        };
        vec![
            (Conv2dSpec::default(), [3, 3]),
            (Conv2dSpec::default().with_padding(pad(1, 1)), [3, 3]),
            (
                Conv2dSpec::default()
                    .with_stride([2, 1])
                    .with_padding(pad(2, 1)),
                [3, 2],
            ),
            (Conv2dSpec::default().with_stride([2, 2]), [1, 1]),
            (
                Conv2dSpec::default()
                    .with_stride([3, 1])
                    .with_padding(pad(4, 5)),
                [1, 1],
            ),
            (
                Conv2dSpec::default()
                    .with_dilation([2, 1])
                    .with_padding(pad(3, 0)),
                [3, 3],
            ),
            (
                Conv2dSpec::default()
                    .with_stride([2, 1])
                    .with_dilation([3, 1])
                    .with_groups(2),
                [2, 1],
            ),
        ]
    }

    /// Every band, run by the reference on its rows, gives the whole sample's rows: forward and
    /// dx exactly, dW and db summed over the bands; at bindings from a few rows to one row.
    #[test]
    fn bands_compose_to_the_whole_sample() {
        let mut padding_bands = 0;
        for (case, (spec, k_hw)) in specs().into_iter().enumerate() {
            let (c, k) = (2, 4);
            let x = values([1, c, 23, 5], case);
            let w = values([k, c / spec.groups, k_hw[0], k_hw[1]], case + 1);
            let g = spec
                .forward_geometry([1, c, 23, 5], [k, c / spec.groups, k_hw[0], k_hw[1]])
                .unwrap();
            let y = reference::conv2d_forward(x.view(), w.view(), None, &spec).unwrap();
            let dy = values([1, k, g.oh, g.ow], case + 2);
            let dx =
                reference::conv2d_backward_input(dy.view(), w.view(), [g.h, g.w], &spec).unwrap();
            let dw = reference::conv2d_backward_weight(x.view(), dy.view(), k_hw, &spec).unwrap();
            for binding in [1056u64, 416, 336] {
                let p = profile(binding);
                let what = format!("case {case} binding {binding}");
                // Forward: every output row once; dW summed.
                let mut seen = vec![0; g.oh];
                let mut dw_sum = Array4::<f64>::zeros(dw.dim());
                for b in forward_bands(&p, &g, false).unwrap() {
                    let bg = b.geometry;
                    let (a, e) = b.in_rows;
                    let (o0, o1) = b.out_rows;
                    assert!(c * (e - a) * g.w * 4 <= binding as usize, "{what}");
                    let xb = x.slice(s![.., .., a..e, ..]).to_owned();
                    let yb =
                        reference::conv2d_forward(xb.view(), w.view(), None, &bg.spec()).unwrap();
                    assert_eq!(
                        yb.slice(s![.., .., ..o1 - o0, ..]),
                        y.slice(s![.., .., o0..o1, ..]),
                        "{what} rows {o0}..{o1}"
                    );
                    let dyb = dy.slice(s![.., .., o0..o1, ..]).to_owned();
                    if yb.shape()[2] == o1 - o0 {
                        dw_sum += &reference::conv2d_backward_weight(
                            xb.view(),
                            dyb.view(),
                            k_hw,
                            &bg.spec(),
                        )
                        .unwrap();
                    }
                    seen[o0..o1].iter_mut().for_each(|v| *v += 1);
                }
                assert!(seen.iter().all(|&v| v == 1), "{what}: {seen:?}");
                let bands = forward_bands(&p, &g, false).unwrap();
                assert!(
                    binding > 400 || bands.len() >= 3,
                    "{what}: {} bands",
                    bands.len()
                );
                padding_bands += bands.len() - forward_bands(&p, &g, true).unwrap().len();
                let dw_bands: f64 = forward_bands(&p, &g, true)
                    .unwrap()
                    .iter()
                    .map(|b| {
                        let xb = x.slice(s![.., .., b.in_rows.0..b.in_rows.1, ..]).to_owned();
                        let dyb = dy
                            .slice(s![.., .., b.out_rows.0..b.out_rows.1, ..])
                            .to_owned();
                        reference::conv2d_backward_weight(
                            xb.view(),
                            dyb.view(),
                            k_hw,
                            &b.geometry.spec(),
                        )
                        .unwrap()
                        .sum()
                    })
                    .sum();
                assert_eq!(dw_sum, dw, "{what} dW");
                assert_eq!(dw_bands, dw.sum(), "{what} dW without padding bands");
                // dx: disjoint bands; rows in none are zero.
                let mut dx_bands = Array4::<f64>::zeros(dx.dim());
                for b in backward_input_bands(&p, &g).unwrap() {
                    let (a, e) = b.in_rows;
                    let (o0, o1) = b.out_rows;
                    assert!(k * (o1 - o0) * g.ow * 4 <= binding as usize, "{what}");
                    let dyb = dy.slice(s![.., .., o0..o1, ..]).to_owned();
                    let dxb = reference::conv2d_backward_input(
                        dyb.view(),
                        w.view(),
                        [e - a, g.w],
                        &b.geometry.spec(),
                    )
                    .unwrap();
                    assert_eq!(
                        dx_bands.slice(s![.., .., a..e, ..]).sum(),
                        0.0,
                        "{what} overlap"
                    );
                    dx_bands.slice_mut(s![.., .., a..e, ..]).assign(&dxb);
                }
                assert_eq!(dx_bands, dx, "{what} dx");
                // db rows.
                let ranges = row_ranges(&p, [k, g.oh, g.ow]).unwrap();
                assert_eq!(ranges.first().unwrap().0, 0);
                assert_eq!(ranges.last().unwrap().1, g.oh);
                assert!(ranges.windows(2).all(|r| r[0].1 == r[1].0));
            }
        }
        assert!(padding_bands > 0, "some band reads only padding");
    }

    #[test]
    fn rows_too_wide_for_a_binding_are_errors_naming_them() {
        let spec = Conv2dSpec::default();
        let g = spec.forward_geometry([1, 4, 10, 64], [2, 4, 3, 3]).unwrap();
        let p = profile(528);
        let e = forward_bands(&p, &g, false).unwrap_err().to_string();
        assert!(
            e.contains("the input rows one output row reads") && e.contains("3072 bytes"),
            "{e}"
        );
        let e = backward_input_bands(&p, &g).unwrap_err().to_string();
        assert!(e.contains("one dx row") && e.contains("1024 bytes"), "{e}");
        assert!(row_ranges(&p, [200, 3, 1]).is_err());
    }
}
