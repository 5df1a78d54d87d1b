//! Folding adapters into the base weights.

use crate::bail;
use crate::error::{Error, Result};
use crate::model::{Adapters, Model};
use stagecraft_sdk::SiteKind;

/// Merges every attached method into the base weights and biases of its linear sites
/// (through the plugin's `merge` and `merge_bias`), then detaches them all: the model
/// alone then computes what model + adapters computed. Methods are merged in the order
/// they were attached, each into the weights the previous ones left.
pub fn merge_into_base(model: &dyn Model, adapters: &mut Adapters) -> Result<()> {
    let weights = model.weights();
    let find = |name: &str| weights.iter().find(|(n, _)| n == name).map(|(_, w)| w);
    let sites = model.sites().infos();
    for m in adapters.methods() {
        for a in m.attachments() {
            let site = &sites[a.site as usize];
            if site.kind != SiteKind::LINEAR {
                bail!("plugin `{}` is attached to `{}`, which is not a linear site (kind {}): only linear sites can be merged", m.core.plugin, site.name, site.kind);
            }
            let wname = format!("{}.weight", site.name);
            let w = find(&wname).ok_or_else(|| Error::msg(format!("model has no weight `{wname}`")))?;
            let merged = m.merge(a.site as usize, w.var().as_tensor())?;
            if let Some(b) = find(&format!("{}.bias", site.name)) {
                let merged_bias = m.merge_bias(a.site as usize, b.var().as_tensor())?;
                // A copy: a method may hand the tensor back unchanged, and a var cannot
                // be set from its own storage.
                b.var().set(&merged_bias.detach().copy()?)?;
            }
            w.var().set(&merged.detach().copy()?)?;
        }
    }
    adapters.take();
    Ok(())
}
