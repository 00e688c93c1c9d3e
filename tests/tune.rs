//! The opt-in tuner: off by default; with `autotune` it measures the candidate plans of each
//! conv geometry and keeps the fastest (results still right); its choices saved to JSON and
//! loaded by another context give the same plans and the same bits; bad files are `Err` naming
//! the file.

mod common;

use common::{Rng, bits, check_conv, fresh};
use wgconv::gpu::plan;
use wgconv::{Conv2dSpec, Gpu, Padding2d, TunedOp};

fn temp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("wgconv-tune-{}-{name}", std::process::id()))
}

#[test]
fn tuned_choices_are_measured_saved_and_reproduced_bit_for_bit() {
    let spec = Conv2dSpec::default().with_padding(Padding2d::symmetric(1, 1));
    let (xs, ws) = ([2, 16, 12, 12], [24, 16, 3, 3]);
    let mut rng = Rng::new(31);
    let (x, w) = (rng.array4_f32(xs), rng.array4_f32(ws));
    let dy = rng.array4_f32([2, 24, 12, 12]);

    let off = fresh(Gpu::builder());
    check_conv(&off, "untuned", &x, &w, None, &spec);
    assert!(off.tuning().is_empty(), "off by default");

    let tuned = fresh(Gpu::builder().autotune(true));
    check_conv(&tuned, "autotuned", &x, &w, None, &spec);
    let entries = tuned.tuning();
    for op in [
        TunedOp::Forward,
        TunedOp::BackwardInput,
        TunedOp::BackwardWeight,
    ] {
        let e = entries
            .iter()
            .find(|e| e.key.op == op && e.key.x == xs)
            .unwrap_or_else(|| panic!("{op:?} tuned: {entries:?}"));
        assert!(e.ms.is_some_and(|ms| ms > 0.0), "{op:?} measured: {e:?}");
    }
    let path = temp("choices.json");
    tuned.save_tuning(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("\"version\": 1") && text.contains("\"op\": \"forward\""),
        "{text}"
    );

    // A context that loads the file (no autotuning) plans and computes the same.
    let loaded = fresh(Gpu::builder().tuning_file(&path));
    let mut a = tuned.tuning();
    let mut b = loaded.tuning();
    a.sort_by_key(|e| format!("{:?}", e.key));
    b.sort_by_key(|e| format!("{:?}", e.key));
    assert_eq!(a, b, "the loaded choices are the saved ones");
    let run = |gpu: &Gpu| -> [Vec<u32>; 3] {
        let (gx, gw, gdy) = (
            gpu.upload(&x).unwrap(),
            gpu.upload(&w).unwrap(),
            gpu.upload(&dy).unwrap(),
        );
        [
            bits(gpu, &gpu.conv2d_forward(&gx, &gw, None, &spec).unwrap()),
            bits(
                gpu,
                &gpu.conv2d_backward_input(&gdy, &gw, [12, 12], &spec)
                    .unwrap(),
            ),
            bits(
                gpu,
                &gpu.conv2d_backward_weight(&gx, &gdy, [3, 3], &spec)
                    .unwrap(),
            ),
        ]
    };
    let first = run(&tuned);
    assert_eq!(run(&loaded), first, "a saved tuning reproduces the bits");
    assert_eq!(run(&loaded), first, "every time");
    // The tuned plan is one of the candidates, and is what the loaded context runs.
    let g = spec.forward_geometry(xs, ws).unwrap();
    let fwd = a.iter().find(|e| e.key.op == TunedOp::Forward).unwrap();
    let p = wgconv::gpu::plan::DeviceProfile {
        algorithm: fwd.algorithm,
        tile: fwd.tile.unwrap_or(loaded.profile().tile),
        auto_tile: fwd.tile.is_none(),
        ..loaded.profile().clone()
    };
    assert!(plan::conv2d_forward(&p, &g, false).is_ok());
    std::fs::remove_file(&path).ok();
}

#[test]
fn bad_tuning_files_are_errors_naming_them() {
    let missing = temp("missing.json");
    let e = Gpu::builder()
        .tuning_file(&missing)
        .build()
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.json"), "{e}");
    let cases = [
        ("garbage.json", "{ not json".to_string(), "garbage.json"),
        (
            "version.json",
            r#"{"version": 2, "adapter": "x", "entries": []}"#.to_string(),
            "version 2",
        ),
        (
            "tile.json",
            r#"{"version": 1, "adapter": "x", "entries": [{"key": {"op": "forward",
               "x": [1, 1, 4, 4], "w": [1, 1, 3, 3], "stride": [1, 1], "padding": [0, 0, 0, 0],
               "dilation": [1, 1], "groups": 1, "flag": false}, "algorithm": "tiled",
               "tile": {"bm": 256, "bn": 256, "bk": 8, "tm": 4, "tn": 4}, "ms": 1.0}]}"#
                .to_string(),
            "entry 0",
        ),
    ];
    for (name, text, want) in cases {
        let path = temp(name);
        std::fs::write(&path, text).unwrap();
        let e = Gpu::builder()
            .tuning_file(&path)
            .build()
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{name}: {e}");
        std::fs::remove_file(&path).ok();
    }
}
