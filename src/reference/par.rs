//! The reference's parallel loops: rayon's iterators on native targets, and on wasm32 (no
//! threads in a browser page) the same calls running sequentially in the same order. Every
//! parallel loop of the reference writes disjoint outputs or combines fixed partials in a fixed
//! order, so the results are the same bits either way.

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use ndarray::parallel::prelude::*;
#[cfg(not(target_arch = "wasm32"))]
pub(crate) use rayon::prelude::*;
#[cfg(not(target_arch = "wasm32"))]
pub(crate) use rayon::slice::ChunksMut;

#[cfg(target_arch = "wasm32")]
pub(crate) use sequential::*;

#[cfg(target_arch = "wasm32")]
mod sequential {
    pub(crate) use std::slice::ChunksMut;

    /// `into_par_iter` as the plain iterator.
    pub(crate) trait IntoParallelIterator: IntoIterator + Sized {
        fn into_par_iter(self) -> Self::IntoIter {
            self.into_iter()
        }
    }
    impl<I: IntoIterator> IntoParallelIterator for I {}

    /// `par_chunks_mut` as `chunks_mut`.
    pub(crate) trait ParallelSliceMut<T> {
        fn par_chunks_mut(&mut self, len: usize) -> ChunksMut<'_, T>;
    }
    impl<T> ParallelSliceMut<T> for [T] {
        fn par_chunks_mut(&mut self, len: usize) -> ChunksMut<'_, T> {
            self.chunks_mut(len)
        }
    }
}
