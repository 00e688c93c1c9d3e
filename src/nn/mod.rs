//! Training on the GPU: layers that hold their parameters and what their forward saves for the
//! backward, a [`Sequential`] container, PyTorch's initialisation, and an [`Sgd`] optimizer.
//! Tensors stay on the GPU for the whole step; only the loss need be read back.
//!
//! # Mixed precision
//!
//! Give the model a 16-bit input (`gpu.upload_as(&x, DType::BF16)`) and it computes in that
//! dtype: `Conv2d` and `Linear` round their f32 master weights to it for the forward and dx,
//! every op sums in f32 and rounds its result once, the weight gradients go to the f32 masters
//! (computed on exact f32 copies of the 16-bit activations), and [`Sgd`] updates the masters.
//! The loss is f32 from 16-bit logits. f16 needs [`GradScaler`] (dynamic loss scaling);
//! bf16 has f32's range.
//!
//! # Training steps
//!
//! The rules are PyTorch's, made explicit because there is no autograd graph:
//!
//! - **Evaluation saves nothing.** [`Layer::infer`] is the forward for evaluation and inference
//!   (PyTorch's `model.eval()` under `torch.no_grad()`): it takes `&self`, so it cannot save an
//!   input or change what any later backward computes. [`Layer::forward`] is the training
//!   forward: it saves what its backward needs, for exactly one [`Layer::backward`].
//! - **Gradients belong to one step.** The first backward of a step replaces a layer's
//!   gradients; every later backward of the same step adds to them, in order, on the GPU (a
//!   layer applied twice, shared weights, gradient accumulation over micro-batches). A step
//!   ends when the optimizer has used the gradients ([`Sgd::step`]) or at
//!   [`Layer::zero_grad`], which also drops the gradients (PyTorch's `set_to_none`) and every
//!   saved forward. So no `zero_grad` is needed between plain steps, and forgetting one never
//!   sums two steps.
//! - **Each backward takes the latest saved forward** of the current step (backwards run in
//!   the reverse order of the forwards, as autograd runs them). A backward with no saved
//!   forward of the current step is an `Err` naming the layer, never a computation on stale
//!   data. A layer with parameters drops the forwards saved in earlier steps at its next
//!   forward; the others keep theirs until [`Layer::zero_grad`], so evaluate with `infer`.
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
//! sgd.step(&gpu, model.parameters_mut())?; // uses the gradients and ends the step
//! println!("loss {}", gpu.download_scalar(&loss)?);
//!
//! // Evaluation: nothing saved, the next step's gradients unchanged.
//! let test = gpu.upload(&ndarray::Array4::<f32>::zeros((100, 1, 8, 8)))?;
//! let test_logits = model.infer(&gpu, &test)?;
//! # let _ = test_logits;
//! # Ok(()) }
//! ```

mod amp;
mod layers;

pub use amp::GradScaler;
pub use layers::{AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, Relu};
// The hyperparameters of `Sgd`, defined with the other options in `spec` (which the reference
// and the GPU driver use without depending on this module).
#[doc(inline)]
pub use crate::spec::SgdOptions;

use std::cell::Cell;

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

/// The training steps of one layer with parameters: a count of the steps ended so far. Its
/// gradients and saved forwards carry the step they belong to; [`Param::end_step`] (called by
/// [`Sgd::step`]) and [`Layer::zero_grad`] end the step.
#[derive(Debug, Default)]
pub struct StepClock(Cell<u64>);

impl StepClock {
    /// A clock in its first step.
    pub fn new() -> Self {
        Self::default()
    }
    /// The current step (the number of steps ended before it).
    pub fn now(&self) -> u64 {
        self.0.get()
    }
    /// Ends the current step.
    pub fn end(&self) {
        self.0.set(self.0.get().wrapping_add(1));
    }
}

/// A trainable parameter and its gradient from the last backward (`None` before any).
pub struct Param<'a> {
    /// The parameter, updated in place by the optimizer.
    pub value: &'a mut Tensor,
    /// Its gradient.
    pub grad: Option<&'a Tensor>,
    /// The steps of the layer that owns it, if it counts them.
    clock: Option<&'a StepClock>,
}

impl<'a> Param<'a> {
    /// A parameter of a layer that counts no steps (its own layer types handle them).
    pub fn new(value: &'a mut Tensor, grad: Option<&'a Tensor>) -> Self {
        Param {
            value,
            grad,
            clock: None,
        }
    }
    /// A parameter whose layer's steps `clock` counts; [`Param::end_step`] ends them.
    pub fn with_clock(
        value: &'a mut Tensor,
        grad: Option<&'a Tensor>,
        clock: &'a StepClock,
    ) -> Self {
        Param {
            value,
            grad,
            clock: Some(clock),
        }
    }
    /// Ends the owning layer's step: its next backward replaces the gradients instead of
    /// adding to them. [`Sgd::step`] calls this once it has used the gradient.
    pub fn end_step(&self) {
        if let Some(clock) = self.clock {
            clock.end();
        }
    }
}

/// A layer of a network on the GPU. See the [module docs](self) for the rules of a training
/// step.
pub trait Layer: Send {
    /// The training forward: the layer's output for `x`, saving what one backward needs.
    fn forward(&mut self, gpu: &Gpu, x: Tensor) -> Result<Tensor>;
    /// The forward for evaluation and inference (PyTorch's `eval()` under `no_grad()`): the
    /// same output as [`Layer::forward`], saving nothing and changing nothing.
    fn infer(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor>;
    /// The input gradient for the output gradient `dy` of the latest saved forward of this
    /// step; replaces (first backward of a step) or adds to (later ones) the parameter
    /// gradients. `Err` naming the layer without a saved forward.
    fn backward(&mut self, gpu: &Gpu, dy: Tensor) -> Result<Tensor>;
    /// Like [`Layer::backward`] where the input gradient is not wanted (the first layer of a
    /// network): layers with parameters skip computing it.
    fn backward_params(&mut self, gpu: &Gpu, dy: Tensor) -> Result<()> {
        self.backward(gpu, dy).map(drop)
    }
    /// Ends the step: drops the gradients (the next backward sets them) and every saved
    /// forward.
    fn zero_grad(&mut self);
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
    fn infer(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        let Some((first, rest)) = self.layers.split_first() else {
            return gpu.reshaped_copy(x, x.shape());
        };
        rest.iter()
            .try_fold(first.infer(gpu, x)?, |x, l| l.infer(gpu, &x))
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
    fn zero_grad(&mut self) {
        self.layers.iter_mut().for_each(|l| l.zero_grad());
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
    /// Updates every parameter in place from its gradient, then ends the step of each (the
    /// next backward replaces the gradients).
    pub fn step(&mut self, gpu: &Gpu, params: Vec<Param<'_>>) -> Result<()> {
        self.step_scaled(gpu, params, 1.0)
    }

    /// [`Sgd::step`] with every gradient multiplied by `grad_scale` first (1 / the loss scale;
    /// see [`GradScaler`]).
    pub fn step_scaled(
        &mut self,
        gpu: &Gpu,
        params: Vec<Param<'_>>,
        grad_scale: f32,
    ) -> Result<()> {
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
                gpu.sgd_step_scaled(p.value, grad, buf, &self.options, grad_scale)?;
            }
            p.end_step();
        }
        Ok(())
    }
}
