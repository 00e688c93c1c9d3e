//! The latency-bound chain: many small convs in a row, issued eagerly (one submission each) and
//! recorded (one submission for all), timed on the host: what a training step of small layers
//! costs beyond the GPU's work.

use std::time::Instant;

use serde::Serialize;
use wgconv::{Conv2dSpec, Gpu, Padding2d, Result};

use crate::report::median;
use crate::runner::random;

/// The chain's layer: a 3x3 conv, padding 1, of `[1, 4, 8, 8]` to 4 channels (its output is its
/// next input): little GPU work, so the host's cost shows.
const SHAPE: [usize; 4] = [1, 4, 8, 8];

/// Host cost of one way of issuing the chain (medians over the repeats).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Phase {
    /// Host time to issue the chain (record and submit it), per op, in µs.
    pub host_us_per_op: f64,
    /// Queue submissions per op.
    pub submissions_per_op: f64,
    /// Device polls per op while issuing.
    pub polls_per_op: f64,
    /// Wall time of the whole step (issue, then wait for the GPU), in ms.
    pub step_ms: f64,
}

/// The chain's figures, eager against recorded.
#[derive(Clone, Debug, Serialize)]
pub struct ChainReport {
    /// Convs in the chain.
    pub ops: usize,
    /// The layer, as `[N, C, H, W] -> K, kernel`.
    pub layer: String,
    /// One op call at a time.
    pub eager: Phase,
    /// All recorded into one batch and submitted once.
    pub recorded: Phase,
}

fn phase(
    gpu: &Gpu,
    repeats: usize,
    mut issue: impl FnMut() -> Result<wgconv::Tensor>,
    ops: usize,
) -> Result<Phase> {
    let (mut host, mut step, mut subs, mut polls) = (vec![], vec![], vec![], vec![]);
    for _ in 0..repeats {
        gpu.synchronize()?;
        let before = gpu.counters();
        let t0 = Instant::now();
        let y = issue()?;
        let issued = t0.elapsed();
        let after = gpu.counters();
        gpu.synchronize()?;
        step.push(t0.elapsed().as_secs_f64() * 1e3);
        host.push(issued.as_secs_f64() * 1e6 / ops as f64);
        subs.push((after.submissions - before.submissions) as f64 / ops as f64);
        polls.push((after.polls - before.polls) as f64 / ops as f64);
        drop(y);
    }
    Ok(Phase {
        host_us_per_op: median(&host),
        submissions_per_op: median(&subs),
        polls_per_op: median(&polls),
        step_ms: median(&step),
    })
}

/// Times a chain of `ops` convs, eagerly and recorded, `repeats` times each (after one warm-up
/// of each), alternating.
pub fn run(gpu: &Gpu, ops: usize, repeats: usize, seed: u64) -> Result<ChainReport> {
    let spec = Conv2dSpec {
        padding: Padding2d::symmetric(1, 1),
        ..Default::default()
    };
    let x = gpu.upload(&random(SHAPE, seed))?;
    // Small weights keep the chain's values bounded.
    let w = gpu.upload(&random([4, 4, 3, 3], seed + 1).mapv(|v| v * 0.1))?;
    let eager = || -> Result<wgconv::Tensor> {
        let mut y = gpu.conv2d_forward(&x, &w, None, &spec)?;
        for _ in 1..ops {
            y = gpu.conv2d_forward(&y, &w, None, &spec)?;
        }
        Ok(y)
    };
    let recorded = || -> Result<wgconv::Tensor> {
        let mut rec = gpu.recorder();
        let mut y = rec.conv2d_forward(&x, &w, None, &spec)?;
        for _ in 1..ops {
            y = rec.conv2d_forward(&y, &w, None, &spec)?;
        }
        rec.submit()?;
        Ok(y)
    };
    // Warm-up (pipelines, pool) and a check that both give the same bits.
    let (a, b) = (eager()?, recorded()?);
    if gpu.download(&a)? != gpu.download(&b)? {
        return Err(wgconv::Error::CheckFailed {
            op: "host chain".into(),
            detail: "the recorded chain differs from the eager one".into(),
        });
    }
    let mut e = Vec::new();
    let mut r = Vec::new();
    for _ in 0..repeats {
        e.push(phase(gpu, 1, eager, ops)?);
        r.push(phase(gpu, 1, recorded, ops)?);
    }
    let med = |v: &[Phase]| Phase {
        host_us_per_op: median(&v.iter().map(|p| p.host_us_per_op).collect::<Vec<_>>()),
        submissions_per_op: median(&v.iter().map(|p| p.submissions_per_op).collect::<Vec<_>>()),
        polls_per_op: median(&v.iter().map(|p| p.polls_per_op).collect::<Vec<_>>()),
        step_ms: median(&v.iter().map(|p| p.step_ms).collect::<Vec<_>>()),
    };
    Ok(ChainReport {
        ops,
        layer: format!("{SHAPE:?} -> 4, 3x3 pad 1"),
        eager: med(&e),
        recorded: med(&r),
    })
}

/// The chain's lines of the table.
pub fn table(c: &ChainReport) -> String {
    let row = |name: &str, p: &Phase| {
        format!(
            "{name:<10} {:>12.2} {:>14.3} {:>10.3} {:>10.2}\n",
            p.host_us_per_op, p.submissions_per_op, p.polls_per_op, p.step_ms
        )
    };
    format!(
        "\nhost chain: {} convs of {}\n{:<10} {:>12} {:>14} {:>10} {:>10}\n{}{}host cost recorded / eager: {:.3}\n",
        c.ops,
        c.layer,
        "issue",
        "host µs/op",
        "submits/op",
        "polls/op",
        "step ms",
        row("eager", &c.eager),
        row("recorded", &c.recorded),
        c.recorded.host_us_per_op / c.eager.host_us_per_op.max(1e-9)
    )
}
