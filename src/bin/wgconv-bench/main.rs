//! `wgconv-bench`: times the eight ops over a layer suite on the GPU (or the CPU reference),
//! checks every result against the reference in f64, and writes a table, JSON, CSV and an SVG.
//!
//! ```text
//! cargo run --release --bin wgconv-bench -- --suite quick --json report.json
//! ```
//!
//! Exit status: 0 when every check passed (or was skipped), 1 when a result mismatched the
//! reference, 2 on any other error, 3 when no GPU adapter could be found.

mod chain;
mod report;
mod runner;
mod suite;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use wgconv::{DType, Error, Gpu};

use report::{Adapter, Check, OpResult, Report};
use runner::{Config, CpuEngine, Engine, GpuEngine, TimingMode};
use suite::{Layer, Suite};

/// Where the ops run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Device {
    /// The WGSL kernels on the adapter wgpu selects (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME`).
    Gpu,
    /// The CPU reference's fast path (im2col + GEMM, rayon) in f32.
    Cpu,
}

/// Benchmark of wgconv's conv2d and pooling ops (forward and backward).
#[derive(Debug, Parser)]
#[command(name = "wgconv-bench", version, about, long_about = None)]
struct Cli {
    /// Layer set to run.
    #[arg(long, value_enum, default_value_t = Suite::Quick)]
    suite: Suite,
    /// Override the suite's batch size (quick: 6, resnet: 32).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    batch: Option<u64>,
    /// Run the GPU kernels or the CPU reference's fast path.
    #[arg(long, value_enum, default_value_t = Device::Gpu)]
    device: Device,
    /// Timing samples per op (median, min and max are reported).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    repeats: u64,
    /// Untimed calls per op before sampling.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Skip the comparison of each result with the CPU reference.
    #[arg(long)]
    no_check: bool,
    /// Write the JSON report here.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Write a CSV report here.
    #[arg(long, value_name = "PATH")]
    csv: Option<PathBuf>,
    /// Write an SVG bar chart of GFLOP/s per layer and op here.
    #[arg(long, value_name = "PATH.svg")]
    plot: Option<PathBuf>,
    /// GPU timing method: timestamp queries where the adapter has them, or wall time.
    #[arg(long, value_enum, default_value_t = TimingMode::Auto)]
    timing: TimingMode,
    /// In wall-time mode, run each sample's op back to back for at least this long.
    #[arg(long, default_value_t = 20.0, value_name = "MS")]
    min_sample_ms: f64,
    /// Only run layers whose name contains this.
    #[arg(long, value_name = "SUBSTRING")]
    layers: Option<String>,
    /// Threads for the CPU reference (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Element type of the GPU tensors: f32, f16 or bf16 (products and sums in f32). The inputs
    /// are rounded to it; the check compares with the f64 reference on the rounded inputs,
    /// allowing one unit in the last place of the dtype. GPU only.
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    dtype: DTypeArg,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the suite's layers and exit.
    #[arg(long)]
    list: bool,
    /// After the suite, time a latency-bound chain of this many small convs issued eagerly and
    /// recorded into one batch (host µs per op, submissions per op, step wall time); 0 skips it.
    /// GPU only.
    #[arg(long, default_value_t = 200, value_name = "OPS")]
    chain: usize,
    /// Autotune (measure the candidate plans of each conv layer on its first call, keep the
    /// fastest; as `WGCONV_TUNE=1`). GPU only.
    #[arg(long)]
    tune: bool,
    /// Load tuned choices from this JSON file (as `WGCONV_TUNING_FILE`). GPU only.
    #[arg(long, value_name = "PATH")]
    tuning_file: Option<PathBuf>,
    /// After the suite, write the tuner's choices to this JSON file. GPU only.
    #[arg(long, value_name = "PATH")]
    save_tuning: Option<PathBuf>,
}

/// `--dtype`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DTypeArg {
    F32,
    F16,
    Bf16,
}

impl DTypeArg {
    fn dtype(self) -> DType {
        match self {
            DTypeArg::F32 => DType::F32,
            DTypeArg::F16 => DType::F16,
            DTypeArg::Bf16 => DType::BF16,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wgconv-bench: error: {e}");
            if matches!(e, Error::Adapter(_)) {
                eprintln!("wgconv-bench: no usable GPU adapter; try --device cpu");
                ExitCode::from(3)
            } else {
                ExitCode::from(2)
            }
        }
    }
}

fn run(cli: &Cli) -> wgconv::Result<ExitCode> {
    let started = Instant::now();
    if let Some(n) = cli.threads {
        // Only fails when a global pool already exists, which it cannot here.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global();
    }
    let mut layers = suite::layers(cli.suite, cli.batch.map(|b| b as usize));
    if let Some(f) = &cli.layers {
        layers.retain(|l| l.name.contains(f.as_str()));
        if layers.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "--layers {f:?} matches no layer of the {} suite (--list shows them)",
                cli.suite.name()
            )));
        }
    }
    // Every layer's sizes through checked shape math, and within a host-memory budget, before
    // any input is generated.
    let budget = host_budget();
    for l in &layers {
        let bytes = l.kind.host_bytes().map_err(|e| {
            Error::InvalidArgument(format!("layer {} at batch {}: {e}", l.name, l.kind.x()[0]))
        })?;
        if bytes > budget {
            return Err(Error::InvalidArgument(format!(
                "layer {} at batch {} needs {bytes} bytes of host memory for its inputs and \
                 outputs, more than the budget of {budget} bytes (half the available memory)",
                l.name,
                l.kind.x()[0]
            )));
        }
    }
    if cli.list {
        for l in &layers {
            let alias = if l.aliases.is_empty() {
                String::new()
            } else {
                format!("  (= {})", l.aliases.join(", "))
            };
            println!(
                "{:<20} {}{alias}",
                l.name,
                runner::shape_of(&l.kind).summary()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = Config {
        warmup: cli.warmup,
        repeats: cli.repeats as usize,
        check: !cli.no_check,
        timing: cli.timing,
        min_sample_ms: cli.min_sample_ms.max(0.0),
        max_iterations: 1000,
        seed: cli.seed,
        dtype: cli.dtype.dtype(),
    };
    if cli.device == Device::Cpu && cfg.dtype != DType::F32 {
        return Err(Error::InvalidArgument(format!(
            "--dtype {} runs the GPU kernels; the CPU reference computes in f32 (use --device gpu)",
            cfg.dtype
        )));
    }

    let mut host_chain = None;
    let (adapter, results) = match cli.device {
        Device::Gpu => {
            let mut builder = Gpu::builder().checked(false).poison_outputs(false);
            if cli.tune {
                builder = builder.autotune(true);
            }
            if let Some(path) = &cli.tuning_file {
                builder = builder.tuning_file(path);
            }
            let gpu = builder.build()?;
            let info = gpu.adapter_info();
            let adapter = Adapter {
                name: info.name.clone(),
                backend: format!("{:?}", info.backend),
                device_type: format!("{:?}", info.device_type),
            };
            let engine = GpuEngine {
                gpu: &gpu,
                dtype: cfg.dtype,
            };
            if cli.timing == TimingMode::Timestamp && !engine.uses_timestamps(cli.timing) {
                eprintln!(
                    "wgconv-bench: {} has no timestamp queries; timing by wall time",
                    info.name
                );
            }
            let results = run_suite(&engine, &cfg, &layers)?;
            if cli.chain > 0 {
                eprintln!("wgconv-bench: timing the host chain of {} convs", cli.chain);
                host_chain = Some(chain::run(&gpu, cli.chain, cfg.repeats, cli.seed)?);
            }
            if let Some(path) = &cli.save_tuning {
                gpu.save_tuning(path)?;
                eprintln!(
                    "wgconv-bench: {} tuned choices written to {}",
                    gpu.tuning().len(),
                    path.display()
                );
            }
            (adapter, results)
        }
        Device::Cpu => (cpu_adapter(), run_suite(&CpuEngine, &cfg, &layers)?),
    };

    let mut timings: Vec<&str> = results.iter().map(|r| r.timing).collect();
    timings.dedup();
    let timing = match timings.as_slice() {
        [] => "none".to_string(),
        [one] => one.to_string(),
        _ => "mixed".to_string(),
    };
    let report = Report {
        adapter,
        device: match cli.device {
            Device::Gpu => "gpu",
            Device::Cpu => "cpu",
        },
        suite: cli.suite.name(),
        warmup: cfg.warmup,
        repeats: cfg.repeats,
        timing,
        wgconv_version: env!("CARGO_PKG_VERSION"),
        total_s: started.elapsed().as_secs_f64(),
        results,
        host_chain,
    };

    print!("{}", report.table());
    if let Some(c) = &report.host_chain {
        print!("{}", chain::table(c));
    }
    let write = |path: &PathBuf, text: String| {
        std::fs::write(path, text)
            .map_err(|e| Error::InvalidArgument(format!("cannot write {}: {e}", path.display())))
    };
    if let Some(p) = &cli.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::InvalidArgument(format!("serializing the report: {e}")))?;
        write(p, text + "\n")?;
    }
    if let Some(p) = &cli.csv {
        write(p, report.to_csv())?;
    }
    if let Some(p) = &cli.plot {
        write(p, report.svg())?;
    }

    let bad: Vec<&OpResult> = report
        .results
        .iter()
        .filter(|r| r.check == Check::Mismatch)
        .collect();
    let checked = report
        .results
        .iter()
        .filter(|r| r.check == Check::Ok)
        .count();
    println!(
        "{} results, {} checked ok, {} mismatched, {} unchecked; {:.1} s",
        report.results.len(),
        checked,
        bad.len(),
        report.results.len() - checked - bad.len(),
        report.total_s
    );
    if bad.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for r in bad {
            eprintln!(
                "MISMATCH {} {}: {}",
                r.layer,
                r.op,
                r.mismatch_detail.as_deref().unwrap_or("")
            );
        }
        Ok(ExitCode::from(1))
    }
}

fn run_suite<E: Engine>(
    engine: &E,
    cfg: &Config,
    layers: &[Layer],
) -> wgconv::Result<Vec<OpResult>> {
    let total: usize = layers.iter().map(|l| l.kind.ops().len()).sum();
    let pb = ProgressBar::new(total as u64);
    pb.set_style(
        ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut results = Vec::with_capacity(total);
    for l in layers {
        pb.set_message(l.name.clone());
        runner::run_layer(engine, cfg, l, &mut |r: OpResult| {
            if r.check == Check::Mismatch {
                pb.suspend(|| {
                    eprintln!(
                        "MISMATCH {} {}: {}",
                        r.layer,
                        r.op,
                        r.mismatch_detail.as_deref().unwrap_or("")
                    )
                });
            }
            pb.inc(1);
            results.push(r);
        })
        .inspect_err(|_| pb.abandon())?;
    }
    pb.finish_and_clear();
    Ok(results)
}

/// Host memory the generated inputs and outputs of one layer may take: half of what the system
/// has available (`MemAvailable`), or 8 GiB where that cannot be read.
fn host_budget() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(8 << 30, |kib| kib * 1024 / 2)
}

/// The CPU "adapter": the processor's model name and the thread count.
fn cpu_adapter() -> Adapter {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    Adapter {
        name: format!(
            "{model} ({} threads, wgconv reference f32)",
            rayon::current_num_threads()
        ),
        backend: "cpu".to_string(),
        device_type: "Cpu".to_string(),
    }
}
