//! Criterion benches of the eight GPU ops, each at two sizes.
//!
//! `cargo bench --bench ops` (on a real GPU); `WGCONV_BENCH_SMALL=1 cargo bench --bench ops` for
//! sizes a software driver (lavapipe) gets through in a few minutes. The timed region ends with
//! `gpu.synchronize()`, so it is submit-to-completion time. Throughput: elements = FLOPs for the
//! convolutions (`2·N·K·OH·OW·(C/g)·kh·kw` for forward, dx and dW), element ops (adds or
//! compares) for db and pools; bytes = each input read once and each output written once.
//! Without a GPU adapter every bench prints why and is skipped.

use std::hint::black_box;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use ndarray::{Array, ShapeBuilder};
use wgconv::{Conv2dSpec, Gpu, Padding2d, Pool2dSpec, Result};

/// The GPU, or `None` (after printing why) when there is no adapter.
fn gpu() -> Option<&'static Gpu> {
    static GPU: OnceLock<Option<Gpu>> = OnceLock::new();
    GPU.get_or_init(
        || match Gpu::builder().checked(false).poison_outputs(false).build() {
            Ok(g) => {
                let info = g.adapter_info();
                eprintln!(
                    "wgconv benches on {} ({:?}, {:?})",
                    info.name, info.backend, info.device_type
                );
                Some(g)
            }
            Err(e) => {
                eprintln!("wgconv benches skipped: no usable GPU adapter ({e})");
                None
            }
        },
    )
    .as_ref()
}

fn small() -> bool {
    std::env::var("WGCONV_BENCH_SMALL").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Uniform values in `[-1, 1)` from a fixed seed.
fn random<Sh: ShapeBuilder>(shape: Sh, seed: u64) -> Array<f32, Sh::Dim> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    Array::from_shape_simple_fn(shape, || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
    })
}

/// A conv case: input `[n, c, hw, hw]`, `k` output channels, 3x3, padding 1, stride 1.
struct ConvCase {
    n: usize,
    c: usize,
    hw: usize,
    k: usize,
}

fn conv_cases() -> [ConvCase; 2] {
    if small() {
        [
            ConvCase {
                n: 1,
                c: 16,
                hw: 16,
                k: 16,
            },
            ConvCase {
                n: 2,
                c: 32,
                hw: 16,
                k: 32,
            },
        ]
    } else {
        [
            ConvCase {
                n: 8,
                c: 64,
                hw: 56,
                k: 64,
            },
            ConvCase {
                n: 32,
                c: 128,
                hw: 28,
                k: 128,
            },
        ]
    }
}

/// A pool case: input `[n, c, hw, hw]`, 3x3 window, stride 2, padding 1.
fn pool_cases() -> [[usize; 4]; 2] {
    if small() {
        [[1, 8, 16, 16], [2, 16, 32, 32]]
    } else {
        [[8, 64, 56, 56], [32, 64, 112, 112]]
    }
}

fn configure<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(if small() { 2 } else { 5 }));
    g
}

/// Times `iters` back-to-back calls of `op`, waiting for the GPU before and after.
fn timed<T>(gpu: &Gpu, iters: u64, mut op: impl FnMut() -> Result<T>) -> Duration {
    gpu.synchronize().expect("synchronize");
    let t = Instant::now();
    for _ in 0..iters {
        black_box(op().expect("op failed"));
    }
    gpu.synchronize().expect("synchronize");
    t.elapsed()
}

fn convs(c: &mut Criterion) {
    let Some(gpu) = gpu() else { return };
    let spec = Conv2dSpec::new().with_padding(Padding2d::symmetric(1, 1));
    let ops = [
        "conv2d_forward",
        "conv2d_backward_input",
        "conv2d_backward_weight",
        "conv2d_backward_bias",
    ];
    for (i, op) in ops.into_iter().enumerate() {
        let mut group = configure(c, op);
        for case in conv_cases() {
            let ConvCase { n, c: ch, hw, k } = case;
            let g = spec
                .forward_geometry([n, ch, hw, hw], [k, ch, 3, 3])
                .expect("valid case");
            let x = gpu.upload(&random(g.x_shape(), 1)).expect("upload");
            let w = gpu.upload(&random(g.w_shape(), 2)).expect("upload");
            let b = gpu.upload(&random(k, 3)).expect("upload");
            let dy = gpu.upload(&random(g.y_shape(), 4)).expect("upload");
            let num = |s: [usize; 4]| s.iter().product::<usize>() as u64;
            let (xs, ws, ys) = (num(g.x_shape()), num(g.w_shape()), num(g.y_shape()));
            let flops = g.flops() as u64;
            let (elements, elems_moved) = match i {
                0 => (flops, xs + ws + k as u64 + ys),
                1 => (flops, ys + ws + xs),
                2 => (flops, xs + ys + ws),
                _ => (ys, ys + k as u64),
            };
            group.throughput(Throughput::ElementsAndBytes {
                elements,
                bytes: 4 * elems_moved,
            });
            let id = BenchmarkId::from_parameter(format!("n{n}_c{ch}_{hw}x{hw}_k{k}_3x3"));
            group.bench_function(id, |bench| {
                bench.iter_custom(|iters| match i {
                    0 => timed(gpu, iters, || gpu.conv2d_forward(&x, &w, Some(&b), &spec)),
                    1 => timed(gpu, iters, || {
                        gpu.conv2d_backward_input(&dy, &w, [hw, hw], &spec)
                    }),
                    2 => timed(gpu, iters, || {
                        gpu.conv2d_backward_weight(&x, &dy, [3, 3], &spec)
                    }),
                    _ => timed(gpu, iters, || gpu.conv2d_backward_bias(&dy)),
                })
            });
        }
        group.finish();
    }
}

fn pools(c: &mut Criterion) {
    let Some(gpu) = gpu() else { return };
    let spec = Pool2dSpec::new([3, 3])
        .with_stride([2, 2])
        .with_padding([1, 1]);
    let ops = [
        "max_pool2d_forward",
        "max_pool2d_backward",
        "avg_pool2d_forward",
        "avg_pool2d_backward",
    ];
    for (i, op) in ops.into_iter().enumerate() {
        let mut group = configure(c, op);
        for xs in pool_cases() {
            let g = spec.geometry(xs).expect("valid case");
            let hw = [g.h, g.w];
            let x = gpu.upload(&random(xs, 5)).expect("upload");
            let dy = gpu.upload(&random(g.y_shape(), 6)).expect("upload");
            let (_, idx) = gpu.max_pool2d_forward(&x, &spec).expect("max-pool forward");
            let num = |s: [usize; 4]| s.iter().product::<usize>() as u64;
            let (xn, yn) = (num(g.x_shape()), num(g.y_shape()));
            let taps = yn * 9;
            let (elements, elems_moved) = match i {
                0 => (taps, xn + 2 * yn),
                1 => (yn, 2 * yn + xn),
                _ => (taps, xn + yn),
            };
            group.throughput(Throughput::ElementsAndBytes {
                elements,
                bytes: 4 * elems_moved,
            });
            let [n, ch, h, w] = xs;
            let id = BenchmarkId::from_parameter(format!("n{n}_c{ch}_{h}x{w}_3x3s2p1"));
            group.bench_function(id, |bench| {
                bench.iter_custom(|iters| match i {
                    0 => timed(gpu, iters, || gpu.max_pool2d_forward(&x, &spec)),
                    1 => timed(gpu, iters, || gpu.max_pool2d_backward(&dy, &idx, hw, &spec)),
                    2 => timed(gpu, iters, || gpu.avg_pool2d_forward(&x, &spec, true)),
                    _ => timed(gpu, iters, || gpu.avg_pool2d_backward(&dy, hw, &spec, true)),
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, convs, pools);
criterion_main!(benches);
