//! The crate's error type.

/// Everything that can go wrong in wgconv. Every variant names the offending value.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// A spec field or a shape is outside what the operation accepts.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Two shapes that must agree do not.
    #[error("shape mismatch: {0}")]
    ShapeMismatch(String),
    /// A size computation overflowed or exceeds what the host or the device can address.
    #[error("size overflow: {0}")]
    Overflow(String),
    /// The request does not fit the device's limits (buffer size, bindings, ...).
    #[error("device limit exceeded: {0}")]
    DeviceLimit(String),
    /// No adapter matched the request, or the device could not be created.
    #[error("adapter: {0}")]
    Adapter(String),
    /// wgpu reported a validation or out-of-memory error.
    #[error("wgpu error in {op}: {message}")]
    Wgpu {
        /// The operation that was running.
        op: String,
        /// wgpu's message.
        message: String,
    },
    /// The device was lost; every later call fails with this error.
    #[error("device lost: {0}")]
    DeviceLost(String),
    /// Mapping a readback buffer failed or timed out.
    #[error("readback failed: {0}")]
    Readback(String),
    /// Checked mode found the GPU result differing from the CPU reference.
    #[error("check failed for {op}: {detail}")]
    CheckFailed {
        /// The operation whose result differed.
        op: String,
        /// What differed and by how much.
        detail: String,
    },
}

/// `std::result::Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

pub(crate) fn mismatch(msg: impl Into<String>) -> Error {
    Error::ShapeMismatch(msg.into())
}
