//! Which base weights train in a stage, at each step: every weight but those its
//! `train.freeze` patterns name (all of them when the stage trains adapters and names
//! no patterns), plus those `train.unfreeze` rules have released by then. One function
//! decides it ([`apply`]), at the stage's start, on resume and whenever a rule fires.

use crate::config::StageConfig;
use crate::error::Result;
use crate::model::{Adapters, Model};
use crate::train::{decays, lr_multiplier, module_matches, Trainer};

/// Sets every base weight's trainable flag for stage `s` after `done` of its steps, and
/// collects the trainer's parameters again with their LR and decay multipliers.
pub(crate) fn apply(trainer: &mut Trainer, s: &StageConfig, done: u64) -> Result<()> {
    set_flags(trainer.model.as_ref(), &trainer.adapters, s, done);
    refresh(trainer, s)
}

/// Sets every base weight's trainable flag for stage `s` after `done` of its steps
/// (before a trainer exists: the optimizer then only ever sees what trains).
pub(crate) fn set_flags(model: &dyn Model, adapters: &Adapters, s: &StageConfig, done: u64) {
    let adapters_train = (0..adapters.methods().len()).any(|k| !adapters.is_frozen(k));
    for (name, w) in model.weights() {
        w.set_trainable(base_weight_trains(s, &name, adapters_train, done));
    }
}

/// Whether base weight `name` trains in stage `s` after `done` of its steps, when some
/// adapter trains in it (`adapters_train`) or none does.
pub(crate) fn base_weight_trains(s: &StageConfig, name: &str, adapters_train: bool, done: u64) -> bool {
    let frozen = match s.train.freeze.is_empty() {
        true => adapters_train,
        false => s.train.freeze.iter().any(|p| module_matches(p, name)),
    };
    let released =
        s.train.unfreeze.iter().any(|u| u.at_step <= done && u.modules.iter().any(|p| module_matches(p, name)));
    !frozen || released
}

/// Collects the trainer's parameters again (the optimizer creates state for new ones),
/// with their layer-wise LR multipliers and weight-decay exemptions (1-D tensors).
pub(crate) fn refresh(trainer: &mut Trainer, s: &StageConfig) -> Result<()> {
    trainer.refresh_params()?;
    let layers = trainer.model.info().num_layers;
    for p in trainer.params.iter_mut() {
        p.lr_mul = lr_multiplier(&p.name, layers, s.train.layer_lr_decay);
        p.decay_mul = if decays(p.var.dims()) { 1.0 } else { 0.0 };
    }
    Ok(())
}

/// Whether an `unfreeze` rule releases weights after `done` steps (so that [`apply`]
/// must run before the next one).
pub(crate) fn releases_after(s: &StageConfig, done: u64) -> bool {
    s.train.unfreeze.iter().any(|u| u.at_step == done && done > 0)
}
