//! A model's view of a data set for the hidden-state drift test: each example's last
//! hidden states `[s, h]`, averaged over its real tokens (padding left out), one
//! vector of `h` floats per example.
//!
//! Examples run in batches of `batch_size` rows, padded to the batch's longest; a
//! causal model's states at real tokens do not see the padding after them, an
//! encoder's attention mask keeps them from it. [`sample`] picks the examples of a
//! large data set to embed.
//!
//! ```
//! use stagecraft_core::data::Example;
//! use stagecraft_core::drift::embed::sample;
//! use stagecraft_core::rng::Rng;
//! let ex: Vec<Example> = (1..=10).map(|i| Example::from_ids(vec![i])).collect();
//! assert_eq!(sample(&ex, 20, &mut Rng::new(0)).len(), 10);
//! let some = sample(&ex, 3, &mut Rng::new(0));
//! assert_eq!(some.len(), 3);
//! assert_eq!(some, sample(&ex, 3, &mut Rng::new(0)));
//! ```

use super::permutation::shuffle;
use crate::data::{collate, Example};
use crate::error::Result;
use crate::model::{check_sequence, Adapters, Model, Outputs};
use crate::rng::Rng;
use candle_core::{DType, Device};

/// At most `cap` of `examples`: all of them in order when there are no more, else a
/// seeded sample without replacement (in the sample's order).
pub fn sample<'a>(examples: &'a [Example], cap: usize, rng: &mut Rng) -> Vec<&'a Example> {
    if examples.len() <= cap {
        return examples.iter().collect();
    }
    let mut order: Vec<usize> = (0..examples.len()).collect();
    shuffle(&mut order, rng);
    order[..cap].iter().map(|&i| &examples[i]).collect()
}

/// Each example's last hidden states, mean-pooled over its tokens (f32).
pub fn pooled_hidden(
    model: &dyn Model,
    adapters: &Adapters,
    examples: &[&Example],
    batch_size: usize,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    let mut pooled = Vec::with_capacity(examples.len());
    for rows in examples.chunks(batch_size.max(1)) {
        let seq = rows.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        check_sequence(model, rows.len(), seq, device)?;
        let batch = collate(rows, 0, device)?;
        let out = model.forward_outputs(
            &batch.input_ids,
            batch.attention_mask.as_ref(),
            adapters,
            Outputs { logits: false },
        )?;
        let hidden = out.hidden.to_dtype(DType::F32)?.to_vec3::<f32>()?;
        for (ex, states) in rows.iter().zip(hidden) {
            pooled.push(mean(&states[..ex.ids.len()]));
        }
    }
    Ok(pooled)
}

/// The mean of equal-length vectors (at least one).
fn mean(rows: &[Vec<f32>]) -> Vec<f32> {
    let mut sum = vec![0.0f64; rows.first().map_or(0, Vec::len)];
    for r in rows {
        for (s, x) in sum.iter_mut().zip(r) {
            *s += *x as f64;
        }
    }
    sum.iter().map(|s| (s / rows.len() as f64) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_averages_rows() {
        assert_eq!(mean(&[vec![1.0, 2.0], vec![3.0, 6.0]]), vec![2.0, 4.0]);
    }
}
