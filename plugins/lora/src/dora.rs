//! DoRA (Liu et al., 2024, *DoRA: Weight-Decomposed Low-Rank Adaptation*,
//! <https://arxiv.org/abs/2402.09353>): the adapted weight is a learned magnitude
//! times a direction, `W' = m ⊙ (W + s·B·A) / ‖W + s·B·A‖`, norms taken per output
//! row (PEFT's `lora_magnitude_vector`, `[out]`, starting at the base weight's row
//! norms so that a fresh adapter changes nothing).
//!
//! As in the paper (section 4.3) and PEFT, the norm is treated as a constant in
//! backward. The forward adds to the base output `y` (bias `b`):
//! `y' = y + (m/‖·‖ − 1)·(y − b) + (m/‖·‖)·s·x·Aᵀ·Bᵀ`, which equals `x·W'ᵀ + b`; with
//! dropout active, `y − b` is recomputed from the dropped input, as PEFT does.

use crate::lora::SiteFactors;
use stagecraft_sdk::prelude::*;

/// `‖rows‖₂` of a `[out, in]` matrix: `[out]`.
fn row_norms<'h>(w: &Tensor<'h>) -> Result<Tensor<'h>> {
    w.sqr()?.sum(&[1], false)?.sqrt()
}

/// `W + s·B·A` for a site, with the update cut from the graph (only the norm uses it).
fn updated_weight<'h>(host: Host<'h>, site: &SiteInfo, f: &SiteFactors) -> Result<Tensor<'h>> {
    let w = host.site_weight(&site.name, "weight")?;
    let delta = host.tensor(f.b).matmul(&host.tensor(f.a))?.affine(f.scaling, 0.0)?.detach()?;
    w.add(&delta)
}

/// Creates `<site>.lora_magnitude_vector`, the row norms of `W + s·B·A` (of `W`, as
/// `B` starts at zero).
pub(crate) fn init_magnitude(host: Host<'_>, site: &SiteInfo, f: &SiteFactors) -> Result<TensorHandle> {
    let out = site.dims.get(1).copied().unwrap_or(0);
    let m = host.new_param(&format!("{}.lora_magnitude_vector", site.name), &[out], Init::ONES)?;
    host.assign(&m, &row_norms(&updated_weight(host, site, f)?)?)?;
    Ok(m.handle())
}

/// The site's output with the DoRA update; `x` is the (dropped-out) input, `delta` the
/// scaled LoRA term `s·x·Aᵀ·Bᵀ`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward<'h>(
    host: Host<'h>,
    site: &SiteInfo,
    f: &SiteFactors,
    magnitude: Tensor<'h>,
    x: Tensor<'h>,
    y: Tensor<'h>,
    delta: Tensor<'h>,
    dropout: bool,
) -> Result<Tensor<'h>> {
    let norm = row_norms(&updated_weight(host, site, f)?)?.detach()?;
    let scale = magnitude.div(&norm)?;
    let base = if dropout && host.is_training() {
        x.matmul(&host.site_weight(&site.name, "weight")?.t()?)?
    } else if site.has_bias {
        y.sub(&host.site_weight(&site.name, "bias")?)?
    } else {
        y
    };
    y.add(&scale.affine(1.0, -1.0)?.mul(&base)?)?.add(&scale.mul(&delta)?)
}

/// `m / ‖rows‖ ⊙ rows` of the updated weight: the merged DoRA weight.
pub(crate) fn scale_rows<'h>(updated: &Tensor<'h>, magnitude: Tensor<'h>) -> Result<Tensor<'h>> {
    let out = updated.dim(0)?;
    let factor = magnitude.div(&row_norms(updated)?)?.reshape(&[out, 1])?;
    updated.mul(&factor)
}
