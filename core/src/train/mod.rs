//! Training: batches, and the step that ties a model, its adapters, an objective
//! and an optimizer together.

mod batch;
mod params;
mod regularize;
mod schedule;
mod teacher;
mod trainer;

pub use batch::Batch;
pub use params::{decays, layer_of, lr_multiplier, module_matches};
pub use regularize::{FisherSource, Regularizer};
pub use schedule::lr_at;
pub use teacher::{Teacher, TEACHER_LOGITS};
pub(crate) use trainer::no_teacher;
pub use trainer::{forward_loss, LossSplit, StepOutput, StepTimes, Trainer};
