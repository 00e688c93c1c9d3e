//! Training on the GPU: layers that hold their parameters and what their forward saves for the
//! backward, a [`Sequential`] container, PyTorch's initialisation, and an [`Sgd`] optimizer.
//! Tensors stay on the GPU for the whole step; only the loss need be read back.
//!
//! Layers take their input by value and keep what their backward needs (the input of a conv,
//! ReLU or linear layer; the indices of a max-pool), so nothing is copied. `backward` returns
//! the input gradient and stores the parameter gradients, replacing those of the previous step
//! (there is no accumulation across backward calls, so no `zero_grad`).
//!
//! ```no_run
//! use wgconv::nn::{
//!     Conv2d, Flatten, Layer, Linear, MaxPool2d, Relu, Rng, Sequential, Sgd, SgdOptions,
//! };
//! use wgconv::{Conv2dSpec, Gpu, Padding2d, Pool2dSpec};
//! # fn main() -> wgconv::Result<()> {
//! let gpu = Gpu::new()?;
//! let mut rng = Rng::new(0);
//! let same = Conv2dSpec::new().with_padding(Padding2d::symmetric(1, 1));
//! let mut model = Sequential::new()
//!     .push(Conv2d::new(&gpu, 1, 8, [3, 3], same, true, &mut rng)?)
//!     .push(Relu::new())
//!     .push(MaxPool2d::new(Pool2dSpec::new([2, 2])))
//!     .push(Flatten::new())
//!     .push(Linear::new(&gpu, 8 * 4 * 4, 10, true, &mut rng)?);
//! let mut sgd = Sgd::new(SgdOptions { lr: 0.05, momentum: 0.9, weight_decay: 1e-4 })?;
//!
//! let x = gpu.upload(&ndarray::Array4::<f32>::zeros((32, 1, 8, 8)))?;
//! let labels = gpu.upload_indices(&ndarray::Array1::<u32>::zeros(32))?;
//! let logits = model.forward(&gpu, x)?;
//! let (loss, dlogits) = gpu.softmax_cross_entropy(&logits, &labels)?;
//! model.backward_params(&gpu, dlogits)?; // `backward` also returns the input gradient
//! sgd.step(&gpu, model.parameters_mut())?;
//! println!("loss {}", gpu.download_scalar(&loss)?);
//! # Ok(()) }
//! ```

mod layers;

pub use layers::{AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, Relu};
// The hyperparameters of `Sgd`, defined with the other options in `spec` (which the reference
// and the GPU driver use without depending on this module).
#[doc(inline)]
pub use crate::spec::SgdOptions;

use crate::error::{Result, invalid};
use crate::{Gpu, Tensor};

/// A seeded random number generator (SplitMix64) for initialisation and shuffling: the same
/// seed gives the same numbers on every platform.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
    /// Shuffles `items` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// PyTorch's default initialisation of conv and linear layers: `kaiming_uniform_(a = √5)` for
/// the weight, which is `U(-1/√fan_in, 1/√fan_in)`, and the same range for the bias.
/// `fan_in` is the number of inputs of one output (`C/groups · kh · kw`, or `in_features`).
pub fn init_bound(fan_in: usize) -> f64 {
    if fan_in == 0 {
        0.0
    } else {
        1.0 / (fan_in as f64).sqrt()
    }
}

/// `len` draws from `U(-bound, bound)` as f32.
pub(crate) fn uniform_values(rng: &mut Rng, len: usize, bound: f64) -> Vec<f32> {
    (0..len)
        .map(|_| rng.uniform(-bound, bound) as f32)
        .collect()
}

/// A trainable parameter and its gradient from the last backward (`None` before any).
pub struct Param<'a> {
    /// The parameter, updated in place by the optimizer.
    pub value: &'a mut Tensor,
    /// Its gradient.
    pub grad: Option<&'a Tensor>,
}

/// A layer of a network on the GPU.
pub trait Layer: Send {
    /// The layer's output for `x`, saving what the backward needs.
    fn forward(&mut self, gpu: &Gpu, x: Tensor) -> Result<Tensor>;
    /// The input gradient for the output gradient `dy` of the last forward; stores the
    /// parameter gradients. Errs without a forward since the last backward.
    fn backward(&mut self, gpu: &Gpu, dy: Tensor) -> Result<Tensor>;
    /// Like [`Layer::backward`] where the input gradient is not wanted (the first layer of a
    /// network): layers with parameters skip computing it.
    fn backward_params(&mut self, gpu: &Gpu, dy: Tensor) -> Result<()> {
        self.backward(gpu, dy).map(drop)
    }
    /// The parameters with their gradients, in a fixed order (weight, then bias).
    fn parameters_mut(&mut self) -> Vec<Param<'_>> {
        Vec::new()
    }
    /// The parameters, in the order of [`Layer::parameters_mut`].
    fn parameters(&self) -> Vec<&Tensor> {
        Vec::new()
    }
    /// A short description, for printing a model.
    fn describe(&self) -> String;
}

/// Layers applied in order; the backward runs them in reverse.
#[derive(Default)]
pub struct Sequential {
    layers: Vec<Box<dyn Layer>>,
}

impl Sequential {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }
    /// The network with `layer` appended.
    pub fn push(mut self, layer: impl Layer + 'static) -> Self {
        self.layers.push(Box::new(layer));
        self
    }
    /// The layers.
    pub fn layers(&self) -> &[Box<dyn Layer>] {
        &self.layers
    }
}

impl Layer for Sequential {
    fn forward(&mut self, gpu: &Gpu, x: Tensor) -> Result<Tensor> {
        self.layers.iter_mut().try_fold(x, |x, l| l.forward(gpu, x))
    }
    fn backward(&mut self, gpu: &Gpu, dy: Tensor) -> Result<Tensor> {
        self.layers
            .iter_mut()
            .rev()
            .try_fold(dy, |dy, l| l.backward(gpu, dy))
    }
    /// The backward of a network whose input needs no gradient (the usual case): the first
    /// layer skips its input gradient.
    fn backward_params(&mut self, gpu: &Gpu, dy: Tensor) -> Result<()> {
        let Some((first, rest)) = self.layers.split_first_mut() else {
            return Ok(());
        };
        let dy = rest
            .iter_mut()
            .rev()
            .try_fold(dy, |dy, l| l.backward(gpu, dy))?;
        first.backward_params(gpu, dy)
    }
    fn parameters_mut(&mut self) -> Vec<Param<'_>> {
        self.layers
            .iter_mut()
            .flat_map(|l| l.parameters_mut())
            .collect()
    }
    fn parameters(&self) -> Vec<&Tensor> {
        self.layers.iter().flat_map(|l| l.parameters()).collect()
    }
    fn describe(&self) -> String {
        let inner: Vec<String> = self.layers.iter().map(|l| l.describe()).collect();
        format!("Sequential({})", inner.join(", "))
    }
}

/// SGD with momentum and weight decay, holding one momentum buffer (on the GPU) per parameter.
///
/// [`Sgd::step`] must always get the parameters in the same order (as
/// [`Layer::parameters_mut`] gives them); parameters without a gradient are skipped.
pub struct Sgd {
    options: SgdOptions,
    buffers: Vec<Option<Tensor>>,
}

impl Sgd {
    /// An optimizer; errs on a negative or non-finite hyperparameter.
    pub fn new(options: SgdOptions) -> Result<Self> {
        options.validate()?;
        Ok(Sgd {
            options,
            buffers: Vec::new(),
        })
    }
    /// The hyperparameters.
    pub fn options(&self) -> &SgdOptions {
        &self.options
    }
    /// Changes the learning rate (for a schedule); momentum buffers are kept.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        let options = SgdOptions { lr, ..self.options };
        options.validate()?;
        self.options = options;
        Ok(())
    }
    /// The momentum buffers, by parameter (`None` until a parameter's first step).
    pub fn momentum_buffers(&self) -> &[Option<Tensor>] {
        &self.buffers
    }
    /// Updates every parameter in place from its gradient.
    pub fn step(&mut self, gpu: &Gpu, params: Vec<Param<'_>>) -> Result<()> {
        if self.buffers.is_empty() {
            self.buffers.resize_with(params.len(), || None);
        } else if self.buffers.len() != params.len() {
            return Err(invalid(format!(
                "Sgd::step got {} parameters, but {} on its first step",
                params.len(),
                self.buffers.len()
            )));
        }
        for (p, buf) in params.into_iter().zip(&mut self.buffers) {
            if let Some(grad) = p.grad {
                gpu.sgd_step(p.value, grad, buf, &self.options)?;
            }
        }
        Ok(())
    }
}
