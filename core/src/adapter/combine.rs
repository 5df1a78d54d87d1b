//! Several LoRA adapters combined into one.
//!
//! At each site, adapter `i` adds `wᵢ·sᵢ·Bᵢ·Aᵢ` (weight `wᵢ`, scaling `sᵢ`). Their sum is
//! itself a low-rank product: `[w₁s₁B₁ … wₙsₙBₙ] · [A₁; …; Aₙ]`.
//! - [`Combine::Cat`] keeps that product as it is: rank `Σ rᵢ`, exactly the weighted
//!   sum (PEFT's `cat` combination).
//! - [`Combine::Svd`] truncates it to rank `k` by SVD, the best rank-`k` approximation
//!   of the sum: with `B = Q_B R_B`, `Aᵀ = Q_A R_A` (thin QR) and
//!   `R_B R_Aᵀ = U Σ Vᵀ`, the new factors are `B' = Q_B U_k √Σ_k`,
//!   `A' = √Σ_k V_kᵀ Q_Aᵀ`, never forming the dense `[out, in]` sum.
//!
//! The result is a new `lora` instance (scaling 1: the factors carry it) with one exact
//! target per site and per-site ranks where they differ.

use super::linalg::{qr, svd, Mat};
use crate::bail;
use crate::error::{Error, Result};
use crate::model::{Adapters, Model};
use crate::plugin::{HostState, MethodInstance, Registry};
use candle_core::{Device, Tensor};
use serde_json::{json, Map, Value};
use stagecraft_sdk::target_matches;
use std::collections::BTreeMap;
use std::rc::Rc;

/// How adapters are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    /// The exact weighted sum, rank `Σ rᵢ`.
    Cat,
    /// The weighted sum truncated to this rank by SVD.
    Svd {
        /// The combined adapter's rank.
        rank: usize,
    },
}

/// One LoRA adapter to combine: the instance, its plugin config, its weight.
pub struct LoraInput<'a> {
    /// The attached `lora` instance.
    pub method: &'a MethodInstance,
    /// Its config (as the plugin got it).
    pub config: &'a Value,
    /// Its weight in the sum.
    pub weight: f64,
}

impl<'a> LoraInput<'a> {
    /// The inputs for every adapter attached to `adapters`, with `configs` and `weights`
    /// in the same order.
    pub fn all(adapters: &'a crate::model::Adapters, configs: &'a [Value], weights: &[f64]) -> Vec<LoraInput<'a>> {
        let each = adapters.methods().iter().zip(configs).zip(weights);
        each.map(|((method, config), &weight)| LoraInput { method, config, weight }).collect()
    }
}

/// The combined adapter: a new `lora` instance, attached, with its config.
pub struct CombinedLora {
    /// The instance (attached to a scratch adapter set of the model).
    pub method: MethodInstance,
    /// Its plugin config.
    pub config: Value,
}

/// `alpha / r` (or `/ √r`) of a site of a `lora` config, for rank `r`.
fn site_scaling(config: &Value, model: &dyn Model, site: usize, r: usize) -> f64 {
    let info = &model.sites().infos()[site];
    let role = model.sites().roles()[site];
    let alpha = config.get("alpha").and_then(Value::as_f64).unwrap_or(16.0);
    let alpha = config
        .get("alpha_pattern")
        .and_then(Value::as_object)
        .and_then(|m| m.iter().find(|(p, _)| target_matches(p, info, role)).and_then(|(_, v)| v.as_f64()))
        .unwrap_or(alpha);
    let rslora = config.get("use_rslora").and_then(Value::as_bool).unwrap_or(false);
    if rslora {
        alpha / (r as f64).sqrt()
    } else {
        alpha / r as f64
    }
}

fn to_mat(t: &Tensor) -> Result<Mat> {
    let (rows, cols) = t.dims2()?;
    Ok(Mat { rows, cols, data: t.to_dtype(candle_core::DType::F64)?.flatten_all()?.to_vec1::<f64>()? })
}

fn to_tensor(m: &Mat, device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(m.data.iter().map(|&x| x as f32).collect::<Vec<f32>>(), (m.rows, m.cols), device)?)
}

/// `(B, A)` of one site combined: `B` `[out, k]`, `A` `[k, in]`.
fn combine_site(bs: &[Mat], as_: &[Mat], how: Combine) -> (Mat, Mat) {
    let total: usize = as_.iter().map(|a| a.rows).sum();
    let (out, inp) = (bs[0].rows, as_[0].cols);
    let (mut b, mut a) = (Mat::zeros(out, total), Mat::zeros(total, inp));
    let mut at = 0;
    for (bi, ai) in bs.iter().zip(as_) {
        for r in 0..ai.rows {
            for i in 0..out {
                b.set(i, at + r, bi.at(i, r));
            }
            for c in 0..inp {
                a.set(at + r, c, ai.at(r, c));
            }
        }
        at += ai.rows;
    }
    let Combine::Svd { rank } = how else { return (b, a) };
    let (qb, rb) = qr(&b);
    let (qa, ra) = qr(&a.t());
    let (u, s, v) = svd(&rb.matmul(&ra.t()));
    // Keep `rank` directions (zero-padded when the sum has fewer), each factor taking √σ.
    let (mut uk, mut vk) = (u.first_cols(rank), v.first_cols(rank));
    for (j, sigma) in s.iter().enumerate().take(rank) {
        let root = sigma.sqrt();
        (0..uk.rows).for_each(|i| uk.set(i, j, uk.at(i, j) * root));
        (0..vk.rows).for_each(|i| vk.set(i, j, vk.at(i, j) * root));
    }
    (qb.matmul(&uk), qa.matmul(&vk).t())
}

/// Combines `inputs` (every one a plain `lora` adapter, no DoRA) into one `lora`
/// instance, created with `registry` on `state` and attached to `model`'s sites.
pub fn combine_lora(
    inputs: &[LoraInput<'_>],
    how: Combine,
    registry: &Registry,
    state: &Rc<HostState>,
    model: &dyn Model,
) -> Result<CombinedLora> {
    if let Combine::Svd { rank: 0 } = how {
        return Err(Error::msg("the combined rank must be > 0"));
    }
    // site → (B·s·w, A) of every input at that site, in input order.
    let mut per_site: BTreeMap<usize, (Vec<Mat>, Vec<Mat>)> = BTreeMap::new();
    for (n, input) in inputs.iter().enumerate() {
        let m = input.method;
        if m.core.plugin != "lora" {
            bail!("adapter {} is `{}`: only LoRA adapters combine", n + 1, m.core.plugin);
        }
        if input.config.get("use_dora").and_then(Value::as_bool).unwrap_or(false) {
            return Err(Error::msg(format!(
                "adapter {} is DoRA: its magnitudes do not add up, so it cannot be combined",
                n + 1
            )));
        }
        let params: BTreeMap<String, Tensor> =
            m.params().into_iter().map(|p| (p.name, p.var.as_tensor().clone())).collect();
        for att in m.attachments() {
            let site = att.site as usize;
            let name = &model.sites().infos()[site].name;
            let get = |k: &str| {
                params
                    .get(&format!("{name}.{k}"))
                    .ok_or_else(|| Error::msg(format!("adapter {} has no `{name}.{k}`", n + 1)))
            };
            let a = to_mat(get("lora_A.weight")?)?;
            let mut b = to_mat(get("lora_B.weight")?)?;
            let factor = input.weight * site_scaling(input.config, model, site, a.rows);
            b.data.iter_mut().for_each(|x| *x *= factor);
            let entry = per_site.entry(site).or_default();
            entry.0.push(b);
            entry.1.push(a);
        }
    }
    let infos = model.sites().infos();
    let combined: BTreeMap<usize, (Mat, Mat)> =
        per_site.iter().map(|(&site, (bs, as_))| (site, combine_site(bs, as_, how))).collect();
    let ranks: BTreeMap<usize, usize> = combined.iter().map(|(&s, (_, a))| (s, a.rows)).collect();
    let r = ranks.values().copied().max().ok_or_else(|| Error::msg("the adapters attach to no site"))?;
    let mut pattern = Map::new();
    for (&s, &rs) in ranks.iter().filter(|(_, &rs)| rs != r) {
        pattern.insert(infos[s].name.to_string(), json!(rs));
    }
    let targets: Vec<String> = combined.keys().map(|&s| infos[s].name.to_string()).collect();
    let config =
        json!({ "targets": targets, "r": r, "alpha": r as f64, "rank_pattern": pattern, "alpha_pattern": pattern });
    let mut scratch = Adapters::none(model.sites().len());
    let k = scratch.attach(registry.new_method("lora", &config.to_string(), state)?, model.sites())?;
    let params: BTreeMap<String, candle_core::Var> =
        scratch.methods()[k].params().into_iter().map(|p| (p.name, p.var)).collect();
    for (&s, (b, a)) in &combined {
        let name = &infos[s].name;
        for (suffix, m) in [("lora_A.weight", a), ("lora_B.weight", b)] {
            let var = params
                .get(&format!("{name}.{suffix}"))
                .ok_or_else(|| Error::msg(format!("combined lora has no `{name}.{suffix}`")))?;
            var.set(&to_tensor(m, &state.device)?)?;
        }
    }
    let method = scratch.take().into_iter().next().ok_or_else(|| Error::msg("combined adapter missing"))?;
    Ok(CombinedLora { method, config })
}
