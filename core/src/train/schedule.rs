//! Learning-rate schedules: linear warm-up, then constant, linear or cosine decay.
//!
//! `lr(step)` for optimizer step `step` (1-based) of `total`:
//! - warm-up (`step <= warmup`): `base · step / warmup`;
//! - then with `p = (step - warmup) / (total - warmup)` in `[0, 1]` and
//!   `m = min_lr_ratio`: constant `base`; linear `base · (m + (1 - m)(1 - p))`;
//!   cosine `base · (m + (1 - m) · (1 + cos πp) / 2)`.
//!
//! ```
//! use stagecraft_core::config::{Decay, ScheduleConfig};
//! use stagecraft_core::train::lr_at;
//! let s = ScheduleConfig { warmup_steps: 10, decay: Decay::Cosine, min_lr_ratio: 0.0 };
//! assert_eq!(lr_at(&s, 1.0, 5, 110), 0.5);
//! assert_eq!(lr_at(&s, 1.0, 10, 110), 1.0);
//! assert!(lr_at(&s, 1.0, 110, 110).abs() < 1e-12);
//! ```

use crate::config::{Decay, ScheduleConfig};

/// The learning rate at `step` (1-based) of `total`.
pub fn lr_at(s: &ScheduleConfig, base: f64, step: u64, total: u64) -> f64 {
    if s.warmup_steps > 0 && step <= s.warmup_steps {
        return base * step as f64 / s.warmup_steps as f64;
    }
    let span = total.saturating_sub(s.warmup_steps).max(1) as f64;
    let p = ((step.saturating_sub(s.warmup_steps)) as f64 / span).clamp(0.0, 1.0);
    let m = s.min_lr_ratio;
    match s.decay {
        Decay::Constant => base,
        Decay::Linear => base * (m + (1.0 - m) * (1.0 - p)),
        Decay::Cosine => base * (m + (1.0 - m) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_decays_to_the_floor_and_constant_stays() {
        let s = ScheduleConfig { warmup_steps: 0, decay: Decay::Linear, min_lr_ratio: 0.1 };
        assert!((lr_at(&s, 2.0, 0, 100) - 2.0).abs() < 1e-12);
        assert!((lr_at(&s, 2.0, 50, 100) - 1.1).abs() < 1e-12);
        assert!((lr_at(&s, 2.0, 100, 100) - 0.2).abs() < 1e-12);
        let c = ScheduleConfig::default();
        assert_eq!(lr_at(&c, 3.0, 77, 100), 3.0);
    }

    #[test]
    fn cosine_is_half_way_at_the_middle() {
        let s = ScheduleConfig { warmup_steps: 0, decay: Decay::Cosine, min_lr_ratio: 0.0 };
        assert!((lr_at(&s, 1.0, 50, 100) - 0.5).abs() < 1e-12);
    }
}
