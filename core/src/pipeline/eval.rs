//! Evaluating a model (with its adapters) on a data set with an objective: loss,
//! perplexity, the objective's metrics, and per-example loss quantiles.

use crate::data::{collate, Dataset};
use crate::error::Result;
use crate::model::{Adapters, Model};
use crate::plugin::{HostState, StageInstance};
use crate::train::forward_loss;
use candle_core::{DType, Device};
use std::collections::BTreeMap;

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
    objective: &mut StageInstance,
    state: &HostState,
    data: &Dataset,
    batch_size: usize,
    device: &Device,
) -> Result<Metrics> {
    state.set_training(false);
    let r = evaluate_inner(model, adapters, objective, state, data, batch_size, device);
    state.end_step();
    state.set_training(true);
    r
}

fn evaluate_inner(
    model: &dyn Model,
    adapters: &Adapters,
    objective: &mut StageInstance,
    state: &HostState,
    data: &Dataset,
    batch_size: usize,
    device: &Device,
) -> Result<Metrics> {
    let mut per_example: Vec<f64> = Vec::with_capacity(data.len());
    let mut sums: BTreeMap<String, (f64, f64)> = BTreeMap::new();
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
        state.end_step();
    }
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
    Ok(metrics)
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
