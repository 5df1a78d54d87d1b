//! SGD with momentum, step for step as `torch.optim.SGD`.
//!
//! For each parameter `p` with gradient `g`, with the slot's learning rate `lr` and
//! decay multiplier `d`:
//! ```text
//! g'  = g + wd·d·p                          (if weight_decay > 0)
//! buf = g'                                  (the parameter's first update)
//! buf = momentum·buf + (1-dampening)·g'     (later updates)
//! g'' = g' + momentum·buf  if nesterov, else buf
//! p   = p - lr·g''
//! ```
//! With `momentum = 0` there is no buffer and `g'' = g'`. State: `momentum_buffer.<param>`
//! (PyTorch's name), plus `momentum_started.<param>` (`[1]`, 0 until the first update)
//! when dampening is non-zero, so "first update" survives a resume.
//!
//! ```
//! use stagecraft_optimizers::SgdMomentum;
//! use stagecraft_sdk::Plugin;
//! assert_eq!(SgdMomentum::NAME, "sgd");
//! ```

use crate::config::SgdConfig;
use crate::state::{release_all, zeros_buffer, StateMap};
use stagecraft_sdk::prelude::*;

/// The momentum state of one parameter.
struct Momentum {
    buf: TensorHandle,
    /// 0 before the first update, 1 after; only kept when dampening is non-zero (with
    /// dampening 0, `momentum·0 + g'` already equals the first update's `g'`).
    started: Option<TensorHandle>,
}

/// SGD with (optionally Nesterov) momentum and coupled weight decay.
pub struct SgdMomentum {
    cfg: SgdConfig,
    state: StateMap<Momentum>,
}

impl Plugin for SgdMomentum {
    const NAME: &'static str = "sgd";
    const DESCRIPTION: &'static str = "stochastic gradient descent with momentum, as torch.optim.SGD";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Config = SgdConfig;

    fn new(cfg: SgdConfig, _host: Host<'_>) -> Result<Self> {
        cfg.validate()?;
        Ok(SgdMomentum { cfg, state: StateMap::new(Self::NAME) })
    }
}

impl SgdMomentum {
    /// The new momentum buffer from the old one and the decayed gradient `d_p`, plus
    /// the temporaries made on the way.
    fn next_buf<'h>(
        &self,
        host: Host<'h>,
        state: &Momentum,
        d_p: Tensor<'h>,
        temps: &mut Vec<Tensor<'h>>,
    ) -> Result<Tensor<'h>> {
        let buf = host.tensor(state.buf);
        let kept = buf.affine(self.cfg.momentum, 0.0)?;
        temps.push(kept);
        let fresh = match state.started {
            None => d_p,
            Some(started) => {
                // (1 - dampening·started): 1 at the first update (buf is still zero, so
                // the buffer becomes d_p exactly), 1 - dampening afterwards.
                let started = host.tensor(started);
                let coef = started.affine(-self.cfg.dampening, 1.0)?;
                let fresh = d_p.mul(&coef)?;
                let now_started = started.affine(0.0, 1.0)?;
                host.assign(&started, &now_started)?;
                temps.extend([coef, fresh, now_started]);
                fresh
            }
        };
        let next = kept.add(&fresh)?;
        host.assign(&buf, &next)?;
        Ok(next)
    }
}

impl Optimizer for SgdMomentum {
    fn init(&mut self, host: Host<'_>, params: &[ParamSlot]) -> Result<()> {
        if self.cfg.momentum == 0.0 {
            return Ok(());
        }
        let damped = self.cfg.dampening != 0.0;
        self.state.init(host, params, |name, shape| {
            let started = if damped { Some(zeros_buffer(host, "momentum_started", name, &[1])?) } else { None };
            Ok(Momentum { buf: zeros_buffer(host, "momentum_buffer", name, shape)?, started })
        })
    }

    fn step(&mut self, host: Host<'_>, params: &[ParamSlot], _step: u64) -> Result<()> {
        for slot in params.iter().filter(|s| !s.grad.is_none()) {
            let (p, g) = (host.tensor(slot.param), host.tensor(slot.grad));
            let mut temps = Vec::new();
            let wd = self.cfg.weight_decay * slot.decay_mul;
            let d_p = if wd != 0.0 {
                let decay = p.affine(wd, 0.0)?;
                let d_p = g.add(&decay)?;
                temps.extend([decay, d_p]);
                d_p
            } else {
                g
            };
            let direction = if self.cfg.momentum == 0.0 {
                d_p
            } else {
                let buf = self.next_buf(host, self.state.get(slot)?, d_p, &mut temps)?;
                temps.push(buf);
                if self.cfg.nesterov {
                    let ahead = buf.affine(self.cfg.momentum, 0.0)?;
                    let direction = d_p.add(&ahead)?;
                    temps.extend([ahead, direction]);
                    direction
                } else {
                    buf
                }
            };
            let update = direction.affine(slot.lr, 0.0)?;
            let next_p = p.sub(&update)?;
            host.assign(&p, &next_p)?;
            temps.extend([update, next_p]);
            release_all(temps);
        }
        Ok(())
    }
}
