//! The small CNN the training tests share, and its optimizer settings.

use wgconv::nn::{
    AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, Relu, Rng, Sequential, SgdOptions,
};
use wgconv::{Conv2dSpec, Gpu, Padding2d, Pool2dSpec};

pub const N: usize = 4;
pub const CLASSES: usize = 10;
pub const OPTS: SgdOptions = SgdOptions {
    lr: 0.1,
    momentum: 0.9,
    weight_decay: 0.01,
};

pub fn conv_spec() -> Conv2dSpec {
    Conv2dSpec::new().with_padding(Padding2d::symmetric(1, 1))
}

pub fn pool() -> Pool2dSpec {
    Pool2dSpec::new([2, 2])
}

/// conv 1→4 3x3 pad 1, ReLU, max-pool 2 → [4, 4, 4]; conv 4→6 3x3 pad 1, ReLU, avg-pool 2 →
/// [6, 2, 2]; flatten; linear 24→10.
pub fn small_net(gpu: &Gpu, seed: u64) -> Sequential {
    let mut rng = Rng::new(seed);
    Sequential::new()
        .push(Conv2d::new(gpu, 1, 4, [3, 3], conv_spec(), true, &mut rng).unwrap())
        .push(Relu::new())
        .push(MaxPool2d::new(pool()))
        .push(Conv2d::new(gpu, 4, 6, [3, 3], conv_spec(), true, &mut rng).unwrap())
        .push(Relu::new())
        .push(AvgPool2d::new(pool(), true))
        .push(Flatten::new())
        .push(Linear::new(gpu, 24, CLASSES, true, &mut rng).unwrap())
}
