//! Folding adapters into the base weights.

use crate::error::{Error, Result};
use crate::model::{Adapters, Model};
use stagecraft_sdk::SiteKind;

/// Merges every attached method into the base weights of its linear sites (through the
/// plugin's `merge`), then detaches them all: the model alone then computes what model
/// + adapters computed.
pub fn merge_into_base(model: &dyn Model, adapters: &mut Adapters) -> Result<()> {
    let weights = model.weights();
    let sites = model.sites().infos();
    for m in adapters.methods() {
        for a in m.attachments() {
            let site = &sites[a.site as usize];
            if site.kind != SiteKind::LINEAR {
                return Err(Error::msg(format!("plugin `{}` is attached to `{}`, a {} site: only linear sites can be merged", m.core.plugin, site.name, site.kind)));
            }
            let wname = format!("{}.weight", site.name);
            let (_, w) = weights.iter().find(|(n, _)| *n == wname).ok_or_else(|| Error::msg(format!("model has no weight `{wname}`")))?;
            let merged = m.merge(a.site as usize, w.var().as_tensor())?;
            w.var().set(&merged.detach())?;
        }
    }
    adapters.take();
    Ok(())
}
