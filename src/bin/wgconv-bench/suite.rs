//! The layer sets the benchmark runs: `quick`, `resnet`, `all`, and the hidden `tiny` (tests).

use wgconv::{Conv2dSpec, Padding2d, Pool2dSpec};

/// A named layer set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    /// Small layers covering every op and feature; about a minute on a software Vulkan driver.
    Quick,
    /// The distinct conv and pool layers of ResNet-50 at 224x224 (batch 32) plus
    /// MobileNetV2-style depthwise/pointwise layers.
    Resnet,
    /// `quick` followed by `resnet`.
    All,
    /// A handful of tiny layers, for tests of the binary itself.
    #[value(hide = true)]
    Tiny,
}

impl Suite {
    /// The name as given on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Suite::Quick => "quick",
            Suite::Resnet => "resnet",
            Suite::All => "all",
            Suite::Tiny => "tiny",
        }
    }
}

/// What one layer computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// Conv2d of an input `x` `[N, C, H, W]` to `k` channels with a `kernel` `[kh, kw]`.
    Conv {
        x: [usize; 4],
        k: usize,
        kernel: [usize; 2],
        spec: Conv2dSpec,
    },
    /// Max-pool of `x`.
    MaxPool { x: [usize; 4], spec: Pool2dSpec },
    /// Average pool of `x`.
    AvgPool {
        x: [usize; 4],
        spec: Pool2dSpec,
        count_include_pad: bool,
    },
}

impl LayerKind {
    /// The input shape `[N, C, H, W]`.
    pub fn x(&self) -> [usize; 4] {
        match *self {
            LayerKind::Conv { x, .. }
            | LayerKind::MaxPool { x, .. }
            | LayerKind::AvgPool { x, .. } => x,
        }
    }

    /// Host bytes of the layer's f32 inputs and outputs (x, weight, y, dy; indices for
    /// max-pool), from checked shape math: `Err` naming the shape when a size overflows.
    pub fn host_bytes(&self) -> wgconv::Result<u64> {
        use wgconv::spec::numel;
        let count = |shape: &[usize]| numel(shape, "benchmark tensor").map(|n| n as u64);
        let total: u64 = match *self {
            LayerKind::Conv { x, k, kernel, spec } => {
                let w = [k, x[1] / spec.groups.max(1), kernel[0], kernel[1]];
                let y = spec.forward_geometry(x, w)?.y_shape();
                count(&x)? + count(&w)? + 2 * count(&y)?
            }
            LayerKind::MaxPool { x, spec } => {
                let y = spec.geometry(x)?.y_shape();
                count(&x)? + 3 * count(&y)?
            }
            LayerKind::AvgPool { x, spec, .. } => {
                let y = spec.avg_geometry(x)?.y_shape();
                count(&x)? + 2 * count(&y)?
            }
        };
        total.checked_mul(4).ok_or_else(|| {
            wgconv::Error::Overflow(format!(
                "layer with input {:?}: byte count overflows",
                self.x()
            ))
        })
    }

    /// The ops the benchmark times for this layer, in order.
    pub fn ops(&self) -> &'static [Op] {
        match self {
            LayerKind::Conv { .. } => &[
                Op::ConvForward,
                Op::ConvBackwardInput,
                Op::ConvBackwardWeight,
                Op::ConvBackwardBias,
            ],
            LayerKind::MaxPool { .. } => &[Op::MaxPoolForward, Op::MaxPoolBackward],
            LayerKind::AvgPool { .. } => &[Op::AvgPoolForward, Op::AvgPoolBackward],
        }
    }
}

/// One benchmarked layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// Unique name, e.g. `r50_c3_3x3s2`.
    pub name: String,
    /// Shapes and spec.
    pub kind: LayerKind,
    /// Names of layers with identical shapes that were folded into this one.
    pub aliases: Vec<String>,
}

/// The eight ops, named as the `Gpu` methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    ConvForward,
    ConvBackwardInput,
    ConvBackwardWeight,
    ConvBackwardBias,
    MaxPoolForward,
    MaxPoolBackward,
    AvgPoolForward,
    AvgPoolBackward,
}

impl Op {
    /// All eight, in the order the library lists them.
    pub const ALL: [Op; 8] = [
        Op::ConvForward,
        Op::ConvBackwardInput,
        Op::ConvBackwardWeight,
        Op::ConvBackwardBias,
        Op::MaxPoolForward,
        Op::MaxPoolBackward,
        Op::AvgPoolForward,
        Op::AvgPoolBackward,
    ];

    /// The method name (the JSON `op` field).
    pub fn name(self) -> &'static str {
        match self {
            Op::ConvForward => "conv2d_forward",
            Op::ConvBackwardInput => "conv2d_backward_input",
            Op::ConvBackwardWeight => "conv2d_backward_weight",
            Op::ConvBackwardBias => "conv2d_backward_bias",
            Op::MaxPoolForward => "max_pool2d_forward",
            Op::MaxPoolBackward => "max_pool2d_backward",
            Op::AvgPoolForward => "avg_pool2d_forward",
            Op::AvgPoolBackward => "avg_pool2d_backward",
        }
    }

    /// A short label for the plot.
    pub fn short(self) -> &'static str {
        match self {
            Op::ConvForward => "fwd",
            Op::ConvBackwardInput => "dx",
            Op::ConvBackwardWeight => "dW",
            Op::ConvBackwardBias => "db",
            Op::MaxPoolForward => "max fwd",
            Op::MaxPoolBackward => "max bwd",
            Op::AvgPoolForward => "avg fwd",
            Op::AvgPoolBackward => "avg bwd",
        }
    }
}

fn conv(name: &str, x: [usize; 4], k: usize, kernel: usize, spec: Conv2dSpec) -> Layer {
    Layer {
        name: name.to_string(),
        kind: LayerKind::Conv {
            x,
            k,
            kernel: [kernel, kernel],
            spec,
        },
        aliases: Vec::new(),
    }
}

/// A `kernel`x`kernel` conv with stride `s` and PyTorch's usual padding `kernel / 2`.
fn conv_sq(name: &str, n: usize, c: usize, hw: usize, k: usize, kernel: usize, s: usize) -> Layer {
    let p = kernel / 2;
    conv(
        name,
        [n, c, hw, hw],
        k,
        kernel,
        Conv2dSpec::new()
            .with_stride([s, s])
            .with_padding(Padding2d::symmetric(p, p)),
    )
}

fn max_pool(name: &str, x: [usize; 4], spec: Pool2dSpec) -> Layer {
    Layer {
        name: name.to_string(),
        kind: LayerKind::MaxPool { x, spec },
        aliases: Vec::new(),
    }
}

fn avg_pool(name: &str, x: [usize; 4], spec: Pool2dSpec, count_include_pad: bool) -> Layer {
    Layer {
        name: name.to_string(),
        kind: LayerKind::AvgPool {
            x,
            spec,
            count_include_pad,
        },
        aliases: Vec::new(),
    }
}

/// Default batch of the quick suite.
pub const QUICK_BATCH: usize = 6;
/// Default batch of the resnet suite.
pub const RESNET_BATCH: usize = 32;

/// Small layers: every op, stride 2, 1x1, depthwise, dilation, asymmetric padding, pools.
fn quick(n: usize) -> Vec<Layer> {
    vec![
        conv_sq("q_conv3x3s2", n, 32, 32, 64, 3, 2),
        conv_sq("q_conv1x1", n, 64, 16, 128, 1, 1),
        conv(
            "q_dw3x3",
            [n, 64, 32, 32],
            64,
            3,
            Conv2dSpec::new()
                .with_padding(Padding2d::symmetric(1, 1))
                .with_groups(64),
        ),
        conv(
            "q_dil3x3d2",
            [n, 32, 24, 24],
            32,
            3,
            Conv2dSpec::new()
                .with_padding(Padding2d::symmetric(2, 2))
                .with_dilation([2, 2]),
        ),
        conv(
            "q_conv4x4same",
            [n, 16, 16, 16],
            16,
            4,
            Conv2dSpec::new().with_padding(Padding2d::same([4, 4], [1, 1])),
        ),
        max_pool(
            "q_maxpool3x3s2",
            [n, 32, 32, 32],
            Pool2dSpec::new([3, 3])
                .with_stride([2, 2])
                .with_padding([1, 1]),
        ),
        avg_pool(
            "q_avgpool3x3s2",
            [n, 32, 32, 32],
            Pool2dSpec::new([3, 3])
                .with_stride([2, 2])
                .with_padding([1, 1])
                .with_ceil_mode(true),
            false,
        ),
        avg_pool(
            "q_avgpool_global8",
            [n, 64, 8, 8],
            Pool2dSpec::new([8, 8]),
            true,
        ),
    ]
}

/// ResNet-50 (torchvision v1.5: the stride sits in the 3x3) at 224x224, then MobileNetV2-style
/// depthwise-separable layers. Identical shapes are folded by [`dedup`].
fn resnet(n: usize) -> Vec<Layer> {
    let mut v = vec![
        conv_sq("r50_stem7x7s2", n, 3, 224, 64, 7, 2),
        max_pool(
            "r50_maxpool3x3s2",
            [n, 64, 112, 112],
            Pool2dSpec::new([3, 3])
                .with_stride([2, 2])
                .with_padding([1, 1]),
        ),
    ];
    // (stage, input channels of the stage, bottleneck width, input size, stride of block 1)
    let stages = [
        ("c2", 64, 64, 56, 1),
        ("c3", 256, 128, 56, 2),
        ("c4", 512, 256, 28, 2),
        ("c5", 1024, 512, 14, 2),
    ];
    for (stage, cin, width, hw, s) in stages {
        let out = 4 * width;
        let ohw = hw / s;
        let name = |what: &str| format!("r50_{stage}_{what}");
        // First block: reduce, 3x3 (strided), expand, downsample projection.
        v.push(conv_sq(&name("1x1in"), n, cin, hw, width, 1, 1));
        let s3 = if s == 2 { "3x3s2" } else { "3x3" };
        v.push(conv_sq(&name(s3), n, width, hw, width, 3, s));
        v.push(conv_sq(&name("1x1exp"), n, width, ohw, out, 1, 1));
        let ds = if s == 2 { "ds1x1s2" } else { "ds1x1" };
        v.push(conv_sq(&name(ds), n, cin, hw, out, 1, s));
        // Later blocks: reduce from the stage's output, 3x3 at stride 1, expand (a repeat).
        v.push(conv_sq(&name("1x1red"), n, out, ohw, width, 1, 1));
        v.push(conv_sq(&name("3x3"), n, width, ohw, width, 3, 1));
        v.push(conv_sq(&name("1x1exp"), n, width, ohw, out, 1, 1));
    }
    v.push(avg_pool(
        "r50_avgpool7x7",
        [n, 2048, 7, 7],
        Pool2dSpec::new([7, 7]),
        true,
    ));
    // MobileNetV2 inverted residual (expansion 6, 24 -> 144 channels at 56x56): pointwise
    // expansion, depthwise 3x3 at stride 1 and 2, pointwise projections.
    let dw = |name: &str, c: usize, hw: usize, s: usize| {
        conv(
            name,
            [n, c, hw, hw],
            c,
            3,
            Conv2dSpec::new()
                .with_stride([s, s])
                .with_padding(Padding2d::symmetric(1, 1))
                .with_groups(c),
        )
    };
    v.push(conv_sq("mbv2_pw1x1exp", n, 24, 56, 144, 1, 1));
    v.push(dw("mbv2_dw3x3s1", 144, 56, 1));
    v.push(conv_sq("mbv2_pw1x1proj", n, 144, 56, 24, 1, 1));
    v.push(dw("mbv2_dw3x3s2", 144, 56, 2));
    v.push(conv_sq("mbv2_pw1x1proj28", n, 144, 28, 32, 1, 1));
    v
}

/// Tiny layers that still cover all eight ops, for fast tests of the binary.
fn tiny(n: usize) -> Vec<Layer> {
    vec![
        conv_sq("t_conv3x3s2", n, 3, 9, 4, 3, 2),
        conv(
            "t_dw3x3d2",
            [n, 4, 8, 8],
            4,
            3,
            Conv2dSpec::new()
                .with_padding(Padding2d::same([3, 3], [2, 2]))
                .with_dilation([2, 2])
                .with_groups(4),
        ),
        max_pool(
            "t_maxpool3x3s2",
            [n, 2, 7, 7],
            Pool2dSpec::new([3, 3])
                .with_stride([2, 2])
                .with_padding([1, 1]),
        ),
        avg_pool("t_avgpool2x2", [n, 2, 6, 6], Pool2dSpec::new([2, 2]), true),
    ]
}

/// The suite's layers with `batch` (or the suite's default batch), identical shapes folded.
pub fn layers(suite: Suite, batch: Option<usize>) -> Vec<Layer> {
    let v = match suite {
        Suite::Quick => quick(batch.unwrap_or(QUICK_BATCH)),
        Suite::Resnet => resnet(batch.unwrap_or(RESNET_BATCH)),
        Suite::All => {
            let mut v = quick(batch.unwrap_or(QUICK_BATCH));
            v.extend(resnet(batch.unwrap_or(RESNET_BATCH)));
            v
        }
        Suite::Tiny => tiny(batch.unwrap_or(2)),
    };
    dedup(v)
}

/// Folds layers with identical shapes and specs into the first, keeping the others' names as
/// aliases (an alias equal to the kept name, a repeated block, is dropped).
pub fn dedup(layers: Vec<Layer>) -> Vec<Layer> {
    let mut out: Vec<Layer> = Vec::new();
    for l in layers {
        match out.iter_mut().find(|o| o.kind == l.kind) {
            Some(o) => {
                if o.name != l.name && !o.aliases.contains(&l.name) {
                    o.aliases.push(l.name);
                }
            }
            None => out.push(l),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet_layers_are_distinct_and_valid() {
        let ls = layers(Suite::Resnet, Some(1));
        for (i, a) in ls.iter().enumerate() {
            for b in &ls[i + 1..] {
                assert_ne!(a.kind, b.kind, "{} and {}", a.name, b.name);
                assert_ne!(a.name, b.name);
            }
        }
        // c2's downsample projection has the expansion's shape.
        let exp = ls.iter().find(|l| l.name == "r50_c2_1x1exp").unwrap();
        assert_eq!(exp.aliases, vec!["r50_c2_ds1x1".to_string()]);
        assert!(ls.iter().any(|l| l.name == "r50_c3_3x3s2"));
        assert!(ls.iter().any(|l| l.name == "mbv2_dw3x3s2"));
        for l in &ls {
            if let LayerKind::Conv { x, k, kernel, spec } = l.kind {
                let g = spec
                    .forward_geometry(x, [k, x[1] / spec.groups, kernel[0], kernel[1]])
                    .unwrap();
                if l.name == "r50_c5_3x3s2" {
                    assert_eq!([g.oh, g.ow], [7, 7]);
                }
            }
        }
    }

    #[test]
    fn quick_covers_the_required_features() {
        let ls = layers(Suite::Quick, None);
        let convs: Vec<_> = ls
            .iter()
            .filter_map(|l| match l.kind {
                LayerKind::Conv {
                    x, kernel, spec, ..
                } => Some((x, kernel, spec)),
                _ => None,
            })
            .collect();
        assert!(
            convs
                .iter()
                .any(|(_, k, s)| *k == [3, 3] && s.stride == [2, 2])
        );
        assert!(convs.iter().any(|(_, k, _)| *k == [1, 1]));
        assert!(
            convs
                .iter()
                .any(|(x, _, s)| s.groups == x[1] && s.groups > 1)
        );
        assert!(convs.iter().any(|(_, _, s)| s.dilation != [1, 1]));
        let ops: std::collections::HashSet<_> = ls
            .iter()
            .flat_map(|l| l.kind.ops().iter().copied())
            .collect();
        assert_eq!(ops.len(), 8);
        assert!(
            layers(Suite::Quick, Some(5))
                .iter()
                .all(|l| l.kind.x()[0] == 5)
        );
    }
}
