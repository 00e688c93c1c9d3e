//! The layers: conv, pools, ReLU, linear, flatten.

use ndarray::{Array1, Array2, Array4};

use super::{Layer, Param, Rng, init_bound, uniform_values};
use crate::error::{Result, invalid, mismatch};
use crate::spec::numel;
use crate::{Conv2dSpec, Gpu, IndexTensor, Pool2dSpec, Tensor};

fn no_forward(layer: &str) -> crate::Error {
    invalid(format!(
        "{layer}: backward called without a forward since the last backward"
    ))
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
        /// The weight gradient of the last backward.
        pub fn weight_grad(&self) -> Option<&Tensor> {
            self.params.dw.as_ref()
        }
        /// The bias gradient of the last backward.
        pub fn bias_grad(&self) -> Option<&Tensor> {
            self.params.db.as_ref()
        }
    };
}

/// The [`Layer`] methods that hand out the [`WeightBias`] in `self.params`; `$layer` names the
/// layer in its description.
macro_rules! weight_bias_layer_methods {
    ($layer:literal) => {
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
/// branch): each forward saves its input, each backward takes the latest, and the gradients of
/// one step add up (the first backward after a fresh forward sets them, the later ones
/// accumulate into them, deterministically, on the GPU).
pub struct Conv2d {
    params: WeightBias,
    spec: Conv2dSpec,
    /// Inputs of the forwards not yet taken by a backward, latest last.
    inputs: Vec<Tensor>,
    /// The next backward starts this step's gradients rather than adding to them.
    fresh: bool,
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
            inputs: Vec::new(),
            fresh: true,
        })
    }

    weight_bias_accessors!();
}

impl Layer for Conv2d {
    fn forward(&mut self, gpu: &Gpu, x: Tensor) -> Result<Tensor> {
        let y = gpu.conv2d_forward(
            &x,
            &self.params.weight,
            self.params.bias.as_ref(),
            &self.spec,
        )?;
        if self.inputs.is_empty() {
            self.fresh = true;
        }
        self.inputs.push(x);
        Ok(y)
    }
    fn backward(&mut self, gpu: &Gpu, dy: Tensor) -> Result<Tensor> {
        let x = self.inputs.last().ok_or_else(|| no_forward("Conv2d"))?;
        let dx =
            gpu.conv2d_backward_input(&dy, &self.params.weight, hw(x, "Conv2d")?, &self.spec)?;
        self.backward_params(gpu, dy)?;
        Ok(dx)
    }
    fn backward_params(&mut self, gpu: &Gpu, dy: Tensor) -> Result<()> {
        let x = self.inputs.pop().ok_or_else(|| no_forward("Conv2d"))?;
        let s = self.params.weight.shape();
        let khw = [s[2], s[3]];
        let fresh = std::mem::replace(&mut self.fresh, false);
        match (&mut self.params.dw, fresh) {
            (Some(dw), false) => gpu.conv2d_backward_weight_accumulate(&x, &dy, &self.spec, dw)?,
            _ => self.params.dw = Some(gpu.conv2d_backward_weight(&x, &dy, khw, &self.spec)?),
        }
        if self.params.bias.is_some() {
            match (&mut self.params.db, fresh) {
                (Some(db), false) => gpu.conv2d_backward_bias_accumulate(&dy, db)?,
                _ => self.params.db = Some(gpu.conv2d_backward_bias(&dy)?),
            }
        }
        Ok(())
    }
    weight_bias_layer_methods!("Conv2d");
}

/// Fully connected layer `y = x · wᵀ + b`, weight `[out, in]`, bias `[out]`.
pub struct Linear {
    params: WeightBias,
    input: Option<Tensor>,
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
            input: None,
        })
    }

    weight_bias_accessors!();
}

impl Layer for Linear {
    fn forward(&mut self, gpu: &Gpu, x: Tensor) -> Result<Tensor> {
        let y = gpu.linear_forward(&x, &self.params.weight, self.params.bias.as_ref())?;
        self.input = Some(x);
        Ok(y)
    }
    fn backward(&mut self, gpu: &Gpu, dy: Tensor) -> Result<Tensor> {
        if self.input.is_none() {
            return Err(no_forward("Linear"));
        }
        let dx = gpu.linear_backward_input(&dy, &self.params.weight)?;
        self.backward_params(gpu, dy)?;
        Ok(dx)
    }
    fn backward_params(&mut self, gpu: &Gpu, dy: Tensor) -> Result<()> {
        let x = self.input.take().ok_or_else(|| no_forward("Linear"))?;
        self.params.dw = Some(gpu.linear_backward_weight(&x, &dy)?);
        if self.params.bias.is_some() {
            self.params.db = Some(gpu.linear_backward_bias(&dy)?);
        }
        Ok(())
    }
    weight_bias_layer_methods!("Linear");
}

/// ReLU; keeps its input for the backward.
#[derive(Default)]
pub struct Relu {
    input: Option<Tensor>,
}

impl Relu {
    /// A ReLU layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Layer for Relu {
    fn forward(&mut self, gpu: &Gpu, x: Tensor) -> Result<Tensor> {
        let y = gpu.relu_forward(&x)?;
        self.input = Some(x);
        Ok(y)
    }
    fn backward(&mut self, gpu: &Gpu, dy: Tensor) -> Result<Tensor> {
        let x = self.input.take().ok_or_else(|| no_forward("Relu"))?;
        gpu.relu_backward(&dy, &x)
    }
    fn describe(&self) -> String {
        "Relu".into()
    }
}

/// Max-pool; keeps the argmax indices and the input size for the backward.
pub struct MaxPool2d {
    spec: Pool2dSpec,
    saved: Option<(IndexTensor, [usize; 2])>,
}

impl MaxPool2d {
    /// A max-pool layer.
    pub fn new(spec: Pool2dSpec) -> Self {
        MaxPool2d { spec, saved: None }
    }
}

impl Layer for MaxPool2d {
    fn forward(&mut self, gpu: &Gpu, x: Tensor) -> Result<Tensor> {
        let (y, idx) = gpu.max_pool2d_forward(&x, &self.spec)?;
        self.saved = Some((idx, hw(&x, "MaxPool2d")?));
        Ok(y)
    }
    fn backward(&mut self, gpu: &Gpu, dy: Tensor) -> Result<Tensor> {
        let (idx, hw) = self.saved.take().ok_or_else(|| no_forward("MaxPool2d"))?;
        gpu.max_pool2d_backward(&dy, &idx, hw, &self.spec)
    }
    fn describe(&self) -> String {
        format!(
            "MaxPool2d(kernel {:?}, stride {:?})",
            self.spec.kernel, self.spec.stride
        )
    }
}

/// Average pool; keeps the input size for the backward.
pub struct AvgPool2d {
    spec: Pool2dSpec,
    count_include_pad: bool,
    saved: Option<[usize; 2]>,
}

impl AvgPool2d {
    /// An average-pool layer.
    pub fn new(spec: Pool2dSpec, count_include_pad: bool) -> Self {
        AvgPool2d {
            spec,
            count_include_pad,
            saved: None,
        }
    }
}

impl Layer for AvgPool2d {
    fn forward(&mut self, gpu: &Gpu, x: Tensor) -> Result<Tensor> {
        let y = gpu.avg_pool2d_forward(&x, &self.spec, self.count_include_pad)?;
        self.saved = Some(hw(&x, "AvgPool2d")?);
        Ok(y)
    }
    fn backward(&mut self, gpu: &Gpu, dy: Tensor) -> Result<Tensor> {
        let hw = self.saved.take().ok_or_else(|| no_forward("AvgPool2d"))?;
        gpu.avg_pool2d_backward(&dy, hw, &self.spec, self.count_include_pad)
    }
    fn describe(&self) -> String {
        format!(
            "AvgPool2d(kernel {:?}, stride {:?})",
            self.spec.kernel, self.spec.stride
        )
    }
}

/// `[N, d1, d2, ...]` to `[N, d1·d2·...]`, a reshape without copying.
#[derive(Default)]
pub struct Flatten {
    saved: Option<Vec<usize>>,
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
        let Some((&n, rest)) = shape.split_first() else {
            return Err(mismatch(
                "Flatten: input must have a batch dimension, got a 0-D tensor",
            ));
        };
        let y = gpu.reshape(x, &[n, rest.iter().product()])?;
        self.saved = Some(shape);
        Ok(y)
    }
    fn backward(&mut self, gpu: &Gpu, dy: Tensor) -> Result<Tensor> {
        let shape = self.saved.take().ok_or_else(|| no_forward("Flatten"))?;
        gpu.reshape(dy, &shape)
    }
    fn describe(&self) -> String {
        "Flatten".into()
    }
}

/// A layer's weight (first dimension: its outputs) and optional bias `[outputs]`, with their
/// gradients from the last backward.
struct WeightBias {
    weight: Tensor,
    bias: Option<Tensor>,
    dw: Option<Tensor>,
    db: Option<Tensor>,
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
        })
    }

    fn parameters_mut(&mut self) -> Vec<Param<'_>> {
        let mut v = vec![Param {
            value: &mut self.weight,
            grad: self.dw.as_ref(),
        }];
        if let Some(b) = self.bias.as_mut() {
            v.push(Param {
                value: b,
                grad: self.db.as_ref(),
            });
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
