//! Training: batches, and the step that ties a model, its adapters, a stage objective
//! and an optimizer together.

mod batch;
mod trainer;

pub use batch::Batch;
pub use trainer::{StepOutput, Trainer};
