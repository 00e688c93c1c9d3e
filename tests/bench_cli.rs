//! Runs the built `wgconv-bench` binary on its tiny test suite and checks the JSON report field
//! by field against the contract in DESIGN.md, plus the CSV and SVG outputs. The GPU run is
//! skipped (with a message) when no adapter exists.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

const OPS: [&str; 8] = [
    "conv2d_forward",
    "conv2d_backward_input",
    "conv2d_backward_weight",
    "conv2d_backward_bias",
    "max_pool2d_forward",
    "max_pool2d_backward",
    "avg_pool2d_forward",
    "avg_pool2d_backward",
];

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("wgconv-bench-test-{}-{name}", std::process::id()))
}

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgconv-bench"))
        .args([
            "--suite",
            "tiny",
            "--repeats",
            "2",
            "--warmup",
            "0",
            "--min-sample-ms",
            "1",
        ])
        .args(args)
        .output()
        .expect("running wgconv-bench")
}

fn uint(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what} must be a non-negative integer, got {v}"))
}

fn uints(v: &Value, len: usize, what: &str) -> Vec<u64> {
    let a = v
        .as_array()
        .unwrap_or_else(|| panic!("{what} must be an array, got {v}"));
    assert_eq!(a.len(), len, "{what} must have {len} elements: {v}");
    a.iter().map(|x| uint(x, what)).collect()
}

fn num(v: &Value, what: &str) -> f64 {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what} must be a number, got {v}"));
    assert!(x.is_finite() && x >= 0.0, "{what} = {x}");
    x
}

fn string<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} must be a string, got {v}"))
}

/// Checks every contract field of a report; returns the results.
fn validate(report: &Value, device: &str, check: &str) -> Vec<Value> {
    let adapter = &report["adapter"];
    for f in ["name", "backend", "device_type"] {
        assert!(!string(&adapter[f], f).is_empty(), "adapter.{f} is empty");
    }
    assert_eq!(string(&report["device"], "device"), device);
    let results = report["results"]
        .as_array()
        .expect("results must be an array")
        .clone();
    assert!(!results.is_empty());
    for r in &results {
        assert!(
            ["f32", "f16", "bf16"].contains(&string(&r["dtype"], "dtype")),
            "dtype {}",
            r["dtype"]
        );
        let layer = string(&r["layer"], "layer");
        let op = string(&r["op"], "op");
        assert!(OPS.contains(&op), "unknown op {op}");
        let ctx = format!("{layer} {op}");
        let shape = r["shape"]
            .as_object()
            .unwrap_or_else(|| panic!("{ctx}: shape must be an object"));
        let sv = &r["shape"];
        for f in ["n", "c", "h", "w"] {
            assert!(uint(&sv[f], f) >= 1, "{ctx}: shape.{f}");
        }
        if op.starts_with("conv2d") {
            for f in ["k", "kh", "kw", "groups"] {
                assert!(uint(&sv[f], f) >= 1, "{ctx}: shape.{f}");
            }
            uints(&sv["stride"], 2, "stride");
            uints(&sv["padding"], 4, "padding");
            uints(&sv["dilation"], 2, "dilation");
            assert_eq!(shape.len(), 11, "{ctx}: conv shape fields {shape:?}");
        } else {
            uints(&sv["kernel"], 2, "kernel");
            uints(&sv["stride"], 2, "stride");
            uints(&sv["padding"], 2, "padding");
            uints(&sv["dilation"], 2, "dilation");
            assert!(sv["ceil_mode"].is_boolean(), "{ctx}: ceil_mode");
            if op.starts_with("avg") {
                assert!(
                    sv["count_include_pad"].is_boolean(),
                    "{ctx}: count_include_pad"
                );
                assert_eq!(shape.len(), 10, "{ctx}: avg-pool shape fields {shape:?}");
            } else {
                assert!(sv.get("count_include_pad").is_none(), "{ctx}");
                assert_eq!(shape.len(), 9, "{ctx}: max-pool shape fields {shape:?}");
            }
        }
        let med = num(&r["median_ms"], "median_ms");
        let min = num(&r["min_ms"], "min_ms");
        let max = num(&r["max_ms"], "max_ms");
        assert!(min <= med && med <= max, "{ctx}: {min} {med} {max}");
        num(&r["gflops"], "gflops");
        num(&r["gbps"], "gbps");
        assert_eq!(string(&r["check"], "check"), check, "{ctx}: {r}");
        match check {
            // f32: the GPU tolerance; 16 bits: one unit in the last place more.
            "ok" => {
                let ulp = match string(&r["dtype"], "dtype") {
                    "f16" => 2f64.powi(-10),
                    "bf16" => 2f64.powi(-7),
                    _ => 0.0,
                };
                assert!(num(&r["max_rel_err"], "max_rel_err") <= 1e-4 + ulp, "{ctx}")
            }
            _ => assert!(r["max_rel_err"].is_null(), "{ctx}"),
        }
        let timing = string(&r["timing"], "timing");
        assert!(
            ["timestamp", "wall"].contains(&timing),
            "{ctx}: timing {timing}"
        );
    }
    for op in OPS {
        assert!(
            results.iter().any(|r| r["op"] == op),
            "{op} missing from the report"
        );
    }
    results
}

#[test]
fn cpu_report_matches_the_contract() {
    let (json, csv, svg) = (tmp("cpu.json"), tmp("cpu.csv"), tmp("cpu.svg"));
    let out = bench(&[
        "--device",
        "cpu",
        "--json",
        json.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "status {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("conv2d_backward_weight") && stdout.contains("median ms"));

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = validate(&report, "cpu", "ok");
    // Conv layers give four results, pool layers two: 2 convs, 1 max-pool, 1 avg-pool.
    assert_eq!(results.len(), 12);
    let r = results
        .iter()
        .find(|r| r["op"] == "conv2d_forward")
        .unwrap();
    assert!(num(&r["gflops"], "gflops") > 0.0);

    let csv_text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = csv_text.lines().collect();
    assert_eq!(lines.len(), 13);
    let cols = lines[0].split(',').count();
    assert!(lines.iter().all(|l| l.split(',').count() == cols));
    assert!(lines[0].starts_with("layer,op,"));

    let svg_text = std::fs::read_to_string(&svg).unwrap();
    assert!(svg_text.starts_with("<svg") && svg_text.trim_end().ends_with("</svg>"));
    assert_eq!(
        svg_text.matches("<rect ").count(),
        1 + 8 + 12,
        "background, legend, bars"
    );
    for p in [json, csv, svg] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn no_check_marks_results_skipped() {
    let json = tmp("nocheck.json");
    let out = bench(&[
        "--device",
        "cpu",
        "--no-check",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    validate(&report, "cpu", "skipped");
    let _ = std::fs::remove_file(json);
}

/// Sizes past any memory and filters that match nothing: exit 2 with a message naming the value,
/// before any input is generated (was: a panic in ndarray, exit 101; an abort, exit 134; exit 0
/// with "0 results").
#[test]
fn impossible_sizes_and_empty_filters_exit_2_naming_them() {
    for (args, named) in [
        (
            &["--batch", "18446744073709551615"][..],
            "18446744073709551615",
        ),
        (&["--batch", "1000000000000"][..], "1000000000000"),
        (&["--layers", "matches_nothing"][..], "matches_nothing"),
    ] {
        for device in ["cpu", "gpu"] {
            let mut all = vec!["--device", device, "--no-check", "--chain", "0"];
            all.extend_from_slice(args);
            let out = bench(&all);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{all:?}: {err}");
            assert!(err.contains(named), "{all:?}: {err}");
        }
    }
}

#[test]
fn bad_arguments_fail() {
    for args in [
        &["--suite", "nope"][..],
        &["--repeats", "0"],
        &["--device", "tpu"],
    ] {
        let out = bench(args);
        assert!(!out.status.success(), "{args:?} succeeded");
    }
}

#[test]
fn gpu_report_matches_the_contract_when_an_adapter_exists() {
    let json = tmp("gpu.json");
    let out = bench(&["--device", "gpu", "--json", json.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(3) {
        eprintln!("skipping the GPU run: {stderr}");
        return;
    }
    assert!(
        out.status.success(),
        "status {:?}\n{}\n{stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = validate(&report, "gpu", "ok");
    assert_eq!(results.len(), 12);
    assert!(results.iter().all(|r| r["dtype"] == "f32"));
    let _ = std::fs::remove_file(json);
}

/// `--dtype f16|bf16`: every result checked ok against the reference on the rounded inputs,
/// named `"dtype"` in the JSON, its bytes counted at 2 an element; on the CPU an exit 2 naming
/// the option.
#[test]
fn dtype_runs_are_checked_and_named() {
    let out = bench(&["--device", "cpu", "--dtype", "f16"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--dtype f16"), "{err}");
    let f32_json = tmp("dtype_f32.json");
    let out = bench(&[
        "--device",
        "gpu",
        "--chain",
        "0",
        "--json",
        f32_json.to_str().unwrap(),
    ]);
    if out.status.code() == Some(3) {
        eprintln!(
            "skipping the GPU run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let load = |p: &PathBuf| -> Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let f32_report = load(&f32_json);
    for dt in ["f16", "bf16"] {
        let json = tmp(&format!("dtype_{dt}.json"));
        let out = bench(&[
            "--device",
            "gpu",
            "--dtype",
            dt,
            "--chain",
            "0",
            "--json",
            json.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{dt}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report = load(&json);
        let results = validate(&report, "gpu", "ok");
        assert_eq!(results.len(), 12);
        for (r, r32) in results
            .iter()
            .zip(f32_report["results"].as_array().unwrap())
        {
            assert_eq!(r["dtype"], dt);
            let (b, b32) = (num(&r["bytes"], "bytes"), num(&r32["bytes"], "bytes"));
            if r["op"].as_str().unwrap().starts_with("conv2d") {
                assert_eq!(b * 2.0, b32, "{dt}: {}", r["op"]);
            } else {
                assert!(b < b32, "{dt}: {}", r["op"]);
            }
        }
        let _ = std::fs::remove_file(json);
    }
    let _ = std::fs::remove_file(f32_json);
}
