//! The site table of a model and the adapters attached to it.
//!
//! Models call [`Adapters::linear`] (or [`Adapters::post`]) at every site; with no
//! adapter there, that is the base computation and nothing else.

use crate::device::Precision;
use crate::error::{Error, Result};
use crate::kernels::linear::LowRank;
use crate::plugin::{HostState, MethodInstance};
use candle_core::Tensor;
use stagecraft_sdk::{Hooks, SiteInfo, SiteKind, SiteRole};
use std::collections::HashMap;
use std::rc::Rc;

/// Every site of a model, in model order, by index and by name, with its role.
#[derive(Debug, Clone, Default)]
pub struct SiteTable {
    infos: Vec<SiteInfo>,
    roles: Vec<SiteRole>,
    by_name: HashMap<String, usize>,
}

impl SiteTable {
    /// Adds a site and returns its index.
    pub fn add(
        &mut self,
        name: &str,
        kind: SiteKind,
        role: SiteRole,
        dims: &[usize],
        layer: Option<usize>,
        has_bias: bool,
    ) -> usize {
        let i = self.infos.len();
        let layer = layer.map(|l| l as u32);
        self.infos.push(SiteInfo {
            name: name.into(),
            kind,
            dims: dims.to_vec().into(),
            layer: layer.into(),
            has_bias,
        });
        self.roles.push(role);
        self.by_name.insert(name.to_string(), i);
        i
    }
    /// All sites.
    pub fn infos(&self) -> &[SiteInfo] {
        &self.infos
    }
    /// Each site's role, aligned with [`infos`](Self::infos).
    pub fn roles(&self) -> &[SiteRole] {
        &self.roles
    }
    /// Index of a site by name.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }
    /// Number of sites.
    pub fn len(&self) -> usize {
        self.infos.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.infos.is_empty()
    }
}

/// Adaptation method instances attached to a model, with a per-site dispatch list, the
/// model dropout of the stage that trains it and the precision of its matrix products:
/// what a forward pass reads besides its inputs.
pub struct Adapters {
    dropout: Option<(f64, Rc<HostState>)>,
    precision: Precision,
    methods: Vec<MethodInstance>,
    active: Vec<bool>,
    frozen: Vec<bool>,
    pre: Vec<Vec<usize>>,
    post: Vec<Vec<usize>>,
}

impl Adapters {
    /// No adapters, for a model with `num_sites` sites.
    pub fn none(num_sites: usize) -> Self {
        Adapters {
            dropout: None,
            precision: Precision::Fp32,
            methods: Vec::new(),
            active: Vec::new(),
            frozen: Vec::new(),
            pre: vec![Vec::new(); num_sites],
            post: vec![Vec::new(); num_sites],
        }
    }

    /// Attaches a method instance: it chooses its sites and creates its parameters.
    /// Methods run in the order they were attached.
    pub fn attach(&mut self, mut m: MethodInstance, sites: &SiteTable) -> Result<usize> {
        if sites.len() != self.pre.len() {
            return Err(Error::msg("adapter set was built for a different model"));
        }
        m.attach(sites.infos())?;
        Ok(self.add(m))
    }

    /// Adds an instance that is already attached to these sites (one taken from
    /// another adapter set of the same model).
    pub fn adopt(&mut self, m: MethodInstance, sites: &SiteTable) -> Result<usize> {
        if sites.len() != self.pre.len() {
            return Err(Error::msg("adapter set was built for a different model"));
        }
        Ok(self.add(m))
    }

    fn add(&mut self, m: MethodInstance) -> usize {
        let k = self.methods.len();
        for a in m.attachments() {
            if a.hooks.contains(Hooks::PRE) {
                self.pre[a.site as usize].push(k);
            }
            if a.hooks.contains(Hooks::POST) {
                self.post[a.site as usize].push(k);
            }
        }
        self.methods.push(m);
        self.active.push(true);
        self.frozen.push(false);
        k
    }

    /// Sets the model dropout: embeddings and each block's attention and MLP outputs
    /// (before their residual add) are dropped with probability `p` in training mode,
    /// with masks from `state`'s seeded RNG.
    pub fn set_dropout(&mut self, p: f64, state: Rc<HostState>) {
        self.dropout = (p > 0.0).then_some((p, state));
    }

    /// Sets the precision of the model's matrix products (see [`Precision`]).
    pub fn set_precision(&mut self, p: Precision) {
        self.precision = p;
    }

    /// The precision of the model's matrix products.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Applies the model dropout (identity when none is set or in evaluation mode).
    pub fn dropout(&self, x: &Tensor) -> Result<Tensor> {
        match &self.dropout {
            Some((p, state)) => state.dropout(x, *p),
            None => Ok(x.clone()),
        }
    }

    /// Whether model dropout is set (it may still be off in evaluation mode).
    pub fn has_dropout(&self) -> bool {
        self.dropout.is_some()
    }

    /// The attached instances.
    pub fn methods(&self) -> &[MethodInstance] {
        &self.methods
    }

    /// Turns one instance off (its hooks are skipped) or on.
    pub fn set_active(&mut self, k: usize, on: bool) {
        if let Some(a) = self.active.get_mut(k) {
            *a = on;
        }
    }

    /// Freezes one instance (it keeps applying, but its parameters no longer train) or
    /// unfreezes it.
    pub fn set_frozen(&mut self, k: usize, on: bool) {
        if let Some(f) = self.frozen.get_mut(k) {
            *f = on;
        }
    }

    /// Whether an instance is frozen.
    pub fn is_frozen(&self, k: usize) -> bool {
        self.frozen.get(k).copied().unwrap_or(false)
    }

    /// Removes every instance and returns them.
    pub fn take(&mut self) -> Vec<MethodInstance> {
        for v in self.pre.iter_mut().chain(self.post.iter_mut()) {
            v.clear();
        }
        self.active.clear();
        self.frozen.clear();
        std::mem::take(&mut self.methods)
    }

    /// Tells every active instance that a forward pass starts.
    pub fn begin_forward(&self) -> Result<()> {
        for (m, _) in self.methods.iter().zip(&self.active).filter(|(_, a)| **a) {
            m.begin_forward()?;
        }
        Ok(())
    }

    /// Key/value positions the active instances prepend at attention sites: real
    /// tokens take positions after them.
    pub fn kv_prefix_len(&self) -> usize {
        self.methods.iter().zip(&self.active).filter(|(_, a)| **a).map(|(m, _)| m.kv_prefix_len()).sum()
    }

    /// Whether an active instance hooks `site` (before or after it).
    pub fn hooks(&self, site: usize) -> bool {
        self.pre[site].iter().chain(&self.post[site]).any(|&k| self.active[k])
    }

    /// The updates the active instances add at linear `site` when each of them hooks
    /// it only through a declared low-rank update ([`MethodInstance::low_rank`]): the
    /// model may then compute them inside its fused kernels, in place of the hooks.
    /// `None` when an active instance hooks the site otherwise (a pre-hook, or a
    /// post-hook without a declaration); empty when nothing hooks it.
    pub fn low_rank(&self, site: usize) -> Result<Option<Vec<LowRank>>> {
        if self.pre[site].iter().any(|&k| self.active[k]) {
            return Ok(None);
        }
        let mut updates = Vec::new();
        for &k in self.post[site].iter().filter(|&&k| self.active[k]) {
            match self.methods[k].low_rank(site)? {
                Some(u) => updates.push(u),
                None => return Ok(None),
            }
        }
        Ok(Some(updates))
    }

    /// Runs the pre-hooks at `site` on `x`.
    pub fn pre(&self, site: usize, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for &k in &self.pre[site] {
            if self.active[k] {
                x = self.methods[k].pre(site, &x)?;
            }
        }
        Ok(x)
    }

    /// Runs the post-hooks at `site`: the site computed `y` from `x`.
    pub fn post(&self, site: usize, x: &Tensor, y: Tensor) -> Result<Tensor> {
        let mut y = y;
        for &k in &self.post[site] {
            if self.active[k] {
                y = self.methods[k].post(site, x, &y)?;
            }
        }
        Ok(y)
    }

    /// A linear site: pre-hooks, `x·Wᵀ + b`, post-hooks.
    pub fn linear(&self, site: usize, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let x = self.pre(site, x)?;
        let mut y = match self.precision {
            Precision::Fp32 => crate::kernels::linear::linear(&x, w)?,
            Precision::Bf16 => self.precision.matmul(&x, &w.t()?)?,
        };
        if let Some(b) = b {
            y = y.broadcast_add(b)?;
        }
        self.post(site, &x, y)
    }
}
