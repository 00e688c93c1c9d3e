//! Times the reference's direct loops against its fast path (im2col + GEMM) on a ResNet 3x3
//! layer: N=8, 64->64 channels, 56x56, padding 1.
//!
//! `cargo run --release --example reference_speed`

use std::time::Instant;

use ndarray::Array4;
use wgconv::reference::{direct, gemm};
use wgconv::{Conv2dSpec, Padding2d};

fn main() -> wgconv::Result<()> {
    let spec = Conv2dSpec::new().with_padding(Padding2d::symmetric(1, 1));
    let mut seed = 1u32;
    let mut rnd = |_| {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
    };
    let x = Array4::from_shape_fn((8, 64, 56, 56), &mut rnd);
    let w = Array4::from_shape_fn((64, 64, 3, 3), &mut rnd);
    let flops = spec
        .forward_geometry([8, 64, 56, 56], [64, 64, 3, 3])?
        .flops();

    let fast = |label: &str| -> wgconv::Result<(f64, Array4<f32>)> {
        let mut best = f64::INFINITY;
        let mut y = None;
        for _ in 0..3 {
            let t = Instant::now();
            y = Some(gemm::conv2d_forward(x.view(), w.view(), None, &spec)?);
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{label:>8}: {:8.3} s  {:7.2} GFLOP/s",
            best,
            flops / best / 1e9
        );
        Ok((best, y.unwrap()))
    };
    let (t_fast, y_fast) = fast("gemm")?;
    let t = Instant::now();
    let y_direct = direct::conv2d_forward(x.view(), w.view(), None, &spec)?;
    let t_direct = t.elapsed().as_secs_f64();
    println!(
        "{:>8}: {:8.3} s  {:7.2} GFLOP/s",
        "direct",
        t_direct,
        flops / t_direct / 1e9
    );
    let err = y_fast
        .iter()
        .zip(y_direct.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!(
        "speedup {:.1}x, max |gemm - direct| = {err:e}",
        t_direct / t_fast
    );
    Ok(())
}
