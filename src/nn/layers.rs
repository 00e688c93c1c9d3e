//! The layers: conv, pools, ReLU, linear, flatten.

use ndarray::{Array1, Array2, Array4};

use super::{Layer, Param, Rng, StepClock, init_bound, uniform_values};
use crate::error::{Result, invalid, mismatch};
use crate::spec::numel;
use crate::{Conv2dSpec, DType, Gpu, IndexTensor, Pool2dSpec, Tensor};

fn no_forward(layer: &str) -> crate::Error {
    invalid(format!(
        "{layer}: backward called without a forward of this step to match it (every backward \
         takes one saved training forward, Layer::forward; Layer::infer saves none, and a step \
         ends at Sgd::step or zero_grad)"
    ))
}

/// `t` as f32: itself, or an exact copy of a 16-bit tensor.
fn widened(gpu: &Gpu, t: Tensor) -> Result<Tensor> {
    match t.dtype() {
        DType::F32 => Ok(t),
        _ => gpu.cast(&t, DType::F32),
    }
}

/// The latest saved forward of a layer without parameters, or `Err` naming the layer.
fn pop_saved<T>(saved: &mut Vec<T>, layer: &str) -> Result<T> {
    saved.pop().ok_or_else(|| no_forward(layer))
}

fn hw(x: &Tensor, layer: &str) -> Result<[usize; 2]> {
    match x.shape() {
        &[_, _, h, w] => Ok([h, w]),
        s => Err(mismatch(format!(
            "{layer}: input must be 4-D [N, C, H, W], got {s:?}"
        ))),
    }
}

/// The accessors of a layer whose parameters are the [`WeightBias`] in `self.params`.
macro_rules! weight_bias_accessors {
    () => {
        /// The weight.
        pub fn weight(&self) -> &Tensor {
            &self.params.weight
        }
        /// The bias.
        pub fn bias(&self) -> Option<&Tensor> {
            self.params.bias.as_ref()
        }
        /// The weight gradient of the last step (`None` before a backward and after
        /// [`Layer::zero_grad`]).
        pub fn weight_grad(&self) -> Option<&Tensor> {
            self.params.dw.as_ref()
        }
        /// The bias gradient of the last step.
        pub fn bias_grad(&self) -> Option<&Tensor> {
            self.params.db.as_ref()
        }
    };
}

/// The [`Layer`] methods that hand out the [`WeightBias`] in `self.params`; `$layer` names the
/// layer in its description.
macro_rules! weight_bias_layer_methods {
    ($layer:literal) => {
        fn zero_grad(&mut self) {
            self.params.zero_grad();
        }
        fn parameters_mut(&mut self) -> Vec<Param<'_>> {
            self.params.parameters_mut()
        }
        fn parameters(&self) -> Vec<&Tensor> {
            self.params.parameters()
        }
        fn describe(&self) -> String {
            self.params.describe($layer)
        }
    };
}

/// A bias of `len` draws from `U(-bound, bound)` (after the weight's), on the GPU; `None`
/// without one.
fn uniform_bias(
    gpu: &Gpu,
    rng: &mut Rng,
    bias: bool,
    len: usize,
    bound: f64,
) -> Result<Option<Tensor>> {
    if bias {
        gpu.tensor_len(&[len], "bias")?;
    }
    bias.then(|| gpu.upload(&Array1::from(uniform_values(rng, len, bound))))
        .transpose()
}

/// 2-D convolution with a weight `[K, C/groups, kh, kw]` and an optional bias `[K]`.
///
/// A layer may be applied several times before its backward (shared weights, a siamese
/// branch): each training forward saves its input, each backward takes the latest, and the
/// gradients of one step add up (the first backward of a step sets them, the later ones
/// accumulate into them, deterministically, on the GPU); see the [module docs](super).
pub struct Conv2d {
    params: WeightBias,
    spec: Conv2dSpec,
}

impl Conv2d {
    /// A conv layer from `in_channels` to `out_channels` initialised as PyTorch does
    /// (`U(-1/√fan_in, 1/√fan_in)` for weight and bias, `fan_in = in/groups · kh · kw`),
    /// drawing the weight then the bias from `rng`.
    pub fn new(
        gpu: &Gpu,
        in_channels: usize,
        out_channels: usize,
        kernel: [usize; 2],
        spec: Conv2dSpec,
        bias: bool,
        rng: &mut Rng,
    ) -> Result<Self> {
        spec.validate()?;
        if !in_channels.is_multiple_of(spec.groups) || !out_channels.is_multiple_of(spec.groups) {
            return Err(invalid(format!(
                "Conv2d: in_channels {in_channels} and out_channels {out_channels} must be \
                 divisible by groups {}",
                spec.groups
            )));
        }
        let cg = in_channels / spec.groups;
        let shape = [out_channels, cg, kernel[0], kernel[1]];
        // Sizes checked before anything is allocated, host or GPU.
        let len = gpu.tensor_len(&shape, "Conv2d weight")?;
        let bound = init_bound(numel(&[cg, kernel[0], kernel[1]], "Conv2d fan-in")?);
        let w = Array4::from_shape_vec(shape, uniform_values(rng, len, bound))
            .map_err(|e| mismatch(e.to_string()))?;
        let b = uniform_bias(gpu, rng, bias, out_channels, bound)?;
        Self::from_parameters(gpu.upload(&w)?, b, spec)
    }

    /// A conv layer with the given weight `[K, C/groups, kh, kw]` and bias `[K]`.
    pub fn from_parameters(weight: Tensor, bias: Option<Tensor>, spec: Conv2dSpec) -> Result<Self> {
        spec.validate()?;
        if weight.shape().len() != 4 {
            return Err(mismatch(format!(
                "Conv2d: weight must be 4-D [K, C/groups, kh, kw], got {:?}",
                weight.shape()
            )));
        }
        Ok(Conv2d {
            params: WeightBias::new("Conv2d", weight, bias)?,
            spec,
        })
    }

    weight_bias_accessors!();
}

impl Layer for Conv2d {
    fn forward(&mut self, gpu: &Gpu, x: Tensor) -> Result<Tensor> {
        let y = self.infer(gpu, &x)?;
        self.params.save(x);
        Ok(y)
    }
    fn infer(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        let cast = self.params.cast_to(gpu, x.dtype())?;
        let (w, b) = self.params.in_dtype(&cast);
        gpu.conv2d_forward(x, w, b, &self.spec)
    }
    fn backward(&mut self, gpu: &Gpu, dy: Tensor) -> Result<Tensor> {
        let x = self.params.latest_input("Conv2d")?;
        let hw = hw(x, "Conv2d")?;
        let cast = self.params.cast_to(gpu, dy.dtype())?;
        let (w, _) = self.params.in_dtype(&cast);
        let dx = gpu.conv2d_backward_input(&dy, w, hw, &self.spec)?;
        self.backward_params(gpu, dy)?;
        Ok(dx)
    }
    fn backward_params(&mut self, gpu: &Gpu, dy: Tensor) -> Result<()> {
        let x = self.params.take_input("Conv2d")?;
        // Gradients of 16-bit activations go to the f32 masters: computed on exact f32 copies.
        let (x, dy) = (widened(gpu, x)?, widened(gpu, dy)?);
        let p = &mut self.params;
        let s = p.weight.shape();
        let khw = [s[2], s[3]];
        let accumulate = p.accumulating();
        match (&mut p.dw, accumulate) {
            (Some(dw), true) => gpu.conv2d_backward_weight_accumulate(&x, &dy, &self.spec, dw)?,
            _ => p.dw = Some(gpu.conv2d_backward_weight(&x, &dy, khw, &self.spec)?),
        }
        if p.bias.is_some() {
            match (&mut p.db, accumulate) {
                (Some(db), true) => gpu.conv2d_backward_bias_accumulate(&dy, db)?,
                _ => p.db = Some(gpu.conv2d_backward_bias(&dy)?),
            }
        }
        p.grads_done();
        Ok(())
    }
    weight_bias_layer_methods!("Conv2d");
}

/// Fully connected layer `y = x · wᵀ + b`, weight `[out, in]`, bias `[out]`. Applied several
/// times in a step, its gradients add up as [`Conv2d`]'s do.
pub struct Linear {
    params: WeightBias,
}

impl Linear {
    /// A linear layer initialised as PyTorch does (`U(-1/√in, 1/√in)` for weight and bias),
    /// drawing the weight then the bias from `rng`.
    pub fn new(
        gpu: &Gpu,
        in_features: usize,
        out_features: usize,
        bias: bool,
        rng: &mut Rng,
    ) -> Result<Self> {
        // Sizes checked before anything is allocated, host or GPU.
        let len = gpu.tensor_len(&[out_features, in_features], "Linear weight")?;
        let bound = init_bound(in_features);
        let w =
            Array2::from_shape_vec((out_features, in_features), uniform_values(rng, len, bound))
                .map_err(|e| mismatch(e.to_string()))?;
        let b = uniform_bias(gpu, rng, bias, out_features, bound)?;
        Self::from_parameters(gpu.upload(&w)?, b)
    }

    /// A linear layer with the given weight `[out, in]` and bias `[out]`.
    pub fn from_parameters(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        if weight.shape().len() != 2 {
            return Err(mismatch(format!(
                "Linear: weight must be 2-D [out, in], got {:?}",
                weight.shape()
            )));
        }
        Ok(Linear {
            params: WeightBias::new("Linear", weight, bias)?,
        })
    }

    weight_bias_accessors!();
}

impl Layer for Linear {
    fn forward(&mut self, gpu: &Gpu, x: Tensor) -> Result<Tensor> {
        let y = self.infer(gpu, &x)?;
        self.params.save(x);
        Ok(y)
    }
    fn infer(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        let cast = self.params.cast_to(gpu, x.dtype())?;
        let (w, b) = self.params.in_dtype(&cast);
        gpu.linear_forward(x, w, b)
    }
    fn backward(&mut self, gpu: &Gpu, dy: Tensor) -> Result<Tensor> {
        self.params.latest_input("Linear")?;
        let cast = self.params.cast_to(gpu, dy.dtype())?;
        let (w, _) = self.params.in_dtype(&cast);
        let dx = gpu.linear_backward_input(&dy, w)?;
        self.backward_params(gpu, dy)?;
        Ok(dx)
    }
    fn backward_params(&mut self, gpu: &Gpu, dy: Tensor) -> Result<()> {
        let x = self.params.take_input("Linear")?;
        let (x, dy) = (widened(gpu, x)?, widened(gpu, dy)?);
        let p = &mut self.params;
        if p.accumulating() {
            // A later use in the step: added in as a 1x1 conv's dW and db of the same sums
            // ([N, in] and [N, out] read as [N, C, 1, 1]).
            let (&[n, i], &[_, o]) = (x.shape(), dy.shape()) else {
                return Err(mismatch(format!(
                    "Linear: x must be [N, in] and dy [N, out], got x {:?} and dy {:?}",
                    x.shape(),
                    dy.shape()
                )));
            };
            let (x4, dy4) = (
                gpu.shaped_alias(&x, &[n, i, 1, 1]),
                gpu.shaped_alias(&dy, &[n, o, 1, 1]),
            );
            let spec = Conv2dSpec::default();
            if let Some(dw) = p.dw.take() {
                let mut dw4 = gpu.reshape(dw, &[o, i, 1, 1])?;
                let added = gpu.conv2d_backward_weight_accumulate(&x4, &dy4, &spec, &mut dw4);
                p.dw = Some(gpu.reshape(dw4, &[o, i])?);
                added?;
            }
            if let Some(db) = p.db.as_mut() {
                gpu.conv2d_backward_bias_accumulate(&dy4, db)?;
            }
        } else {
            p.dw = Some(gpu.linear_backward_weight(&x, &dy)?);
            if p.bias.is_some() {
                p.db = Some(gpu.linear_backward_bias(&dy)?);
            }
        }
        p.grads_done();
        Ok(())
    }
    weight_bias_layer_methods!("Linear");
}

/// ReLU; each training forward keeps its input for one backward.
#[derive(Default)]
pub struct Relu {
    inputs: Vec<Tensor>,
}

impl Relu {
    /// A ReLU layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Layer for Relu {
    fn forward(&mut self, gpu: &Gpu, x: Tensor) -> Result<Tensor> {
        let y = self.infer(gpu, &x)?;
        self.inputs.push(x);
        Ok(y)
    }
    fn infer(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        gpu.relu_forward(x)
    }
    fn backward(&mut self, gpu: &Gpu, dy: Tensor) -> Result<Tensor> {
        let x = pop_saved(&mut self.inputs, "Relu")?;
        gpu.relu_backward(&dy, &x)
    }
    fn zero_grad(&mut self) {
        self.inputs.clear();
    }
    fn describe(&self) -> String {
        "Relu".into()
    }
}

/// Max-pool; each training forward keeps the argmax indices and the input size for one
/// backward.
pub struct MaxPool2d {
    spec: Pool2dSpec,
    saved: Vec<(IndexTensor, [usize; 2])>,
}

impl MaxPool2d {
    /// A max-pool layer.
    pub fn new(spec: Pool2dSpec) -> Self {
        MaxPool2d {
            spec,
            saved: Vec::new(),
        }
    }
}

impl Layer for MaxPool2d {
    fn forward(&mut self, gpu: &Gpu, x: Tensor) -> Result<Tensor> {
        let (y, idx) = gpu.max_pool2d_forward(&x, &self.spec)?;
        self.saved.push((idx, hw(&x, "MaxPool2d")?));
        Ok(y)
    }
    fn infer(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        Ok(gpu.max_pool2d_forward(x, &self.spec)?.0)
    }
    fn backward(&mut self, gpu: &Gpu, dy: Tensor) -> Result<Tensor> {
        let (idx, hw) = pop_saved(&mut self.saved, "MaxPool2d")?;
        gpu.max_pool2d_backward(&dy, &idx, hw, &self.spec)
    }
    fn zero_grad(&mut self) {
        self.saved.clear();
    }
    fn describe(&self) -> String {
        format!(
            "MaxPool2d(kernel {:?}, stride {:?})",
            self.spec.kernel, self.spec.stride
        )
    }
}

/// Average pool; each training forward keeps the input size for one backward.
pub struct AvgPool2d {
    spec: Pool2dSpec,
    count_include_pad: bool,
    saved: Vec<[usize; 2]>,
}

impl AvgPool2d {
    /// An average-pool layer.
    pub fn new(spec: Pool2dSpec, count_include_pad: bool) -> Self {
        AvgPool2d {
            spec,
            count_include_pad,
            saved: Vec::new(),
        }
    }
}

impl Layer for AvgPool2d {
    fn forward(&mut self, gpu: &Gpu, x: Tensor) -> Result<Tensor> {
        let y = self.infer(gpu, &x)?;
        self.saved.push(hw(&x, "AvgPool2d")?);
        Ok(y)
    }
    fn infer(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        gpu.avg_pool2d_forward(x, &self.spec, self.count_include_pad)
    }
    fn backward(&mut self, gpu: &Gpu, dy: Tensor) -> Result<Tensor> {
        let hw = pop_saved(&mut self.saved, "AvgPool2d")?;
        gpu.avg_pool2d_backward(&dy, hw, &self.spec, self.count_include_pad)
    }
    fn zero_grad(&mut self) {
        self.saved.clear();
    }
    fn describe(&self) -> String {
        format!(
            "AvgPool2d(kernel {:?}, stride {:?})",
            self.spec.kernel, self.spec.stride
        )
    }
}

/// `[N, d1, d2, ...]` to `[N, d1·d2·...]`: a reshape without copying in training (the input
/// moves to the output), a copy in [`Layer::infer`] (which borrows its input).
#[derive(Default)]
pub struct Flatten {
    saved: Vec<Vec<usize>>,
}

/// `[N, d1·d2·...]` for `shape`, or `Err` for a 0-D shape.
fn flat_shape(shape: &[usize]) -> Result<[usize; 2]> {
    match shape.split_first() {
        Some((&n, rest)) => Ok([n, rest.iter().product()]),
        None => Err(mismatch(
            "Flatten: input must have a batch dimension, got a 0-D tensor",
        )),
    }
}

impl Flatten {
    /// A flatten layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Layer for Flatten {
    fn forward(&mut self, gpu: &Gpu, x: Tensor) -> Result<Tensor> {
        let shape = x.shape().to_vec();
        let y = gpu.reshape(x, &flat_shape(&shape)?)?;
        self.saved.push(shape);
        Ok(y)
    }
    fn infer(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        gpu.reshaped_copy(x, &flat_shape(x.shape())?)
    }
    fn backward(&mut self, gpu: &Gpu, dy: Tensor) -> Result<Tensor> {
        let shape = pop_saved(&mut self.saved, "Flatten")?;
        gpu.reshape(dy, &shape)
    }
    fn zero_grad(&mut self) {
        self.saved.clear();
    }
    fn describe(&self) -> String {
        "Flatten".into()
    }
}

/// A layer's weight (first dimension: its outputs) and optional bias `[outputs]`, with their
/// gradients and the inputs its training forwards saved, each marked with the step it belongs
/// to.
struct WeightBias {
    weight: Tensor,
    bias: Option<Tensor>,
    dw: Option<Tensor>,
    db: Option<Tensor>,
    clock: StepClock,
    /// The step `dw` and `db` belong to.
    grads_step: Option<u64>,
    /// Inputs of the training forwards not yet taken by a backward, latest last.
    inputs: Vec<(u64, Tensor)>,
}

impl WeightBias {
    /// Checks that the bias, if any, is `[outputs]`; `layer` names the layer in the error.
    fn new(layer: &str, weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let out = weight.shape()[0];
        if let Some(b) = &bias
            && b.shape() != [out]
        {
            return Err(mismatch(format!(
                "{layer}: bias shape {:?} must be [{out}]",
                b.shape()
            )));
        }
        Ok(WeightBias {
            weight,
            bias,
            dw: None,
            db: None,
            clock: StepClock::new(),
            grads_step: None,
            inputs: Vec::new(),
        })
    }

    /// For activations of `dtype`: `None` for f32 (the masters serve), else the weight and the
    /// bias rounded to it (mixed precision: f32 masters, 16-bit compute).
    fn cast_to(&self, gpu: &Gpu, dtype: DType) -> Result<Option<(Tensor, Option<Tensor>)>> {
        if dtype == DType::F32 {
            return Ok(None);
        }
        let b = self.bias.as_ref().map(|b| gpu.cast(b, dtype)).transpose()?;
        Ok(Some((gpu.cast(&self.weight, dtype)?, b)))
    }

    /// The weight and bias to compute with: the cast ones of [`WeightBias::cast_to`], or the
    /// masters.
    fn in_dtype<'a>(
        &'a self,
        cast: &'a Option<(Tensor, Option<Tensor>)>,
    ) -> (&'a Tensor, Option<&'a Tensor>) {
        match cast {
            Some((w, b)) => (w, b.as_ref()),
            None => (&self.weight, self.bias.as_ref()),
        }
    }

    /// Saves a training forward's input for this step's backward, dropping the inputs of
    /// earlier steps that no backward took.
    fn save(&mut self, x: Tensor) {
        let now = self.clock.now();
        self.inputs.retain(|(step, _)| *step == now);
        self.inputs.push((now, x));
    }

    /// The input of this step's latest training forward, or `Err` naming `layer`.
    fn latest_input(&self, layer: &str) -> Result<&Tensor> {
        match self.inputs.last() {
            Some((step, x)) if *step == self.clock.now() => Ok(x),
            _ => Err(no_forward(layer)),
        }
    }

    /// Takes the input of this step's latest training forward, or `Err` naming `layer`.
    fn take_input(&mut self, layer: &str) -> Result<Tensor> {
        self.latest_input(layer)?;
        let (_, x) = self.inputs.pop().ok_or_else(|| no_forward(layer))?;
        Ok(x)
    }

    /// Whether a backward adds to the gradients: they exist and belong to this step.
    fn accumulating(&self) -> bool {
        self.dw.is_some() && self.grads_step == Some(self.clock.now())
    }

    /// Marks the gradients as this step's, once a backward has written them.
    fn grads_done(&mut self) {
        self.grads_step = Some(self.clock.now());
    }

    fn zero_grad(&mut self) {
        self.dw = None;
        self.db = None;
        self.grads_step = None;
        self.inputs.clear();
        self.clock.end();
    }

    fn parameters_mut(&mut self) -> Vec<Param<'_>> {
        let clock = &self.clock;
        let mut v = vec![Param::with_clock(&mut self.weight, self.dw.as_ref(), clock)];
        if let Some(b) = self.bias.as_mut() {
            v.push(Param::with_clock(b, self.db.as_ref(), clock));
        }
        v
    }

    fn parameters(&self) -> Vec<&Tensor> {
        std::iter::once(&self.weight)
            .chain(self.bias.as_ref())
            .collect()
    }

    fn describe(&self, layer: &str) -> String {
        format!(
            "{layer}(weight {:?}, bias {})",
            self.weight.shape(),
            self.bias.is_some()
        )
    }
}
