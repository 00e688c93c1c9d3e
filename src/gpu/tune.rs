//! The opt-in tuner, like `torch.backends.cudnn.benchmark` with a saved plan: for each conv
//! geometry an op meets, it times the candidate plans (the algorithms and tiles that give a
//! different plan) on this adapter, keeps the fastest, and can save the choices to JSON and load
//! them, so that a run with a saved file makes the same plans, hence the same bits. Off by
//! default ([`GpuBuilder::autotune`](super::GpuBuilder::autotune),
//! [`GpuBuilder::tuning_file`](super::GpuBuilder::tuning_file)).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::plan::{ConvPlan, DeviceProfile};
use super::submit::{Buffers, Sink};
use super::{Algorithm, Gpu};
use crate::error::{Error, Result};
use crate::gpu::kernels::Tile;
use crate::spec::Conv2dGeometry;

/// The conv ops with more than one plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TunedOp {
    /// `conv2d_forward` (with or without bias: `flag`).
    Forward,
    /// `conv2d_backward_input` (accumulating or not: `flag`).
    BackwardInput,
    /// `conv2d_backward_weight` (accumulating or not: `flag`).
    BackwardWeight,
}

/// What a choice is for: the op and its geometry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TuneKey {
    /// The op.
    pub op: TunedOp,
    /// Input `[N, C, H, W]`.
    pub x: [usize; 4],
    /// Weight `[K, C/groups, kh, kw]`.
    pub w: [usize; 4],
    /// Stride.
    pub stride: [usize; 2],
    /// Padding top, bottom, left, right.
    pub padding: [usize; 4],
    /// Dilation.
    pub dilation: [usize; 2],
    /// Groups.
    pub groups: usize,
    /// The forward's bias, or the gradient's accumulation.
    pub flag: bool,
}

impl TuneKey {
    /// The key of `op` on geometry `g`.
    pub fn new(op: TunedOp, g: &Conv2dGeometry, flag: bool) -> TuneKey {
        let p = g.padding;
        TuneKey {
            op,
            x: g.x_shape(),
            w: g.w_shape(),
            stride: g.stride,
            padding: [p.top, p.bottom, p.left, p.right],
            dilation: g.dilation,
            groups: g.groups,
            flag,
        }
    }
}

/// One tuned choice: the algorithm and the tile (`None`: the rules' own tile per GEMM).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TunedEntry {
    /// The op and geometry.
    pub key: TuneKey,
    /// The algorithm chosen.
    pub algorithm: Algorithm,
    /// The tile chosen, if fixed.
    pub tile: Option<Tile>,
    /// dx with the kernel taps along the GEMM's columns ([`GpuBuilder::taps_dx`](super::GpuBuilder::taps_dx)).
    #[serde(default)]
    pub taps_dx: bool,
    /// Its median time in milliseconds when measured here; `None` when it was the only plan.
    pub ms: Option<f64>,
}

/// The JSON file ([`Gpu::save_tuning`]).
#[derive(Serialize, Deserialize)]
struct TuningFile {
    /// Format version: 1.
    version: u32,
    /// The adapter it was measured on (for the reader; a file from another adapter loads, if
    /// its tiles fit).
    adapter: String,
    entries: Vec<TunedEntry>,
}

/// The tuner's state in a [`Gpu`].
#[derive(Default)]
pub(crate) struct Tuner {
    /// Measure geometries without an entry.
    pub measure: bool,
    /// Measuring, or choices were loaded: otherwise every op plans on the context's profile
    /// without looking at `entries` (which only measuring adds to).
    active: bool,
    pub entries: Mutex<HashMap<TuneKey, TunedEntry>>,
}

/// Timed runs per candidate (after one untimed).
const SAMPLES: usize = 3;

impl Tuner {
    /// A tuner that measures (`measure`) and starts from `entries` (a loaded file's).
    pub fn new(measure: bool, entries: HashMap<TuneKey, TunedEntry>) -> Tuner {
        Tuner {
            measure,
            active: measure || !entries.is_empty(),
            entries: Mutex::new(entries),
        }
    }

    /// The entries of a tuning file, checked against `profile` (every tile must fit).
    pub fn load(path: &Path, profile: &DeviceProfile) -> Result<HashMap<TuneKey, TunedEntry>> {
        let what = path.display();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::InvalidArgument(format!("tuning file {what}: {e}")))?;
        let file: TuningFile = serde_json::from_str(&text)
            .map_err(|e| Error::InvalidArgument(format!("tuning file {what}: {e}")))?;
        if file.version != 1 {
            return Err(Error::InvalidArgument(format!(
                "tuning file {what}: version {} (this build reads 1)",
                file.version
            )));
        }
        let mut entries = HashMap::new();
        for (i, e) in file.entries.into_iter().enumerate() {
            if let Some(t) = e.tile
                && !(t.is_valid() && profile.fits(t))
            {
                return Err(Error::DeviceLimit(format!(
                    "tuning file {what}, entry {i}: tile {t:?} does not fit this adapter"
                )));
            }
            entries.insert(e.key.clone(), e);
        }
        Ok(entries)
    }
}

/// A candidate: algorithm, tile (`None`: the rules'), dx by taps.
type Choice = (Algorithm, Option<Tile>, bool);

/// `profile` with a choice applied.
fn with_choice(profile: &DeviceProfile, (algorithm, tile, taps_dx): Choice) -> DeviceProfile {
    DeviceProfile {
        algorithm,
        tile: tile.unwrap_or(profile.tile),
        auto_tile: tile.is_none() && profile.auto_tile,
        taps_dx,
        ..profile.clone()
    }
}

impl TunedEntry {
    fn choice(&self) -> Choice {
        (self.algorithm, self.tile, self.taps_dx)
    }
}

impl Gpu {
    /// The profile an op on `key` plans with: the context's, or its tuned choice, measured now
    /// (eagerly, on the op's inputs, into scratch outputs of `out_len` elements) when
    /// autotuning meets a geometry without one. `plan_of` makes the op's plan on a profile;
    /// `buffers` are the op's inputs.
    pub(crate) fn tuned_profile(
        &self,
        key: TuneKey,
        plan_of: &dyn Fn(&DeviceProfile) -> Result<ConvPlan>,
        buffers: &Buffers<'_>,
        out_len: usize,
    ) -> Result<DeviceProfile> {
        let known = self.lock_entries().get(&key).cloned();
        if let Some(e) = known {
            return Ok(with_choice(&self.profile, e.choice()));
        }
        if !self.tuner.measure {
            return Ok(self.profile.clone());
        }
        // The candidates that plan differently, the context's own first.
        let own = self.profile.taps_dx;
        let mut choices: Vec<Choice> = vec![(self.profile.algorithm, None, own)];
        choices.extend(
            Tile::CANDIDATES
                .iter()
                .filter(|t| self.profile.fits(**t))
                .map(|&t| (Algorithm::Tiled, Some(t), own)),
        );
        choices.extend([
            (Algorithm::Tiled, None, own),
            (Algorithm::Tiled, None, !own),
            (Algorithm::Winograd, None, own),
            (Algorithm::Direct, None, own),
        ]);
        let mut plans: Vec<(Choice, ConvPlan)> = Vec::new();
        for choice in choices {
            let Ok(plan) = plan_of(&with_choice(&self.profile, choice)) else {
                continue;
            };
            if !plans.iter().any(|(_, p)| p.steps == plan.steps) {
                plans.push((choice, plan));
            }
        }
        let entry = |(algorithm, tile, taps_dx): Choice, ms| TunedEntry {
            key: key.clone(),
            algorithm,
            tile,
            taps_dx,
            ms,
        };
        let mut best: Option<TunedEntry> = None;
        if plans.len() == 1 {
            best = Some(entry(plans[0].0, None));
        } else {
            let out = self.alloc(&[out_len], "tuner scratch output")?;
            for (choice, plan) in &plans {
                let ms = self.time_plan(
                    plan,
                    &Buffers {
                        out: Some(&out),
                        ..*buffers
                    },
                )?;
                if best.as_ref().and_then(|b| b.ms).is_none_or(|b| ms < b) {
                    best = Some(entry(*choice, Some(ms)));
                }
            }
        }
        let best = best.ok_or_else(|| {
            Error::InvalidArgument(format!("tuner: no plan of {key:?} can be made"))
        })?;
        let profile = with_choice(&self.profile, best.choice());
        self.lock_entries().insert(key, best);
        Ok(profile)
    }

    /// The median time in ms of `SAMPLES` runs of `plan` after one untimed run: GPU time from
    /// timestamps where the adapter has them (and no [`Gpu::time_gpu`] of the caller's is
    /// running), else wall time to completion.
    fn time_plan(&self, plan: &ConvPlan, buffers: &Buffers<'_>) -> Result<f64> {
        let run = || self.run_conv(&mut Sink::Eager, "tuner", plan, *buffers);
        run()?;
        self.synchronize()?;
        let nested = self
            .profiler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        let mut times = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            let start = std::time::Instant::now();
            let ((), gpu_ms) = if nested {
                (run()?, None)
            } else {
                self.time_gpu(run)?
            };
            self.synchronize()?;
            times.push(gpu_ms.unwrap_or_else(|| start.elapsed().as_secs_f64() * 1e3));
        }
        times.sort_by(f64::total_cmp);
        Ok(times[SAMPLES / 2])
    }

    fn lock_entries(&self) -> std::sync::MutexGuard<'_, HashMap<TuneKey, TunedEntry>> {
        self.tuner.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tuner's choices so far (loaded and measured), in no particular order.
    pub fn tuning(&self) -> Vec<TunedEntry> {
        self.lock_entries().values().cloned().collect()
    }

    /// Writes the tuner's choices to `path` as JSON, for
    /// [`GpuBuilder::tuning_file`](super::GpuBuilder::tuning_file): a run that loads it makes
    /// the same plans, hence the same bits.
    ///
    /// ```no_run
    /// # fn main() -> wgconv::Result<()> {
    /// let gpu = wgconv::Gpu::builder().autotune(true).build()?;
    /// // ... run the layers once ...
    /// gpu.save_tuning("tuning.json")?;
    /// let again = wgconv::Gpu::builder().tuning_file("tuning.json").build()?;
    /// # Ok(()) }
    /// ```
    pub fn save_tuning(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut entries = self.tuning();
        entries.sort_by_key(|e| format!("{:?}", e.key));
        let file = TuningFile {
            version: 1,
            adapter: self.info.name.clone(),
            entries,
        };
        let text = serde_json::to_string_pretty(&file)
            .map_err(|e| Error::InvalidArgument(format!("tuning: {e}")))?;
        let path = path.as_ref();
        std::fs::write(path, text).map_err(|e| {
            Error::InvalidArgument(format!("writing tuning file {}: {e}", path.display()))
        })
    }
}

/// The op's plan under the tuner: the tuned profile's plan (see [`Gpu::tuned_profile`]).
pub(crate) fn tuned_plan(
    gpu: &Gpu,
    key: TuneKey,
    plan_of: &dyn Fn(&DeviceProfile) -> Result<ConvPlan>,
    buffers: &Buffers<'_>,
    out_len: usize,
) -> Result<ConvPlan> {
    if !gpu.tuner.active {
        return plan_of(&gpu.profile);
    }
    let profile = gpu.tuned_profile(key, plan_of, buffers, out_len)?;
    plan_of(&profile)
}
