//! Text generation: greedy or temperature / top-p sampling from a decoder, with the
//! host's seeded RNG (the same seed gives the same text).
//!
//! Each new token runs the model on the whole sequence (no KV cache): generation here
//! serves checks and demos of small models, not serving.

use crate::bail;
use crate::error::{Error, Result};
use crate::model::{check_sequence, Adapters, Model};
use crate::rng::Rng;
use candle_core::{DType, Device, Tensor};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 = greedy; otherwise logits are divided by it before the softmax.
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches
    /// `top_p` (1 = keep all).
    pub top_p: f64,
    /// Seed of the sampler.
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling { temperature: 0.0, top_p: 1.0, seed: 0 }
    }
}

impl Sampling {
    /// Refuses settings that sample nothing meaningful: a temperature that is not a
    /// finite number >= 0, a `top_p` outside (0, 1] (NaN included).
    pub fn check(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            bail!("temperature must be a finite number >= 0 (0: greedy), got {}", self.temperature);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("top_p must be in (0, 1], got {}", self.top_p);
        }
        Ok(())
    }
}

/// Picks a token id from one row of logits.
pub fn sample(logits: &[f32], s: &Sampling, rng: &mut Rng) -> usize {
    let argmax =
        || logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0;
    if s.temperature <= 0.0 {
        return argmax();
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(usize, f64)> =
        logits.iter().enumerate().map(|(i, &v)| (i, ((v as f64 - max) / s.temperature).exp())).collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0.0;
    let mut cut = probs.len();
    for (k, p) in probs.iter().enumerate() {
        kept += p.1;
        if kept >= s.top_p {
            cut = k + 1;
            break;
        }
    }
    let probs = &probs[..cut];
    let mass: f64 = probs.iter().map(|p| p.1).sum();
    let mut u = rng.uniform() * mass;
    for p in probs {
        u -= p.1;
        if u <= 0.0 {
            return p.0;
        }
    }
    probs.last().map_or_else(argmax, |p| p.0)
}

/// Extends `prompt` by up to `max_tokens` tokens, stopping after `eos`.
pub fn generate(
    model: &dyn Model,
    adapters: &Adapters,
    prompt: &[u32],
    max_tokens: usize,
    sampling: &Sampling,
    eos: Option<u32>,
    device: &Device,
) -> Result<Vec<u32>> {
    let request = Request { prompt, max_tokens, sampling: *sampling, eos };
    generate_streaming(model, adapters, &request, device, |_| Ok(()))
}

/// What to generate: a continuation of `prompt` of up to `max_tokens` tokens, chosen by
/// `sampling`, ending after `eos`.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The token ids to continue.
    pub prompt: &'a [u32],
    /// Most tokens to add.
    pub max_tokens: usize,
    /// How each token is chosen.
    pub sampling: Sampling,
    /// The token that ends the text (it is kept), if any.
    pub eos: Option<u32>,
}

impl Request<'_> {
    /// Refuses, before anything runs, what `model` cannot do on `device`: an empty prompt
    /// or settings that mean nothing, an encoder, prompt ids outside the vocabulary, a
    /// prompt plus `max_tokens` beyond the context length, or a longest forward pass
    /// beyond the memory available.
    pub fn check(&self, model: &dyn Model, device: &Device) -> Result<()> {
        if self.prompt.is_empty() {
            return Err(Error::msg("the prompt is empty"));
        }
        self.sampling.check()?;
        if !model.info().causal {
            bail!("cannot generate with `{}`: it is an encoder", model.info().arch);
        }
        let vocab = model.info().vocab;
        if let Some(&bad) = self.prompt.iter().find(|&&t| t as usize >= vocab) {
            bail!("prompt token {bad} is outside the model's vocabulary of {vocab}");
        }
        let prompt = self.prompt.len();
        let longest = prompt.saturating_add(self.max_tokens);
        if let Some(ctx) = model.context_length().filter(|&ctx| longest > ctx) {
            if prompt >= ctx {
                bail!(
                    "the prompt is {prompt} tokens: the model's context length of {ctx} leaves no room for new tokens"
                );
            }
            bail!(
                "{prompt} prompt tokens + {} new tokens are more than the model's context length of {ctx} \
                 (at most {} new tokens fit)",
                self.max_tokens,
                ctx - prompt
            );
        }
        check_sequence(model, 1, longest, device)
    }
}

/// [`generate`], handing each new token to `on_token` as soon as it is chosen (to show
/// it while the rest is generated); an error from `on_token` stops generation. The
/// request is checked first ([`Request::check`]).
pub fn generate_streaming(
    model: &dyn Model,
    adapters: &Adapters,
    request: &Request,
    device: &Device,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    request.check(model, device)?;
    let mut rng = Rng::new(request.sampling.seed);
    let mut ids = request.prompt.to_vec();
    for _ in 0..request.max_tokens {
        let input = Tensor::new(ids.as_slice(), device)?.unsqueeze(0)?;
        let out = model.forward(&input, None, adapters)?;
        let logits = out.logits.ok_or_else(|| Error::msg("model returned no logits"))?;
        let last = logits.narrow(1, ids.len() - 1, 1)?.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let next = sample(&last, &request.sampling, &mut rng) as u32;
        ids.push(next);
        on_token(next)?;
        if Some(next) == request.eos {
            break;
        }
    }
    Ok(ids.split_off(request.prompt.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_settings_that_mean_nothing_are_refused() {
        for (temperature, top_p, why) in
            [(f64::NAN, 1.0, "temperature"), (-0.5, 1.0, "temperature"), (1.0, f64::NAN, "top_p"), (1.0, 0.0, "top_p")]
        {
            let err = Sampling { temperature, top_p, seed: 0 }.check().expect_err("refused").to_string();
            assert!(err.starts_with(why), "{temperature} {top_p}: {err}");
        }
        assert!(Sampling { temperature: 0.7, top_p: 0.9, seed: 1 }.check().is_ok());
    }

    #[test]
    fn greedy_takes_the_argmax_and_top_p_keeps_the_nucleus() {
        let logits = [0.0f32, 5.0, 1.0, 4.9];
        let mut rng = Rng::new(1);
        assert_eq!(sample(&logits, &Sampling::default(), &mut rng), 1);
        // With a tiny top_p only the most likely token survives.
        let s = Sampling { temperature: 1.0, top_p: 0.01, seed: 0 };
        assert!((0..50).all(|_| sample(&logits, &s, &mut rng) == 1));
        // With temperature and top_p 1, the two likely tokens both appear.
        let s = Sampling { temperature: 1.0, top_p: 1.0, seed: 0 };
        let picks: Vec<usize> = (0..200).map(|_| sample(&logits, &s, &mut rng)).collect();
        assert!(picks.contains(&1) && picks.contains(&3));
    }
}
