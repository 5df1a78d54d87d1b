//! Weights bound to their site: the linear and norm layers the host models are made of.
//!
//! Each `forward` reads its weights through [`Weight::get`] (so frozen weights enter the
//! graph detached) and runs the site's adapters.

use super::builder::WeightBuilder;
use super::layers::{layer_norm, rms_norm};
use super::{Adapters, SiteTable, Weight};
use crate::error::Result;
use candle_core::Tensor;
use stagecraft_sdk::{SiteKind, SiteRole};

/// Where a site is: its name, its role, and the block it is in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Place<'a> {
    /// Hugging Face module path.
    pub name: &'a str,
    /// What it does.
    pub role: SiteRole,
    /// The transformer block, if any.
    pub layer: Option<usize>,
}

impl<'a> Place<'a> {
    /// A site inside block `layer`.
    pub fn block(name: &'a str, role: SiteRole, layer: usize) -> Self {
        Place { name, role, layer: Some(layer) }
    }
    /// A site outside the blocks.
    pub fn top(name: &'a str, role: SiteRole) -> Self {
        Place { name, role, layer: None }
    }
}

/// A linear layer at a `LINEAR` site: `y = x·Wᵀ + b`, `W` is `[out, in]`.
#[derive(Debug, Clone)]
pub(crate) struct SiteLinear {
    /// Index in the model's [`SiteTable`].
    pub site: usize,
    /// `[out, in]`.
    pub weight: Weight,
    /// `[out]`, when the layer has one.
    pub bias: Option<Weight>,
}

impl SiteLinear {
    /// Adds a linear site at `at` (`dims = [in, out]`) and makes `<name>.weight` (and
    /// `<name>.bias`).
    pub fn build(
        b: &mut WeightBuilder,
        sites: &mut SiteTable,
        at: Place<'_>,
        (d_in, d_out): (usize, usize),
        bias: bool,
    ) -> Result<Self> {
        let name = at.name;
        let site = sites.add(name, SiteKind::LINEAR, at.role, &[d_in, d_out], at.layer, bias);
        let weight = b.normal(&format!("{name}.weight"), &[d_out, d_in])?;
        let bias = if bias { Some(b.zeros(&format!("{name}.bias"), &[d_out])?) } else { None };
        Ok(SiteLinear { site, weight, bias })
    }

    /// The layer with its adapters.
    pub fn forward(&self, adapters: &Adapters, x: &Tensor) -> Result<Tensor> {
        let b = self.bias.as_ref().map(Weight::get);
        adapters.linear(self.site, x, &self.weight.get(), b.as_ref())
    }
}

/// Which normalization a [`SiteNorm`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NormKind {
    /// RMSNorm (scale only).
    Rms,
    /// LayerNorm (scale and bias).
    Layer,
}

/// A normalization layer at a `NORM` site.
#[derive(Debug, Clone)]
pub(crate) struct SiteNorm {
    /// Index in the model's [`SiteTable`].
    pub site: usize,
    /// RMSNorm or LayerNorm.
    pub kind: NormKind,
    /// The scale `[dim]`.
    pub weight: Weight,
    /// The shift `[dim]` (LayerNorm).
    pub bias: Option<Weight>,
    /// Added to the variance inside the square root.
    pub eps: f64,
}

impl SiteNorm {
    /// Adds a norm site at `at` (`dims = [dim]`) and makes `<name>.weight` (and
    /// `<name>.bias` for LayerNorm).
    pub fn build(
        b: &mut WeightBuilder,
        sites: &mut SiteTable,
        at: Place<'_>,
        kind: NormKind,
        dim: usize,
        eps: f64,
    ) -> Result<Self> {
        let (name, has_bias) = (at.name, kind == NormKind::Layer);
        let site = sites.add(name, SiteKind::NORM, at.role, &[dim], at.layer, has_bias);
        let weight = b.ones(&format!("{name}.weight"), &[dim])?;
        let bias = if has_bias { Some(b.zeros(&format!("{name}.bias"), &[dim])?) } else { None };
        Ok(SiteNorm { site, kind, weight, bias, eps })
    }

    /// The norm, then the site's post-hooks.
    pub fn forward(&self, adapters: &Adapters, x: &Tensor) -> Result<Tensor> {
        let y = match (self.kind, &self.bias) {
            (NormKind::Rms, _) => rms_norm(x, &self.weight.get(), self.eps)?,
            (NormKind::Layer, Some(b)) => layer_norm(x, &self.weight.get(), &b.get(), self.eps)?,
            (NormKind::Layer, None) => {
                let zeros = self.weight.get().zeros_like()?;
                layer_norm(x, &self.weight.get(), &zeros, self.eps)?
            }
        };
        adapters.post(self.site, x, y)
    }
}
