//! AdamW (Loshchilov & Hutter, 2019, <https://arxiv.org/abs/1711.05101>), step for
//! step as `torch.optim.AdamW` and `candle_nn::AdamW`.
//!
//! For each parameter `p` with gradient `g`, at step `t` (from 1), with the slot's
//! learning rate `lr` and decay multiplier `d`:
//! ```text
//! m  = β1·m + (1-β1)·g
//! v  = β2·v + (1-β2)·g²
//! m̂  = m · 1/(1-β1^t)
//! v̂  = v · 1/(1-β2^t)
//! p  = p·(1 - lr·wd·d) - lr · m̂/(√v̂ + eps)
//! ```
//! On a host built against SDK 1.2 or later, each parameter's update is one host op,
//! [`Host::adamw_step`], which the host runs in place (for f32 on the CPU, one pass
//! over memory with no temporaries). On an older host the same update is written with
//! element-wise host ops ([`update_op_by_op`]). Both run candle-nn 0.11's operations in
//! its order (each scalar product is one `affine`) and give the same bits, so updates
//! match `candle_nn::AdamW` to rounding. State: `exp_avg.<param>` (`m`) and
//! `exp_avg_sq.<param>` (`v`), PyTorch's names.
//!
//! ```
//! use stagecraft_optimizers::AdamW;
//! use stagecraft_sdk::Plugin;
//! assert_eq!(AdamW::NAME, "adamw");
//! ```

use crate::config::AdamWConfig;
use crate::state::{release_all, zeros_buffer, StateMap};
use stagecraft_sdk::prelude::*;
use stagecraft_sdk::SdkVersion;

/// First and second moment buffers of one parameter.
struct Moments {
    exp_avg: TensorHandle,
    exp_avg_sq: TensorHandle,
}

/// The AdamW optimizer.
pub struct AdamW {
    cfg: AdamWConfig,
    state: StateMap<Moments>,
}

impl Plugin for AdamW {
    const NAME: &'static str = "adamw";
    const DESCRIPTION: &'static str = "adam with decoupled weight decay, as torch.optim.AdamW";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Config = AdamWConfig;

    fn new(cfg: AdamWConfig, _host: Host<'_>) -> Result<Self> {
        cfg.validate()?;
        Ok(AdamW { cfg, state: StateMap::new(Self::NAME) })
    }
}

impl Optimizer for AdamW {
    fn init(&mut self, host: Host<'_>, params: &[ParamSlot]) -> Result<()> {
        self.state.init(host, params, |name, shape| {
            Ok(Moments {
                exp_avg: zeros_buffer(host, "exp_avg", name, shape)?,
                exp_avg_sq: zeros_buffer(host, "exp_avg_sq", name, shape)?,
            })
        })
    }

    fn step(&mut self, host: Host<'_>, params: &[ParamSlot], step: u64) -> Result<()> {
        if step == 0 {
            bail!("adamw: step counts from 1, got 0");
        }
        let fused = host.sdk_version() >= SdkVersion::new(1, 2, 0);
        let [beta1, beta2] = self.cfg.betas;
        for slot in params.iter().filter(|s| !s.grad.is_none()) {
            let state = self.state.get(slot)?;
            let (p, g) = (host.tensor(slot.param), host.tensor(slot.grad));
            let (m, v) = (host.tensor(state.exp_avg), host.tensor(state.exp_avg_sq));
            let hp = AdamWStep {
                lr: slot.lr,
                beta1,
                beta2,
                eps: self.cfg.eps,
                weight_decay: self.cfg.weight_decay * slot.decay_mul,
                step,
            };
            if fused {
                host.adamw_step(&p, &g, &m, &v, hp)?;
            } else {
                update_op_by_op(&p, &g, &m, &v, hp)?;
            }
        }
        Ok(())
    }
}

/// One AdamW update of parameter `p` with gradient `g` and moments `m`, `v`, written
/// with element-wise host ops and `assign`: what runs on hosts older than SDK 1.2, which
/// lack [`Host::adamw_step`], and the reference that op matches to the bit. Each
/// intermediate is a full-size temporary, released once the parameter is assigned.
pub fn update_op_by_op(p: &Tensor<'_>, g: &Tensor<'_>, m: &Tensor<'_>, v: &Tensor<'_>, hp: AdamWStep) -> Result<()> {
    let host = p.host();
    let (scale_m, scale_v) = hp.bias_corrections();
    let (beta1, beta2, lr) = (hp.beta1, hp.beta2, hp.lr);

    let m_b1 = m.affine(beta1, 0.0)?;
    let g_b1 = g.affine(1.0 - beta1, 0.0)?;
    let next_m = m_b1.add(&g_b1)?;
    let v_b2 = v.affine(beta2, 0.0)?;
    let g_sq = g.sqr()?;
    let g_sq_b2 = g_sq.affine(1.0 - beta2, 0.0)?;
    let next_v = v_b2.add(&g_sq_b2)?;
    let m_hat = next_m.affine(scale_m, 0.0)?;
    let v_hat = next_v.affine(scale_v, 0.0)?;
    let decayed = p.affine(1.0 - lr * hp.weight_decay, 0.0)?;
    let root = v_hat.sqrt()?;
    let denom = root.affine(1.0, hp.eps)?;
    let adjusted = m_hat.div(&denom)?;
    let update = adjusted.affine(lr, 0.0)?;
    let next_p = decayed.sub(&update)?;

    host.assign(m, &next_m)?;
    host.assign(v, &next_v)?;
    host.assign(p, &next_p)?;
    release_all(vec![
        m_b1, g_b1, next_m, v_b2, g_sq, g_sq_b2, next_v, m_hat, v_hat, decayed, root, denom, adjusted, update, next_p,
    ]);
    Ok(())
}
