//! Lion (Chen et al., 2023, <https://arxiv.org/abs/2302.06675>), step for step as
//! the reference `lion-pytorch`.
//!
//! For each parameter `p` with gradient `g`, with the slot's learning rate `lr` and
//! decay multiplier `d`:
//! ```text
//! u = sign(β1·m + (1-β1)·g)
//! p = p·(1 - lr·wd·d) - lr·u
//! m = β2·m + (1-β2)·g
//! ```
//! State: `exp_avg.<param>` (`m`).
//!
//! ```
//! use stagecraft_optimizers::Lion;
//! use stagecraft_sdk::Plugin;
//! assert_eq!(Lion::NAME, "lion");
//! ```

use crate::config::LionConfig;
use crate::state::{release_all, zeros_buffer, StateMap};
use stagecraft_sdk::prelude::*;

/// The Lion optimizer: sign of an interpolated momentum.
pub struct Lion {
    cfg: LionConfig,
    /// `exp_avg` per parameter.
    state: StateMap<TensorHandle>,
}

impl Plugin for Lion {
    const NAME: &'static str = "lion";
    const DESCRIPTION: &'static str = "evolved sign momentum (lion), as lion-pytorch";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Config = LionConfig;

    fn new(cfg: LionConfig, _host: Host<'_>) -> Result<Self> {
        cfg.validate()?;
        Ok(Lion { cfg, state: StateMap::new(Self::NAME) })
    }
}

impl Optimizer for Lion {
    fn init(&mut self, host: Host<'_>, params: &[ParamSlot]) -> Result<()> {
        self.state.init(host, params, |name, shape| zeros_buffer(host, "exp_avg", name, shape))
    }

    fn step(&mut self, host: Host<'_>, params: &[ParamSlot], _step: u64) -> Result<()> {
        let [beta1, beta2] = self.cfg.betas;
        for slot in params.iter().filter(|s| !s.grad.is_none()) {
            let m = host.tensor(*self.state.get(slot)?);
            let (p, g) = (host.tensor(slot.param), host.tensor(slot.grad));
            let lr = slot.lr;

            let decayed = p.affine(1.0 - lr * self.cfg.weight_decay * slot.decay_mul, 0.0)?;
            let m_b1 = m.affine(beta1, 0.0)?;
            let g_b1 = g.affine(1.0 - beta1, 0.0)?;
            let interp = m_b1.add(&g_b1)?;
            let sign = interp.sign()?;
            let update = sign.affine(lr, 0.0)?;
            let next_p = decayed.sub(&update)?;
            let m_b2 = m.affine(beta2, 0.0)?;
            let g_b2 = g.affine(1.0 - beta2, 0.0)?;
            let next_m = m_b2.add(&g_b2)?;

            host.assign(&p, &next_p)?;
            host.assign(&m, &next_m)?;
            release_all(vec![decayed, m_b1, g_b1, interp, sign, update, next_p, m_b2, g_b2, next_m]);
        }
        Ok(())
    }
}
