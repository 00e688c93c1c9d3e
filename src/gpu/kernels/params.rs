//! The kernels' parameter blocks: `#[repr(C)]` structs of `u32`s uploaded as each kernel's
//! uniform, mirrored by a WGSL `Params` struct (the shared ones live in `shaders/lib/`), and the
//! checked conversions of host sizes into their fields.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};

/// A size as a kernel `u32`, refusing values past `i32::MAX` so that the kernels' signed
/// position arithmetic cannot wrap.
pub(crate) fn to_u32(v: usize, what: &str) -> Result<u32> {
    if v > i32::MAX as usize {
        return Err(Error::DeviceLimit(format!(
            "{what} = {v} exceeds the GPU kernels' 31-bit index range"
        )));
    }
    Ok(v as u32)
}

/// A value for an i32 params field, stored as its bits.
pub(crate) fn to_i32_bits(v: i64, what: &str) -> Result<u32> {
    i32::try_from(v)
        .map(|v| v as u32)
        .map_err(|_| overflow(what))
}

/// The error of a derived kernel quantity past the 31-bit range.
pub(crate) fn overflow(what: &str) -> Error {
    Error::DeviceLimit(format!(
        "{what} exceeds the GPU kernels' 31-bit index range"
    ))
}

/// Declares a params block: a `#[repr(C)]` struct of `u32`s uploaded as the kernel's uniform,
/// with `FIELDS` listing `(name, byte offset)` for the test that pins it to the WGSL `Params`.
macro_rules! params_struct {
    ($(#[$meta:meta])* $name:ident { $($field:ident),* $(,)? }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
        #[allow(missing_docs)]
        pub struct $name { $(pub $field: u32,)* }
        impl $name {
            /// `(field name, byte offset)` in declaration order.
            pub const FIELDS: &'static [(&'static str, usize)] =
                &[$((stringify!($field), std::mem::offset_of!($name, $field)),)*];
        }
    };
}

params_struct! {
    /// Parameters of the conv kernels (`conv2d_*.wgsl`). Offsets are element offsets of each
    /// tensor's range inside its (aligned) binding window.
    ConvParams {
        n, c, h, w, k, kh, kw, groups, oh, ow, cg, kg,
        stride_h, stride_w, dil_h, dil_w, pad_top, pad_left, has_bias, accumulate,
        x_off, w_off, b_off, dy_off, out_off, total, splits, split_len,
        tiles_m, tiles_n, reduce, _pad0,
    }
}

params_struct! {
    /// Parameters of `conv2d_gemm.wgsl` (see the shader for their meaning). `base_h`,
    /// `base_w`, `tap_dh` and `tap_dw` hold i32 bits.
    GemmParams {
        n, rows, cols, groups, in_c, in_cg, in_h, in_w,
        a_step_h, a_step_w, base_h, base_w, out_c, out_cg, out_h, out_w,
        o_step_h, o_step_w, first_h, first_w, reduce, w_group, w_col, act_off,
        w_off, out_off, b_off, has_bias, tiles_m, tiles_n, total, splits,
        split_len, out_len, tap_rows, tap_cols, tap_dh, tap_dw, w_per_ch, w_per_row,
        w_per_col, w_first, _pad0, _pad1,
    }
}

params_struct! {
    /// Parameters of `reduce_partials.wgsl`, the second pass of dW and db.
    ReduceParams { elems, splits, accumulate, out_off }
}

params_struct! {
    /// Parameters of the pool kernels (`*_pool2d_*.wgsl`). A dispatch covers `planes` planes of
    /// `rows` rows of its result from row `row0` (all rows from 0, or a row range of one plane
    /// larger than a binding; the input offsets are then relative to the plane's row 0, wrapping
    /// in u32 arithmetic).
    PoolParams {
        planes, h, w, oh, ow, kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        count_include_pad, in_off, idx_off, out_off, total, row0, rows,
    }
}

params_struct! {
    /// Parameters of the element-wise kernels (`relu_*.wgsl`): element count and the element
    /// offsets of each tensor inside its binding window.
    EltParams { total, a_off, b_off, out_off }
}

params_struct! {
    /// Parameters of `matmul.wgsl`: `c[m, n] = op(a) · op(b) (+ bias)`.
    MatmulParams { m, n, k, trans_a, trans_b, has_bias, _pad0, _pad1 }
}

params_struct! {
    /// Parameters of the Winograd F(2x2, 3x3) kernels (`winograd_*.wgsl`; see
    /// `shaders/lib/winograd_params.wgsl`). `base_h` and `base_w` hold i32 bits.
    WinogradParams {
        n, in_c, in_h, in_w, out_c, out_h, out_w, groups,
        in_cg, out_cg, tiles_h, tiles_w, base_h, base_w, flip, has_bias,
        in_off, out_off, total, tiles, accumulate, _pad0, _pad1, _pad2,
    }
}

params_struct! {
    /// Parameters of the row-wise kernels (`linear_backward_bias.wgsl`,
    /// `softmax_cross_entropy.wgsl`) on a `[rows, cols]` matrix; `scale` (f32 bits) multiplies
    /// the softmax gradient (loss scaling; 1.0 otherwise).
    RowsParams { rows, cols, scale, _pad1 }
}

params_struct! {
    /// Parameters of `sgd_step.wgsl`. `lr`, `momentum`, `weight_decay` and `grad_scale` (the
    /// gradient's multiplier: 1 / the loss scale, else 1.0) hold `f32` bits (`f32::to_bits`);
    /// the WGSL struct declares them `f32`.
    SgdParams {
        total, p_off, g_off, buf_off, lr, momentum, weight_decay, first_step,
        has_momentum, grad_scale, _pad1, _pad2,
    }
}

/// A params block built from host sizes: `field: value => "what"` converts `value` with
/// [`to_u32`] (its error names `what`), `field = expr` takes `expr` as it is, and a trailing
/// `..base` fills the rest. Fields are evaluated in the order written, so the first size out of
/// range is the one reported. Used inside a function returning [`Result`].
macro_rules! sizes {
    (@acc $ty:ident [$($done:tt)*]) => { $ty { $($done)* } };
    (@acc $ty:ident [$($done:tt)*] ..$base:expr) => { $ty { $($done)* ..$base } };
    (@acc $ty:ident [$($done:tt)*] $field:ident: $value:expr => $what:literal, $($rest:tt)*) => {
        $crate::gpu::kernels::sizes!(
            @acc $ty [$($done)* $field: $crate::gpu::kernels::to_u32($value, $what)?,] $($rest)*
        )
    };
    (@acc $ty:ident [$($done:tt)*] $field:ident = $value:expr, $($rest:tt)*) => {
        $crate::gpu::kernels::sizes!(@acc $ty [$($done)* $field: $value,] $($rest)*)
    };
    ($ty:ident { $($body:tt)* }) => { $crate::gpu::kernels::sizes!(@acc $ty [] $($body)*) };
}
pub(crate) use sizes;
