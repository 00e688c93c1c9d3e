//! Hostile values for the fuzzers of the shape math and the reference: zero, powers of two and
//! their neighbours up to 2^63, `i32::MAX`, `u32::MAX`, `isize::MAX`, `usize::MAX` and its
//! neighbours, values whose squares just overflow 64 bits, and uniformly random 64-bit values;
//! the seeded runner (`WGCONV_FUZZ_SEED` explores other cases locally) and panic catching.

use std::panic::{AssertUnwindSafe, catch_unwind};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use wgconv::{Conv2dSpec, Padding2d, Pool2dSpec};

/// Values chosen to break size arithmetic.
pub const SPECIAL: &[usize] = &[
    0,
    1,
    2,
    u16::MAX as usize,
    1 << 16,
    (1 << 16) + 1,
    i32::MAX as usize,
    1 << 31,
    u32::MAX as usize,
    1 << 32,
    (1 << 32) + 1,
    3_037_000_499, // floor(sqrt(2^63))
    3_037_000_500,
    4_294_967_295,
    1 << 40,
    isize::MAX as usize,
    (isize::MAX as usize) + 1,
    usize::MAX / 2 - 1,
    usize::MAX / 3,
    usize::MAX - 1,
    usize::MAX,
];

/// A size or spec value: mostly small, often hostile.
pub fn hostile() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 0usize..=6,
        2 => 7usize..=300,
        3 => prop::sample::select(SPECIAL),
        2 => (0u32..64, -1isize..=1).prop_map(|(b, d)| (1usize << b).wrapping_add_signed(d)),
        1 => any::<usize>(),
    ]
}

/// A size that is usually small and occasionally hostile (used where most cases should reach
/// the deeper checks).
pub fn mostly_small() -> impl Strategy<Value = usize> {
    prop_oneof![
        12 => 1usize..=9,
        1 => 0usize..=0,
        2 => hostile(),
    ]
}

/// Raw random words decoded into spec values. Proptest's value trees for nested unions are
/// costly to build (they made 100,000 cases take seconds); arrays of `u64` are cheap, and they
/// still shrink towards 0, which decodes to the smallest values.
pub struct Draw<'a>(pub std::slice::Iter<'a, u64>);

impl Draw<'_> {
    pub fn word(&mut self) -> u64 {
        *self.0.next().expect("enough random words")
    }
    pub fn below(&mut self, n: u64) -> usize {
        (self.word() % n) as usize
    }
    pub fn flag(&mut self) -> bool {
        self.word() & 1 == 1
    }
    /// Like [`hostile`]: mostly small, often hostile.
    pub fn hostile(&mut self) -> usize {
        hostile_from(self.word())
    }
    /// Like [`mostly_small`].
    pub fn mostly_small(&mut self) -> usize {
        let r = self.word();
        match r % 15 {
            0..=11 => 1 + (r >> 4) as usize % 9,
            12 => 0,
            _ => hostile_from(r >> 4),
        }
    }
    /// Mostly 1 (so that more cases reach the deeper checks), otherwise `mostly_small`.
    pub fn mostly_one(&mut self) -> usize {
        if self.below(5) < 3 {
            1
        } else {
            self.mostly_small()
        }
    }
    /// Small (0..=3) or hostile.
    pub fn pad(&mut self) -> usize {
        let r = self.word();
        if r % 5 < 3 {
            (r >> 3) as usize % 4
        } else {
            hostile_from(r >> 3)
        }
    }
    pub fn conv_spec(&mut self) -> Conv2dSpec {
        Conv2dSpec {
            stride: [self.mostly_small(), self.mostly_small()],
            padding: Padding2d {
                top: self.pad(),
                bottom: self.pad(),
                left: self.pad(),
                right: self.pad(),
            },
            dilation: [self.mostly_one(), self.mostly_one()],
            groups: if self.below(7) < 6 {
                1 + self.below(4)
            } else {
                self.hostile()
            },
        }
    }
    pub fn pool_spec(&mut self) -> Pool2dSpec {
        let kernel = [self.mostly_small(), self.mostly_small()];
        let stride = [self.mostly_small(), self.mostly_small()];
        let mut padding = [self.hostile(), self.hostile()];
        let dilation = [self.mostly_one(), self.mostly_one()];
        let ceil_mode = self.flag();
        // Most cases keep the padding legal (<= kernel / 2) so that the deeper checks run.
        if self.below(4) > 0 {
            padding = [
                padding[0] % (kernel[0] / 2 + 1),
                padding[1] % (kernel[1] / 2 + 1),
            ];
        }
        Pool2dSpec {
            kernel,
            stride,
            padding,
            dilation,
            ceil_mode,
        }
    }
    /// Tiny dimensions (zero included), or hostile ones.
    pub fn dims4(&mut self) -> [usize; 4] {
        if self.flag() {
            [self.below(3), self.below(4), self.below(6), self.below(6)]
        } else {
            [
                self.mostly_small(),
                self.mostly_small(),
                self.mostly_small(),
                self.mostly_small(),
            ]
        }
    }
}

/// The value [`hostile`] would draw, from one random word.
pub fn hostile_from(r: u64) -> usize {
    let v = r >> 4;
    match r & 15 {
        0..=7 => (v % 7) as usize,
        8 | 9 => 7 + (v % 294) as usize,
        10..=12 => SPECIAL[(v % SPECIAL.len() as u64) as usize],
        13 | 14 => (1usize << (v % 64)).wrapping_add_signed((v >> 6) as isize % 3 - 1),
        _ => r.rotate_left(29) as usize,
    }
}

pub fn runner(cases: u32) -> TestRunner {
    let seed = std::env::var("WGCONV_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_0007);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        max_shrink_iters: 4096,
        ..Config::default()
    })
}

pub fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

/// Runs `f`, turning a panic into a test failure that names `what`.
pub fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        fail(format!("{what} panicked: {msg}"))
    })
}
