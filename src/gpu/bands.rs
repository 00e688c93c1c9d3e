//! Conv ops on samples larger than one storage binding, by row bands
//! ([`plan::forward_bands`](super::plan::forward_bands) and its kin): each band's rows are copied
//! into band tensors, run through the band's ordinary plan and copied back, or added into the
//! result, all in one batch (an eager op still makes one submission).

use super::Gpu;
use super::plan;
use super::recorder::Record;
use super::submit::{Buffers, Sink};
use super::tensor::Raw;
use crate::error::{Error, Result};
use crate::spec::Conv2dGeometry;

/// One 4-D tensor of an op, `[N, channels, rows, cols]`.
struct Planes<'a> {
    raw: &'a Raw,
    channels: usize,
    rows: usize,
    cols: usize,
}

impl<'a> Planes<'a> {
    /// A conv's input-side tensor (x or dx), `[N, C, H, W]`.
    fn input(raw: &'a Raw, g: &Conv2dGeometry) -> Planes<'a> {
        Planes {
            raw,
            channels: g.c,
            rows: g.h,
            cols: g.w,
        }
    }

    /// A conv's output-side tensor (y or dy), `[N, K, OH, OW]`.
    fn output(raw: &'a Raw, g: &Conv2dGeometry) -> Planes<'a> {
        Planes {
            raw,
            channels: g.k,
            rows: g.oh,
            cols: g.ow,
        }
    }

    /// Element offset of row `row` of channel `c` of sample `n`.
    fn at(&self, n: usize, c: usize, row: usize) -> usize {
        ((n * self.channels + c) * self.rows + row) * self.cols
    }

    /// Copies rows `[a, b)` of every channel of sample `n` into `band` (`[1, channels, b - a,
    /// cols]`).
    fn gather(&self, rec: &mut Record, n: usize, (a, b): (usize, usize), band: &Raw) {
        for c in 0..self.channels {
            let len = (b - a) * self.cols;
            rec.push_copy_elems(self.raw, self.at(n, c, a), band, c * len, len);
        }
    }

    /// Copies `band` back into rows `[a, b)` of sample `n`.
    fn scatter(&self, rec: &mut Record, n: usize, (a, b): (usize, usize), band: &Raw) {
        for c in 0..self.channels {
            let len = (b - a) * self.cols;
            rec.push_copy_elems(band, c * len, self.raw, self.at(n, c, a), len);
        }
    }
}

/// The record of a sink that is one.
fn record<'s>(sink: &'s mut Sink<'_>) -> &'s mut Record {
    match sink {
        Sink::Record(rec) => rec,
        Sink::Eager => unreachable!("band work runs into a record"),
    }
}

/// A tensor of `shape` over the start of `storage`'s buffer (a band tensor reused band after
/// band: the copies and passes of one batch run in order).
fn over(storage: &Raw, shape: [usize; 4]) -> Raw {
    Raw {
        shape: shape.to_vec(),
        len: shape.iter().product(),
        ..storage.clone()
    }
}

/// A band's input-side (`[1, C, rows, W]`) and output-side (`[1, K, rows, OW]`) views of the
/// band tensors.
fn band_views(input: &Raw, output: &Raw, b: &plan::RowBand) -> (Raw, Raw) {
    (
        over(input, b.geometry.x_shape()),
        over(output, b.geometry.y_shape()),
    )
}

/// `Err` unless the buffer of `raw` (a view of the caller's) allows the band copies.
fn check_usage(raw: &Raw, usage: wgpu::BufferUsages, what: &str) -> Result<()> {
    if raw.len > 0 && !raw.buffer().usage().contains(usage) {
        return Err(Error::InvalidArgument(format!(
            "{what}: a sample larger than one storage binding is split into row bands by \
             buffer copies, which need {usage:?}; the buffer has usage {:?}",
            raw.buffer().usage()
        )));
    }
    Ok(())
}

impl Gpu {
    /// Runs `work` into one batch, which keeps `tensors` (those the copies read and write)
    /// alive until it has run: the caller's recorder, or, eager, a record of its own, submitted
    /// at once.
    fn in_one_batch(
        &self,
        sink: &mut Sink<'_>,
        op: &'static str,
        tensors: &[&Raw],
        work: impl FnOnce(&mut Sink<'_>) -> Result<()>,
    ) -> Result<()> {
        match sink {
            Sink::Record(rec) => {
                rec.keep_raws(tensors.iter().copied());
                work(&mut Sink::Record(rec))
            }
            Sink::Eager => {
                let mut own = Record::new();
                own.keep_raws(tensors.iter().copied());
                work(&mut Sink::Record(&mut own))?;
                self.submit_record(&mut own, op).map(drop)
            }
        }
    }

    /// The two band tensors of `sizes` elements, and the profile their bands plan with; a band's
    /// views of them are [`band_views`].
    fn band_tensors(&self, sizes: [usize; 2]) -> Result<(Raw, Raw, plan::DeviceProfile)> {
        let a = self.alloc(&[sizes[0]], "band of input rows")?;
        let b = self.alloc(&[sizes[1]], "band of output rows")?;
        let bytes = (sizes[0] + sizes[1]) as u64 * 4;
        Ok((a, b, self.profile.less_workspace(bytes)))
    }

    /// The forward of a sample larger than a binding: per sample and band, x's rows in, the
    /// band's plan, y's rows out.
    pub(crate) fn conv2d_forward_bands(
        &self,
        sink: &mut Sink<'_>,
        g: &Conv2dGeometry,
        x: &Raw,
        w: &Raw,
        bias: Option<&Raw>,
        y: &Raw,
    ) -> Result<()> {
        let op = "conv2d_forward";
        check_usage(x, wgpu::BufferUsages::COPY_SRC, "x")?;
        check_usage(y, wgpu::BufferUsages::COPY_DST, "the output")?;
        let bands = plan::forward_bands(&self.profile, g, false)?;
        let sizes = plan::band_sizes(&bands);
        let (xb, yb, profile) = self.band_tensors(sizes)?;
        let xs = Planes::input(x, g);
        let ys = Planes::output(y, g);
        self.in_one_batch(sink, op, &[x, y], |sink| {
            for n in 0..g.n {
                for b in &bands {
                    let (bx, by) = band_views(&xb, &yb, b);
                    xs.gather(record(sink), n, b.in_rows, &bx);
                    let plan = plan::conv2d_forward(&profile, &b.geometry, bias.is_some())?;
                    let buffers = Buffers {
                        x: Some(&bx),
                        w: Some(w),
                        bias,
                        out: Some(&by),
                        ..Default::default()
                    };
                    self.run_conv(sink, op, &plan, buffers)?;
                    ys.scatter(record(sink), n, b.out_rows, &by);
                }
            }
            Ok(())
        })
    }

    /// dx of a sample larger than a binding: dx cleared (unless accumulating), then per sample
    /// and band, dy's rows in, the band's plan, dx's rows out (the band is first loaded with
    /// dx's rows when accumulating).
    pub(crate) fn conv2d_backward_input_bands(
        &self,
        sink: &mut Sink<'_>,
        g: &Conv2dGeometry,
        dy: &Raw,
        w: &Raw,
        dx: &Raw,
        accumulate: bool,
    ) -> Result<()> {
        let op = "conv2d_backward_input";
        check_usage(dy, wgpu::BufferUsages::COPY_SRC, "dy")?;
        check_usage(
            dx,
            wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            "dx",
        )?;
        let bands = plan::backward_input_bands(&self.profile, g)?;
        // Here the input band is dx's and the output band dy's.
        let sizes = plan::band_sizes(&bands);
        let (dxb, dyb, profile) = self.band_tensors(sizes)?;
        let dxs = Planes::input(dx, g);
        let dys = Planes::output(dy, g);
        self.in_one_batch(sink, op, &[dy, dx], |sink| {
            if !accumulate {
                record(sink).push_clear(dx);
            }
            for n in 0..g.n {
                for b in &bands {
                    let (bdx, bdy) = band_views(&dxb, &dyb, b);
                    dys.gather(record(sink), n, b.out_rows, &bdy);
                    if accumulate {
                        dxs.gather(record(sink), n, b.in_rows, &bdx);
                    }
                    let plan = plan::conv2d_backward_input(&profile, &b.geometry, accumulate)?;
                    let buffers = Buffers {
                        dy: Some(&bdy),
                        w: Some(w),
                        out: Some(&bdx),
                        ..Default::default()
                    };
                    self.run_conv(sink, op, &plan, buffers)?;
                    dxs.scatter(record(sink), n, b.in_rows, &bdx);
                }
            }
            Ok(())
        })
    }

    /// dW of a sample larger than a binding: per sample and band (bands that read only padding
    /// add nothing), x's and dy's rows in, the band's dW plan adding into dW (the first
    /// overwrites unless accumulating), in order.
    pub(crate) fn conv2d_backward_weight_bands(
        &self,
        sink: &mut Sink<'_>,
        g: &Conv2dGeometry,
        x: &Raw,
        dy: &Raw,
        dw: &Raw,
        accumulate: bool,
    ) -> Result<()> {
        let op = "conv2d_backward_weight";
        check_usage(x, wgpu::BufferUsages::COPY_SRC, "x")?;
        check_usage(dy, wgpu::BufferUsages::COPY_SRC, "dy")?;
        let bands = plan::forward_bands(&self.profile, g, true)?;
        let sizes = plan::band_sizes(&bands);
        let (xb, dyb, profile) = self.band_tensors(sizes)?;
        let xs = Planes::input(x, g);
        let dys = Planes::output(dy, g);
        self.in_one_batch(sink, op, &[x, dy, dw], |sink| {
            let mut added = accumulate;
            for n in 0..g.n {
                for b in &bands {
                    let (bx, bdy) = band_views(&xb, &dyb, b);
                    xs.gather(record(sink), n, b.in_rows, &bx);
                    dys.gather(record(sink), n, b.out_rows, &bdy);
                    let plan = plan::conv2d_backward_weight(&profile, &b.geometry, added)?;
                    let buffers = Buffers {
                        x: Some(&bx),
                        dy: Some(&bdy),
                        out: Some(dw),
                        ..Default::default()
                    };
                    self.run_conv(sink, op, &plan, buffers)?;
                    added = true;
                }
            }
            if !added {
                record(sink).push_clear(dw);
            }
            Ok(())
        })
    }

    /// db of a dy sample larger than a binding: per sample and range of rows, dy's rows in,
    /// the db plan adding into db, in order.
    pub(crate) fn conv2d_backward_bias_bands(
        &self,
        sink: &mut Sink<'_>,
        [n, k, oh, ow]: [usize; 4],
        dy: &Raw,
        db: &Raw,
        accumulate: bool,
    ) -> Result<()> {
        let op = "conv2d_backward_bias";
        check_usage(dy, wgpu::BufferUsages::COPY_SRC, "dy")?;
        let ranges = plan::row_ranges(&self.profile, [k, oh, ow])?;
        let most = ranges.iter().map(|&(a, b)| b - a).max().unwrap_or(0);
        let band = self.alloc(&[k * most * ow], "band of dy rows")?;
        let profile = self.profile.less_workspace(band.bytes());
        let dys = Planes {
            raw: dy,
            channels: k,
            rows: oh,
            cols: ow,
        };
        self.in_one_batch(sink, op, &[dy, db], |sink| {
            let mut added = accumulate;
            for s in 0..n {
                for &(a, b) in &ranges {
                    let bdy = over(&band, [1, k, b - a, ow]);
                    dys.gather(record(sink), s, (a, b), &bdy);
                    let plan = plan::conv2d_backward_bias(&profile, [1, k, b - a, ow], added)?;
                    let buffers = Buffers {
                        dy: Some(&bdy),
                        out: Some(db),
                        ..Default::default()
                    };
                    self.run_conv(sink, op, &plan, buffers)?;
                    added = true;
                }
            }
            Ok(())
        })
    }
}
