//! Plans without a GPU: the plan choices (algorithm, kernel, tile, splits, chunks, dispatches)
//! for the benchmark's quick and resnet layers on a GPU profile and a CPU-driver profile are
//! pinned by snapshots in `tests/snapshots/`, and the selection rules are checked on their own.
//!
//! The snapshots were first recorded from the dispatches the code before the plan module
//! submitted (the same kernels, params and bindings), so they pin today's behaviour. After a
//! deliberate change of a rule, regenerate them with `WGCONV_BLESS=1 cargo test --test plans`
//! and review the diff.

use std::fmt::Write;
use std::path::Path;

use wgconv::gpu::kernels::Tile;
use wgconv::gpu::plan::{self, ConvAlgorithm, ConvPlan, DeviceProfile, PoolKind, ProfileOptions};
use wgconv::spec::Conv2dGeometry;
use wgconv::{Algorithm, Conv2dSpec, DType, Padding2d};

#[allow(dead_code)]
#[path = "../src/bin/wgconv-bench/suite.rs"]
mod suite;

use suite::{LayerKind, Op, Suite};

/// Mesa's lavapipe (Mesa 22.3, LLVM 15) as wgpu 30 reports it: the limits the plans read.
fn lavapipe_limits() -> wgpu::Limits {
    wgpu::Limits {
        max_storage_buffer_binding_size: 134_217_728,
        min_storage_buffer_offset_alignment: 32,
        max_compute_invocations_per_workgroup: 1024,
        max_compute_workgroup_storage_size: 32768,
        max_compute_workgroups_per_dimension: 65535,
        max_buffer_size: 2_147_483_647,
        ..wgpu::Limits::default()
    }
}

/// lavapipe's limits as a CPU driver, or as if it were a discrete GPU (the GPU decisions).
fn profile(cpu: bool) -> DeviceProfile {
    let ty = if cpu {
        wgpu::DeviceType::Cpu
    } else {
        wgpu::DeviceType::DiscreteGpu
    };
    DeviceProfile::new(&lavapipe_limits(), ty, "test", ProfileOptions::default()).unwrap()
}

fn describe(out: &mut String, plan: &ConvPlan) {
    writeln!(
        out,
        "algorithm={:?} tile={:?} splits={} chunks={:?} phases={} scratch={:?}",
        plan.algorithm, plan.tile, plan.splits, plan.chunks, plan.phases, plan.scratch
    )
    .unwrap();
    for s in &plan.steps {
        writeln!(out, "{s}").unwrap();
    }
}

/// Every op of every layer of `suite`, as the op bodies plan them.
fn snapshot(suite: Suite, p: &DeviceProfile) -> String {
    let mut out = String::new();
    for layer in suite::layers(suite, None) {
        for &op in layer.kind.ops() {
            writeln!(out, "== {} {}", layer.name, op.name()).unwrap();
            match layer.kind {
                LayerKind::Conv { x, k, kernel, spec } => {
                    let w = [k, x[1] / spec.groups, kernel[0], kernel[1]];
                    let g = spec.forward_geometry(x, w).unwrap();
                    let plan = match op {
                        Op::ConvForward => plan::conv2d_forward(p, &g, true),
                        Op::ConvBackwardInput => plan::conv2d_backward_input(p, &g, false),
                        Op::ConvBackwardWeight => plan::conv2d_backward_weight(p, &g, false),
                        Op::ConvBackwardBias => plan::conv2d_backward_bias(p, g.y_shape(), false),
                        _ => unreachable!(),
                    };
                    describe(&mut out, &plan.unwrap());
                }
                LayerKind::MaxPool { x, spec } => {
                    let g = spec.geometry(x).unwrap();
                    let kind = match op {
                        Op::MaxPoolForward => PoolKind::MaxForward,
                        _ => PoolKind::MaxBackward,
                    };
                    for s in plan::pool(p, kind, &g, false, DType::F32).unwrap() {
                        writeln!(out, "{s}").unwrap();
                    }
                }
                LayerKind::AvgPool {
                    x,
                    spec,
                    count_include_pad,
                } => {
                    let g = spec.avg_geometry(x).unwrap();
                    let kind = match op {
                        Op::AvgPoolForward => PoolKind::AvgForward,
                        _ => PoolKind::AvgBackward,
                    };
                    for s in plan::pool(p, kind, &g, count_include_pad, DType::F32).unwrap() {
                        writeln!(out, "{s}").unwrap();
                    }
                }
            }
        }
    }
    out
}

#[test]
fn plans_of_the_benchmark_layers_are_pinned() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
    let bless = std::env::var("WGCONV_BLESS").is_ok_and(|v| v == "1");
    for (suite, name) in [(Suite::Quick, "quick"), (Suite::Resnet, "resnet")] {
        for (cpu, device) in [(true, "cpu"), (false, "gpu")] {
            let got = snapshot(suite, &profile(cpu));
            let path = dir.join(format!("plans_{name}_{device}.txt"));
            if bless {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &got).unwrap();
                continue;
            }
            let want = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (WGCONV_BLESS=1 writes it)", path.display()));
            if got != want {
                let line = got
                    .lines()
                    .zip(want.lines())
                    .position(|(a, b)| a != b)
                    .unwrap_or(got.lines().count().min(want.lines().count()));
                panic!(
                    "{} differs from the plans at line {}:\n  now:  {}\n  file: {}",
                    path.display(),
                    line + 1,
                    got.lines().nth(line).unwrap_or("<end>"),
                    want.lines().nth(line).unwrap_or("<end>")
                );
            }
        }
    }
}

fn geometry(x: [usize; 4], w: [usize; 4], spec: Conv2dSpec) -> Conv2dGeometry {
    spec.forward_geometry(x, w).unwrap()
}

#[test]
fn rules_pick_kernels_and_tiles_by_shape_and_driver() {
    let (cpu, gpu) = (profile(true), profile(false));
    // A 3x3 layer with 64 output channels: the GEMM with the default tile on both.
    let dense = geometry([2, 64, 16, 16], [64, 64, 3, 3], Conv2dSpec::default());
    for p in [&cpu, &gpu] {
        let f = plan::conv2d_forward(p, &dense, false).unwrap();
        assert_eq!(f.algorithm, ConvAlgorithm::Gemm);
        assert_eq!(f.tile, Some(Tile::LARGE));
    }
    // Few columns: the narrow tile, the CPU driver's own variant.
    let narrow = geometry([2, 16, 16, 16], [16, 16, 3, 3], Conv2dSpec::default());
    let tile = |p: &DeviceProfile| plan::conv2d_forward(p, &narrow, false).unwrap().tile;
    assert_eq!(tile(&cpu), Some(Tile::NARROW16_CPU));
    assert_eq!(tile(&gpu), Some(Tile::NARROW));
    // 17 to 32 columns: the 32-wide narrow tile on CPU drivers too.
    let n32 = geometry([2, 16, 16, 16], [32, 16, 3, 3], Conv2dSpec::default());
    let tile32 = |p: &DeviceProfile| plan::conv2d_forward(p, &n32, false).unwrap().tile;
    assert_eq!(tile32(&cpu), Some(Tile::NARROW_CPU));
    assert_eq!(tile32(&gpu), Some(Tile::NARROW));
    // dW on a CPU driver: the medium tile.
    let dw = |p: &DeviceProfile| plan::conv2d_backward_weight(p, &dense, false).unwrap().tile;
    assert_eq!(dw(&cpu), Some(Tile::MEDIUM));
    assert_eq!(dw(&gpu), Some(Tile::LARGE));
    // Depthwise: its own kernels for forward, dx and dW; fewer than 4 output channels per group
    // keep the forward and dW off the GEMM.
    let spec = Conv2dSpec {
        groups: 8,
        padding: Padding2d::symmetric(1, 1),
        ..Default::default()
    };
    let dwise = geometry([2, 8, 12, 12], [8, 1, 3, 3], spec);
    for p in [&cpu, &gpu] {
        assert_eq!(
            plan::conv2d_forward(p, &dwise, false).unwrap().algorithm,
            ConvAlgorithm::Depthwise
        );
        assert_eq!(
            plan::conv2d_backward_input(p, &dwise, false)
                .unwrap()
                .algorithm,
            ConvAlgorithm::Depthwise
        );
        assert_eq!(
            plan::conv2d_backward_weight(p, &dwise, false)
                .unwrap()
                .algorithm,
            ConvAlgorithm::Depthwise
        );
    }
    // The direct algorithm, when asked for, everywhere.
    let direct = DeviceProfile {
        algorithm: Algorithm::Direct,
        ..gpu.clone()
    };
    assert_eq!(
        plan::conv2d_forward(&direct, &dense, false)
            .unwrap()
            .algorithm,
        ConvAlgorithm::Direct
    );
    // dx of a stride-2 layer runs 4 stride phases.
    let s2 = Conv2dSpec {
        stride: [2, 2],
        padding: Padding2d::symmetric(1, 1),
        ..Default::default()
    };
    let g = geometry([2, 32, 16, 16], [32, 32, 3, 3], s2);
    assert_eq!(
        plan::conv2d_backward_input(&gpu, &g, false).unwrap().phases,
        4
    );
}

#[test]
fn split_k_fills_a_gpu_but_never_a_cpu_driver() {
    let (cpu, gpu) = (profile(true), profile(false));
    // A small grid with a long reduction: 2 x 8 x 8 outputs, 512 channels, 3x3.
    let g = geometry(
        [2, 512, 8, 8],
        [64, 512, 3, 3],
        Conv2dSpec {
            padding: Padding2d::symmetric(1, 1),
            ..Default::default()
        },
    );
    let on_gpu = plan::conv2d_forward(&gpu, &g, true).unwrap();
    assert!(on_gpu.splits > 1, "{on_gpu:?}");
    assert_eq!(
        on_gpu.scratch.map(|s| s.0),
        Some(on_gpu.splits * g.n * g.k * g.oh * g.ow)
    );
    let on_cpu = plan::conv2d_forward(&cpu, &g, true).unwrap();
    assert_eq!((on_cpu.splits, on_cpu.scratch), (1, None));
    // The split rule on its own: enough splits to reach the target, at most 16, each at least
    // 128 steps long; none once the tiles alone fill half the target.
    assert_eq!(plan::gemm_splits(528, 4, 4608), 16);
    assert_eq!(plan::gemm_splits(528, 100, 4608), 6);
    assert_eq!(plan::gemm_splits(528, 100, 300), 2);
    assert_eq!(plan::gemm_splits(528, 264, 4608), 1);
    assert_eq!(plan::gemm_splits(0, 1, 4608), 1);
}

#[test]
fn batches_past_a_binding_are_chunked() {
    let p = DeviceProfile {
        max_binding: 4096,
        ..profile(false)
    };
    // 3 x 8 x 8 = 192 elements a sample: 5 samples per 4 KiB binding (with alignment slack).
    let g = geometry([12, 3, 8, 8], [4, 3, 3, 3], Conv2dSpec::default());
    let plan = plan::conv2d_forward(&p, &g, false).unwrap();
    assert_eq!(plan.chunks, [(0, 5), (5, 10), (10, 12)]);
    // A sample larger than a binding is refused by the batch plan, naming the slice; the op
    // cuts it into row bands instead, each within a binding.
    let big = geometry([1, 16, 32, 32], [4, 16, 1, 1], Conv2dSpec::default());
    let err = plan::conv2d_forward(&p, &big, false).unwrap_err();
    assert!(err.to_string().contains("one input sample slice"), "{err}");
    assert!(!plan::sample_fits(&p, &[(16 * 32 * 32, "input sample")]));
    let bands = plan::forward_bands(&p, &big, false).unwrap();
    assert_eq!(bands.len(), 32, "one row of 16 x 32 elements a band");
    for b in &bands {
        assert!(plan::conv2d_forward(&p, &b.geometry, false).is_ok());
    }
}

#[test]
fn winograd_is_chosen_only_when_asked_and_where_it_applies() {
    let wino = DeviceProfile {
        algorithm: Algorithm::Winograd,
        ..profile(false)
    };
    let pad1 = Conv2dSpec::default().with_padding(Padding2d::symmetric(1, 1));
    let g = geometry([32, 128, 28, 28], [128, 128, 3, 3], pad1);
    assert!(plan::use_winograd(&wino, &g));
    assert!(!plan::use_winograd(&profile(false), &g), "not by default");
    assert!(
        !plan::use_winograd(&profile(true), &g),
        "not by default on CPU drivers"
    );
    let s2 = geometry([1, 8, 9, 9], [8, 8, 3, 3], pad1.with_stride([2, 2]));
    let d2 = geometry([1, 8, 9, 9], [8, 8, 3, 3], pad1.with_dilation([2, 2]));
    let dw = geometry([1, 8, 9, 9], [8, 1, 3, 3], pad1.with_groups(8));
    let k5 = geometry([1, 8, 9, 9], [8, 8, 5, 5], Conv2dSpec::default());
    for other in [s2, d2, dw, k5] {
        assert!(!plan::use_winograd(&wino, &other), "{other:?}");
    }
    // The plan: one filter transform, then per chunk input transform, the GEMM stage (a
    // grouped 1x1 conv on the transforms) and the output transform; both scratch buffers named.
    let f = plan::conv2d_forward(&wino, &g, true).unwrap();
    assert_eq!(f.algorithm, ConvAlgorithm::Winograd);
    let kernels: Vec<String> = f.steps.iter().map(|s| format!("{:?}", s.kernel)).collect();
    assert_eq!(kernels.first().map(String::as_str), Some("WinogradFilter"));
    assert_eq!(kernels.last().map(String::as_str), Some("WinogradOutput"));
    assert!(
        kernels.iter().any(|k| k.starts_with("Conv2dGemm")),
        "{kernels:?}"
    );
    assert!(f.transforms.is_some() && f.scratch.is_some());
    // Within a workspace bound: smaller chunks, never more bytes than the bound.
    let bound = 8 << 20;
    let tight = DeviceProfile {
        max_workspace: bound,
        ..wino.clone()
    };
    for (op, p) in [
        ("forward", plan::conv2d_forward(&tight, &g, false).unwrap()),
        (
            "dx",
            plan::conv2d_backward_input(&tight, &g, false).unwrap(),
        ),
        (
            "dW",
            plan::conv2d_backward_weight(&tight, &g, false).unwrap(),
        ),
    ] {
        assert_eq!(p.algorithm, ConvAlgorithm::Winograd, "{op}");
        assert!(p.chunks.len() > 1, "{op}: {:?}", p.chunks);
        assert!(
            p.workspace_bytes() <= bound,
            "{op}: {}",
            p.workspace_bytes()
        );
    }
    // A bound too small for one sample's transforms: the implicit GEMM.
    let tiny = DeviceProfile {
        max_workspace: 64 << 10,
        ..wino
    };
    assert_ne!(
        plan::conv2d_forward(&tiny, &g, false).unwrap().algorithm,
        ConvAlgorithm::Winograd
    );
}

#[test]
fn few_channel_dx_runs_by_taps_on_cpu_drivers_only() {
    let stem = geometry(
        [32, 3, 224, 224],
        [64, 3, 7, 7],
        Conv2dSpec::default()
            .with_stride([2, 2])
            .with_padding(Padding2d::symmetric(3, 3)),
    );
    assert!(plan::backward_input_by_taps(&profile(true), &stem));
    assert!(
        !plan::backward_input_by_taps(&profile(false), &stem),
        "GPU: not measured yet"
    );
    let on = DeviceProfile {
        taps_dx: true,
        ..profile(false)
    };
    assert!(plan::backward_input_by_taps(&on, &stem));
    // Many channels, one tap, or too few output channels to stage: the stride phases.
    let wide = geometry([1, 64, 8, 8], [64, 64, 3, 3], Conv2dSpec::default());
    let one_tap = geometry([1, 3, 8, 8], [64, 3, 1, 1], Conv2dSpec::default());
    let few_k = geometry([1, 3, 8, 8], [4, 3, 3, 3], Conv2dSpec::default());
    for g in [wide, one_tap, few_k] {
        assert!(!plan::backward_input_by_taps(&on, &g), "{g:?}");
    }
}

/// Pool plans know their operand's dtype: a 16-bit x or dy is bound at 2 bytes an element (so
/// twice the planes fit a chunk, and a plane of 6,000 bytes is split by rows where the f32 one
/// of 12,000 is too), read on the device's storage path; results stay f32.
#[test]
fn pool_plans_bind_16_bit_operands_at_their_bytes() {
    use wgconv::gpu::kernels::Storage;
    let binding = 4096;
    let p = DeviceProfile {
        max_binding: binding,
        ..profile(true)
    };
    let native = DeviceProfile {
        native_f16: true,
        ..p.clone()
    };
    let spec = wgconv::Pool2dSpec {
        padding: [1, 1],
        stride: [2, 2],
        ..wgconv::Pool2dSpec::new([3, 3])
    };
    // Planes of 20 x 21: 1,680 bytes in f32, 840 in 16 bits.
    let g = spec.max_geometry([8, 2, 20, 21]).unwrap();
    let chunks = |p: &DeviceProfile, dt| plan::pool(p, PoolKind::MaxForward, &g, false, dt);
    let f32_steps = chunks(&p, DType::F32).unwrap();
    let bf16_steps = chunks(&p, DType::BF16).unwrap();
    assert!(
        bf16_steps.len() * 2 <= f32_steps.len() + 1,
        "{bf16_steps:?}"
    );
    for s in &bf16_steps {
        assert_eq!(s.storage, Storage::Packed(DType::BF16));
        let x = s.binds.iter().find(|b| b.role == plan::Role::X).unwrap();
        let planes = s.items / (g.oh * g.ow) as u64;
        assert!(x.size >= planes * 840 && x.size <= binding, "{s}");
    }
    assert!(f32_steps.iter().all(|s| s.storage == Storage::F32));
    assert_eq!(
        chunks(&native, DType::F16).unwrap()[0].storage,
        Storage::Half
    );
    assert_eq!(
        chunks(&p, DType::F16).unwrap()[0].storage,
        Storage::Packed(DType::F16)
    );
    // A 60 x 50 plane: split by rows in f32 and 16 bits alike, every binding within the limit.
    let g = spec.max_geometry([1, 1, 60, 50]).unwrap();
    for dt in [DType::F32, DType::F16] {
        for kind in [PoolKind::MaxForward, PoolKind::AvgBackward] {
            let steps = plan::pool(&p, kind, &g, false, dt).unwrap();
            assert!(steps.len() > 1, "{dt} {kind:?}");
            assert!(
                steps
                    .iter()
                    .flat_map(|s| &s.binds)
                    .all(|b| b.size <= binding)
            );
        }
    }
}
