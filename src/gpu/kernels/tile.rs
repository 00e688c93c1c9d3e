//! The implicit-GEMM tile: its shapes, the candidates the library may choose, and the rule for
//! which shapes the kernels accept.

/// Tile shape of the implicit-GEMM conv kernels: a workgroup computes a `bm x bn` output tile,
/// stepping `bk` reduction elements at a time; each invocation owns a `tm x tn` register block
/// (4 or 8 each), so a workgroup has `(bm / tm) * (bn / tn)` invocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Tile {
    /// Tile rows (output pixels for forward and dx, output channels for dW).
    pub bm: u32,
    /// Tile columns.
    pub bn: u32,
    /// Reduction step.
    pub bk: u32,
    /// Register block rows per invocation.
    pub tm: u32,
    /// Register block columns per invocation.
    pub tn: u32,
}

impl Tile {
    /// 64 x 64 tiles of 4 x 4 blocks: 256 invocations, 4 KiB of workgroup memory.
    pub const SMALL: Tile = Tile {
        bm: 64,
        bn: 64,
        bk: 8,
        tm: 4,
        tn: 4,
    };

    /// 128 x 64 tiles of 8 x 8 blocks: 128 invocations, 6 KiB of workgroup memory. The best of
    /// the candidates on an H100 (see docs/PERF.md).
    pub const LARGE: Tile = Tile {
        bm: 128,
        bn: 64,
        bk: 8,
        tm: 8,
        tn: 8,
    };

    /// 64 x 64 tiles of 8 x 8 blocks: 64 invocations. dW's tile on CPU drivers.
    pub const MEDIUM: Tile = Tile {
        bm: 64,
        bn: 64,
        bk: 8,
        tm: 8,
        tn: 8,
    };

    /// 128 x 32 tiles of 8 x 4 blocks: for GEMMs with few columns (K or C per group <= 32).
    pub const NARROW: Tile = Tile {
        bm: 128,
        bn: 32,
        bk: 8,
        tm: 8,
        tn: 4,
    };

    /// 128 x 32 tiles of 8 x 8 blocks: 64 invocations, each staging two A rows. The narrow
    /// tile on CPU drivers, where the inner loop's workgroup loads per multiply-add decide the
    /// speed (see docs/PERF.md).
    pub const NARROW_CPU: Tile = Tile {
        bm: 128,
        bn: 32,
        bk: 8,
        tm: 8,
        tn: 8,
    };

    /// 128 x 16 tiles of 8 x 4 blocks: 64 invocations, each staging two A rows. The CPU
    /// drivers' tile for GEMMs with at most 16 columns, where a 32-wide tile is half empty
    /// (1.33x faster than [`Tile::NARROW_CPU`] on lavapipe for `q_conv4x4same`'s forward and dx).
    pub const NARROW16_CPU: Tile = Tile {
        bm: 128,
        bn: 16,
        bk: 8,
        tm: 8,
        tn: 4,
    };

    /// Every tile the library may choose (tests translate each).
    pub const CANDIDATES: [Tile; 8] = [
        Tile::SMALL,
        Tile::LARGE,
        Tile::NARROW,
        Tile::NARROW_CPU,
        Tile {
            bm: 64,
            bn: 128,
            bk: 8,
            tm: 8,
            tn: 8,
        },
        Tile::MEDIUM,
        Tile {
            bm: 32,
            bn: 32,
            bk: 8,
            tm: 4,
            tn: 4,
        },
        Tile::NARROW16_CPU,
    ];

    /// Parses `bm,bn,bk,tm,tn` (the `WGCONV_TILE` variable).
    pub fn parse(s: &str) -> Option<Tile> {
        let v: Vec<u32> = s
            .split(',')
            .map(|p| p.trim().parse().ok())
            .collect::<Option<_>>()?;
        let [bm, bn, bk, tm, tn] = v[..] else {
            return None;
        };
        let t = Tile { bm, bn, bk, tm, tn };
        t.is_valid().then_some(t)
    }

    /// The tile's override values.
    pub(crate) fn constants(self) -> Vec<(&'static str, f64)> {
        vec![
            ("BM", self.bm.into()),
            ("BN", self.bn.into()),
            ("BK", self.bk.into()),
            ("TM", self.tm.into()),
            ("TN", self.tn.into()),
        ]
    }

    /// Invocations per workgroup.
    pub fn invocations(self) -> u32 {
        (self.bm / self.tm) * (self.bn / self.tn)
    }

    /// Workgroup memory the tile stages, in bytes.
    pub fn workgroup_bytes(self) -> u32 {
        4 * self.bk * (self.bm + self.bn)
    }

    /// Whether the kernels accept this shape: register blocks of 4 or 8 rows and columns
    /// (whole vec4s) dividing the tile, and a workgroup of a whole multiple of `bn`
    /// invocations (each loads one B column) and of `bm` or half of `bm` (each loads one or
    /// two A rows).
    pub fn is_valid(self) -> bool {
        let Tile { bm, bn, bk, tm, tn } = self;
        matches!(tm, 4 | 8)
            && matches!(tn, 4 | 8)
            && bk >= 1
            && bm % tm == 0
            && bn % tn == 0
            && (self.invocations().is_multiple_of(bm) || bm == 2 * self.invocations())
            && self.invocations().is_multiple_of(bn)
            // Each invocation stages whole numbers of elements of A (at most 16) and B (at
            // most 8) per step (dW: of one reduction index, so the workgroup is a multiple of
            // bk).
            && self.invocations().is_multiple_of(bk)
            && (bk * bm) % self.invocations() == 0
            && (bk * bn) % self.invocations() == 0
            && bk * bm / self.invocations() <= 16
            && bk * bn / self.invocations() <= 8
    }
}
