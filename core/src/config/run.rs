//! `[run]`: name, seed, device and precision, where runs go.

use crate::device::Precision;
use serde::{Deserialize, Serialize};

fn default_name() -> String {
    "run".into()
}
fn default_seed() -> u64 {
    42
}
fn default_device() -> String {
    "cpu".into()
}
fn default_out_dir() -> String {
    "runs".into()
}
fn default_keep_last() -> u64 {
    2
}

/// Run-wide settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Name; the run directory is `<out_dir>/<name>/<timestamp>/`. Default `run`.
    #[serde(default = "default_name")]
    pub name: String,
    /// Seed of every random choice (init, data order, dropout). Default 42.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// `cpu`, `cuda` or `cuda:N` (a build with the `cuda` feature). Default `cpu`.
    #[serde(default = "default_device")]
    pub device: String,
    /// `fp32`, or `bf16`: bfloat16 matrix products with f32 master weights, optimizer
    /// state, norms, softmax and losses. Default `fp32`.
    #[serde(default)]
    pub precision: Precision,
    /// Parent directory of run directories. Default `runs`.
    #[serde(default = "default_out_dir")]
    pub out_dir: String,
    /// Write a resume checkpoint every this many optimizer steps in every stage that
    /// sets no `save_every` of its own. Default: none (resume checkpoints are written
    /// at evaluations and stage ends only).
    #[serde(default)]
    pub save_every: Option<u64>,
    /// How many `save_every` checkpoints to keep (the newest, across stages); an older
    /// one is deleted once a newer one is on disk. End-of-stage checkpoints and the
    /// one written at an evaluation are never counted nor deleted. Default 2.
    #[serde(default = "default_keep_last")]
    pub keep_last: u64,
    /// Also write the metrics as TensorBoard scalars to `<run_dir>/tensorboard/`
    /// (`train/loss`, `train/lr`, `train/grad_norm`, `train/tokens_per_s`,
    /// `eval/<set>/<metric>`, on one step axis across the stages). Default `false`.
    #[serde(default)]
    pub tensorboard: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            name: default_name(),
            seed: default_seed(),
            device: default_device(),
            precision: Precision::default(),
            out_dir: default_out_dir(),
            save_every: None,
            keep_last: default_keep_last(),
            tensorboard: false,
        }
    }
}
