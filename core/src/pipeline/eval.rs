//! Evaluating a model (with its adapters) on a data set with an objective: loss,
//! perplexity, the objective's metrics, and per-example loss quantiles.

use crate::config::StageConfig;
use crate::cpu_threads::ActiveWait;
use crate::data::{collate, Dataset};
use crate::error::{Context, Error, Result};
use crate::model::{Adapters, Model};
use crate::plugin::{HostState, ObjectiveInstance};
use crate::report::ExampleScores;
use crate::train::{forward_loss, Trainer};
use candle_core::{DType, Device};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

/// Metric name → value (`loss`, `perplexity`, `exact_match`, `loss_p90`, ...).
pub type Metrics = BTreeMap<String, f64>;

/// The `q`-quantile (0..=1) of sorted values, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Evaluates `data` in order, `batch_size` examples at a time, in evaluation mode.
pub fn evaluate(
    model: &dyn Model,
    adapters: &Adapters,
    objective: &mut ObjectiveInstance,
    state: &HostState,
    data: &Dataset,
    batch_size: usize,
    device: &Device,
) -> Result<Metrics> {
    evaluate_examples(model, adapters, objective, state, data, batch_size, device).map(|(m, _)| m)
}

/// [`evaluate`], with each example's loss and per-example metric scores.
pub fn evaluate_examples(
    model: &dyn Model,
    adapters: &Adapters,
    objective: &mut ObjectiveInstance,
    state: &HostState,
    data: &Dataset,
    batch_size: usize,
    device: &Device,
) -> Result<(Metrics, ExampleScores)> {
    state.set_training(false);
    let _wait = ActiveWait::start(device);
    let r = evaluate_inner(model, adapters, objective, state, data, batch_size, device);
    state.end_step();
    state.set_training(true);
    r
}

fn evaluate_inner(
    model: &dyn Model,
    adapters: &Adapters,
    objective: &mut ObjectiveInstance,
    state: &HostState,
    data: &Dataset,
    batch_size: usize,
    device: &Device,
) -> Result<(Metrics, ExampleScores)> {
    let mut per_example: Vec<f64> = Vec::with_capacity(data.len());
    let mut sums: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let mut examples = PerExampleMetrics::default();
    let mut weighted_loss = 0.0;
    for chunk in data.examples.chunks(batch_size.max(1)) {
        let refs: Vec<_> = chunk.iter().collect();
        let batch = collate(&refs, 0, device)?;
        let out = forward_loss(model, adapters, objective, &batch)?;
        weighted_loss += out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()? * chunk.len() as f64;
        if let Some(pe) = &out.per_example {
            per_example.extend(pe.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?);
        }
        for m in &out.metrics {
            let e = sums.entry(m.name.to_string()).or_default();
            e.0 += m.sum;
            e.1 += m.count;
        }
        examples.add_batch(&out.metrics, chunk.len());
        state.end_step();
    }
    let scores = ExampleScores {
        loss: match per_example.len() == data.len() {
            true => per_example.iter().map(|&l| l.is_finite().then_some(l)).collect(),
            false => Vec::new(),
        },
        metrics: examples.finish(),
    };
    let mut metrics = Metrics::new();
    let loss = weighted_loss / data.len().max(1) as f64;
    metrics.insert("loss".into(), loss);
    metrics.insert("perplexity".into(), loss.exp());
    for (name, (sum, count)) in sums {
        metrics.insert(name, if count > 0.0 { sum / count } else { f64::NAN });
    }
    if !per_example.is_empty() {
        per_example.sort_by(f64::total_cmp);
        for (name, q) in [("loss_p50", 0.5), ("loss_p90", 0.9), ("loss_p99", 0.99)] {
            metrics.insert(name.into(), quantile(&per_example, q));
        }
    }
    Ok((metrics, scores))
}

/// The metrics an objective gives per example ([`stagecraft_sdk::Metric::per_example`]:
/// one entry per row of every batch, each counting 0 or 1), gathered batch by batch.
#[derive(Default)]
struct PerExampleMetrics {
    scores: BTreeMap<String, Vec<Option<f64>>>,
    /// Rows so far.
    rows: usize,
    /// Metrics some batch gave otherwise (one sum over the batch, per token...).
    not_per_example: std::collections::BTreeSet<String>,
}

impl PerExampleMetrics {
    fn add_batch(&mut self, metrics: &[stagecraft_sdk::Metric], rows: usize) {
        let mut by_name: BTreeMap<&str, Vec<&stagecraft_sdk::Metric>> = BTreeMap::new();
        for m in metrics {
            by_name.entry(m.name.as_str()).or_default().push(m);
        }
        for (name, entries) in by_name {
            let per_row = entries.len() == rows && entries.iter().all(|m| m.count == 0.0 || m.count == 1.0);
            if !per_row || self.not_per_example.contains(name) {
                self.not_per_example.insert(name.to_string());
                continue;
            }
            let scores = self.scores.entry(name.to_string()).or_default();
            scores.extend(entries.iter().map(|m| (m.count == 1.0).then_some(m.sum)));
        }
        self.rows += rows;
    }

    /// Each metric given per example in every batch (one missing from a batch would
    /// no longer line up with the examples).
    fn finish(mut self) -> BTreeMap<String, Vec<Option<f64>>> {
        self.scores.retain(|name, scores| !self.not_per_example.contains(name) && scores.len() == self.rows);
        self.scores
    }
}

/// Every stage's eval set, and the objective that scores it once the stage has run.
pub(crate) struct EvalSets {
    names: Vec<String>,
    batch_sizes: Vec<usize>,
    data: Vec<Option<Arc<Dataset>>>,
    objectives: Vec<Option<ObjectiveInstance>>,
    state: Rc<HostState>,
}

impl EvalSets {
    /// The eval sets of `stages` (`data[k]` for stage `k`).
    pub fn new(stages: &[StageConfig], data: Vec<Option<Arc<Dataset>>>, state: Rc<HostState>) -> Self {
        EvalSets {
            names: stages.iter().map(|s| s.name.clone()).collect(),
            batch_sizes: stages.iter().map(|s| s.batch_size).collect(),
            objectives: data.iter().map(|_| None).collect(),
            data,
            state,
        }
    }

    /// The eval sets (`[k]` for stage `k`).
    pub fn data(&self) -> &[Option<Arc<Dataset>>] {
        &self.data
    }

    /// The objectives of the stages that ran (`[k]` for stage `k`).
    pub fn objectives(&self) -> &[Option<ObjectiveInstance>] {
        &self.objectives
    }

    /// The objectives of the stages that ran, to run them on other data (`[k]` for
    /// stage `k`).
    pub fn objectives_mut(&mut self) -> &mut [Option<ObjectiveInstance>] {
        &mut self.objectives
    }

    /// Keeps a finished stage's objective, to score its set later.
    pub fn keep_objective(&mut self, k: usize, objective: ObjectiveInstance) {
        self.objectives[k] = Some(objective);
    }

    /// Scores stage `k`'s eval set on the trainer's model while stage `running` trains
    /// (its own set with the trainer's objective); `None` for a stage without one.
    pub fn evaluate(
        &mut self,
        k: usize,
        running: usize,
        trainer: &mut Trainer,
    ) -> Result<Option<(Metrics, ExampleScores)>> {
        let Some(data) = self.data[k].clone() else { return Ok(None) };
        let (set, by) = (&self.names[k], &self.names[running]);
        let objective = match k == running {
            true => &mut trainer.objective,
            false => self.objectives[k].as_mut().ok_or_else(|| Error::msg(format!("stage `{set}` has not run yet")))?,
        };
        let device = self.state.device.clone();
        let batch_size = self.batch_sizes[k];
        evaluate_examples(trainer.model.as_ref(), &trainer.adapters, objective, &self.state, &data, batch_size, &device)
            .map(Some)
            .with_context(|| match k == running {
                true => format!("stage `{by}`: evaluating its eval set"),
                false => format!("stage `{by}`: evaluating the eval set of stage `{set}`"),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 5.0);
        assert_eq!(quantile(&v, 0.9), 9.0);
        assert_eq!(quantile(&v, 0.99), 10.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
