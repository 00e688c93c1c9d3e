//! Plans: pure functions from a geometry and a [`DeviceProfile`] to the dispatches an op
//! records, with every selection rule (algorithm, kernel, tile, split-K factor, dx phases,
//! batch and plane chunks, scratch) and its reason in one place. No GPU is needed to make or
//! test a plan: the op bodies in `gpu/conv.rs` and `gpu/pool.rs` validate, ask for a plan,
//! bind the plan's [`Role`]s to their tensors and submit.

mod bands;
mod conv;
mod dx_taps;
mod gemm;
mod phases;
mod pool;
mod profile;
mod rules;
mod winograd;

pub use bands::{
    RowBand, backward_input_bands, band_sizes, forward_bands, row_ranges, sample_fits,
};
pub use conv::{
    ConvAlgorithm, ConvPlan, conv2d_backward_bias, conv2d_backward_input, conv2d_backward_weight,
    conv2d_forward,
};
pub use phases::{Phase, dx_phases};
pub use pool::{PoolKind, pool};
pub use profile::{DeviceProfile, ProfileOptions};
pub use rules::*;

use super::kernels::{Kernel, Storage};

/// The tensor a binding of a [`Step`] refers to; the op body supplies the buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The op's input activation (conv and pool `x`).
    X,
    /// The conv weight.
    W,
    /// The conv bias.
    Bias,
    /// The incoming gradient.
    Dy,
    /// The max-pool indices (written by the forward, read by the backward).
    Indices,
    /// The op's result.
    Out,
    /// The plan's scratch buffer ([`ConvPlan::scratch`]): split-K partial sums.
    Partial,
    /// The plan's second scratch buffer ([`ConvPlan::transforms`]): Winograd's transforms, read
    /// by its GEMM while it writes the first.
    Transform,
    /// A placeholder bound where a kernel's optional input is absent (never read).
    Dummy,
}

/// A byte range of a tensor bound as storage. `size` may run past the end of a small buffer's
/// data (a window's alignment slack); the launcher clips it to the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Which tensor.
    pub role: Role,
    /// Byte offset of the binding (a multiple of the storage offset alignment).
    pub offset: u64,
    /// Byte size of the binding.
    pub size: u64,
}

impl Slot {
    /// All of a tensor of `elems` elements from its start.
    pub fn whole(role: Role, elems: usize) -> Slot {
        Slot {
            role,
            offset: 0,
            size: (elems.max(1) as u64) * 4,
        }
    }
}

/// One dispatch of a plan: a kernel, its params block (the bytes of its `*Params` struct), its
/// storage bindings 1, 2, ... and the number of work items (invocations, or workgroups for
/// [`Kernel::workgroup_per_item`] kernels).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The kernel.
    pub kernel: Kernel,
    /// Its params block.
    pub params: Vec<u8>,
    /// Its storage bindings, in binding order.
    pub binds: Vec<Slot>,
    /// Work items.
    pub items: u64,
    /// How the kernel reads its 16-bit-capable operands (f32 unless [`Step::reading`] says).
    pub storage: Storage,
}

impl Step {
    /// A step of `kernel` with the params block `params`.
    pub fn new<P: bytemuck::Pod>(
        kernel: Kernel,
        params: &P,
        binds: Vec<Slot>,
        items: usize,
    ) -> Step {
        Step {
            kernel,
            params: bytemuck::bytes_of(params).to_vec(),
            binds,
            items: items as u64,
            storage: Storage::F32,
        }
    }

    /// This step with its 16-bit-capable operands read in `storage`.
    pub fn reading(self, storage: Storage) -> Step {
        Step { storage, ..self }
    }
}

impl std::fmt::Display for Step {
    /// One line: the kernel, its items, its bindings and its params by field name, e.g.
    /// `ReducePartials items=64 binds=[Partial:0+256,Out:0+256] elems=64 splits=1 ...`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} items={}", self.kernel, self.items)?;
        if self.storage != Storage::F32 {
            write!(f, " reading={}", self.storage)?;
        }
        write!(f, " binds=[")?;
        for (i, b) in self.binds.iter().enumerate() {
            let sep = if i > 0 { "," } else { "" };
            write!(f, "{sep}{:?}:{}+{}", b.role, b.offset, b.size)?;
        }
        write!(f, "]")?;
        let (fields, _) = self.kernel.params_layout();
        for &(name, offset) in fields {
            let v = self
                .params
                .get(offset..offset + 4)
                .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            write!(f, " {name}={v}")?;
        }
        Ok(())
    }
}
