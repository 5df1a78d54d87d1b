//! Host-side handles on plugin instances: call a plugin with candle tensors, get
//! candle tensors back, with every failure turned into an [`Error::Plugin`] naming the
//! plugin, the entry point and the site.

use super::ops::HostCtx;
use super::state::{HostState, InstanceStore, Owned};
use crate::error::{Error, Result};
use crate::kernels::linear::LowRank;
use crate::train::Teacher;
use abi_stable::{sabi_trait::TD_Opaque, std_types::RArc, std_types::RResult, std_types::RString};
use candle_core::{Tensor, Var};
use stagecraft_sdk::abi::{HostObj, HostOps_TO, MethodBox, OptimizerBox, StageBox};
use stagecraft_sdk::{
    Attachment, Control, Hooks, MergeSupport, Metric, ModelInfo, NamedTensor, ParamSlot, SiteInfo, SiteKind, StepInfo,
    TensorHandle,
};
use std::collections::HashMap;
use std::rc::Rc;

/// Builds the op-table object for one instance.
pub fn host_for(state: &Rc<HostState>, store: &Rc<InstanceStore>, owner: &str) -> HostObj {
    let ctx = HostCtx { state: state.clone(), store: store.clone(), owner: owner.to_string() };
    HostOps_TO::from_ptr(RArc::new(ctx), TD_Opaque)
}

/// What every instance has: its plugin's name, its op table, its tensors.
pub struct InstanceCore {
    /// Registered plugin name.
    pub plugin: String,
    /// Unique among the instances of its [`HostState`] (see [`InstanceCore::qualified`]).
    pub serial: u64,
    /// Where the plugin came from (`built-in` or the file).
    pub source: String,
    /// The op table lent to each call.
    pub host: HostObj,
    /// Params and buffers it created.
    pub store: Rc<InstanceStore>,
    /// Shared run state.
    pub state: Rc<HostState>,
}

impl InstanceCore {
    /// A fresh core.
    pub fn new(plugin: &str, source: &str, state: &Rc<HostState>) -> Self {
        let store = Rc::new(InstanceStore::default());
        let host = host_for(state, &store, plugin);
        let serial = state.next_instance_serial();
        InstanceCore {
            plugin: plugin.to_string(),
            serial,
            source: source.to_string(),
            host,
            store,
            state: state.clone(),
        }
    }

    /// A tensor's name as the optimizer and snapshots see it: `<plugin>#<serial>.<local>`
    /// (`lora#3.model.layers.0.self_attn.q_proj.lora_A.weight`). Plugins name their
    /// tensors locally; two instances of one plugin (two LoRA adapters on the same
    /// site) would collide without the instance in the name.
    pub fn qualified(&self, local: &str) -> String {
        format!("{}#{}.{local}", self.plugin, self.serial)
    }

    fn check<T>(&self, method: impl Into<String>, r: RResult<T, RString>) -> Result<T> {
        plugin_result(&self.plugin, method, r)
    }

    fn out(&self, method: &str, h: TensorHandle) -> Result<Tensor> {
        self.state.get(h).map_err(|e| Error::Plugin {
            plugin: self.plugin.clone(),
            method: method.to_string(),
            msg: format!("returned a bad tensor handle: {e}"),
        })
    }
}

impl Drop for InstanceCore {
    fn drop(&mut self) {
        self.store.release_all(&self.state);
    }
}

/// An adaptation method instance attached to a model.
pub struct MethodInstance {
    /// Common parts.
    pub core: InstanceCore,
    obj: MethodBox,
    sites: Vec<SiteInfo>,
    attachments: Vec<Attachment>,
    /// The low-rank updates it declared, by site (see [`MethodInstance::low_rank`]).
    low_rank: HashMap<usize, stagecraft_sdk::LowRank>,
}

impl MethodInstance {
    /// Wraps a freshly created plugin object.
    pub fn new(core: InstanceCore, obj: MethodBox) -> Self {
        MethodInstance { core, obj, sites: Vec::new(), attachments: Vec::new(), low_rank: HashMap::new() }
    }

    /// Lets the plugin choose its sites, then creates each site's parameters.
    pub fn attach(&mut self, sites: &[SiteInfo]) -> Result<()> {
        let picked = self.core.check("select_sites", self.obj.select_sites(&self.core.host, sites.into()))?;
        self.sites = sites.to_vec();
        let mut attachments: Vec<Attachment> = picked.into_vec();
        attachments.sort_by_key(|a| a.site);
        attachments.dedup_by_key(|a| a.site);
        for a in &attachments {
            let site = &self.sites[a.site as usize];
            if a.hooks.contains(Hooks::PRE) && site.kind != SiteKind::LINEAR {
                return Err(Error::Plugin {
                    plugin: self.core.plugin.clone(),
                    method: "select_sites".into(),
                    msg: format!(
                        "asked for a pre-hook at `{}`, a {} site; pre-hooks exist only on linear sites",
                        site.name, site.kind
                    ),
                });
            }
            self.core.check(format!("init_site({})", site.name), self.obj.init_site(&self.core.host, a.site))?;
            if a.hooks == Hooks::POST && site.kind == SiteKind::LINEAR {
                if let Some(declared) = self.obj.low_rank(a.site).into_option() {
                    self.check_low_rank(site, &declared)?;
                    self.low_rank.insert(a.site as usize, declared);
                }
            }
        }
        self.attachments = attachments;
        Ok(())
    }

    /// Refuses a declared update whose factors are not `[r, in]` and `[out, r]` for the
    /// linear `site` (once, when it is declared: the handles stay the same).
    fn check_low_rank(&self, site: &SiteInfo, declared: &stagecraft_sdk::LowRank) -> Result<()> {
        let (in_f, out_f) = match site.dims.as_slice() {
            [i, o] => (*i, *o),
            _ => (0, 0),
        };
        self.resolve(declared)?.rank(in_f, out_f).map_err(|e| Error::Plugin {
            plugin: self.core.plugin.clone(),
            method: format!("low_rank at {}", site.name),
            // The message without the backtrace candle may append.
            msg: e.to_string().lines().next().unwrap_or_default().to_string(),
        })?;
        Ok(())
    }

    /// A declared update with its factors' tensors.
    fn resolve(&self, declared: &stagecraft_sdk::LowRank) -> Result<LowRank> {
        Ok(LowRank {
            a: self.core.out("low_rank", declared.a)?,
            b: self.core.out("low_rank", declared.b)?,
            scale: declared.scale,
        })
    }

    /// The update `y + scale·(x·Aᵀ)·Bᵀ` it declared at a linear site it post-hooks
    /// (SDK 1.4's `low_rank`; LoRA's), checked against the site when it was declared,
    /// which the model may compute inside its fused kernels instead of calling the
    /// hook; `None` where it declared none.
    pub fn low_rank(&self, site: usize) -> Result<Option<LowRank>> {
        self.low_rank.get(&site).map(|declared| self.resolve(declared)).transpose()
    }

    /// The sites it attached to, with hooks.
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// Pre-hook at a linear site.
    pub fn pre(&self, site: usize, x: &Tensor) -> Result<Tensor> {
        let name = &self.sites[site].name;
        let hx = self.core.state.temp(x.clone());
        let r = self.obj.forward(&self.core.host, site as u32, true, hx, TensorHandle::NONE);
        let h = self.core.check(format!("forward_pre at {name}"), r)?;
        let out = self.core.out("forward_pre", h)?;
        if out.dims() != x.dims() {
            return Err(self.shape_error("forward_pre", site, x.dims(), out.dims()));
        }
        Ok(out)
    }

    /// Post-hook at a site: `(x, y) → y'`, shape-checked against `y`.
    pub fn post(&self, site: usize, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        let info = &self.sites[site];
        let hx = self.core.state.temp(x.clone());
        let hy = self.core.state.temp(y.clone());
        let r = self.obj.forward(&self.core.host, site as u32, false, hx, hy);
        let h = self.core.check(format!("forward at {}", info.name), r)?;
        let out = self.core.out("forward", h)?;
        let may_grow = matches!(info.kind, SiteKind::INPUT_EMBEDS | SiteKind::ATTN_KEY | SiteKind::ATTN_VALUE);
        let seq_dim = if info.kind == SiteKind::INPUT_EMBEDS { 1 } else { 2 };
        let ok = if may_grow {
            out.rank() == y.rank()
                && out.dims().iter().zip(y.dims()).enumerate().all(|(i, (a, b))| i == seq_dim || a == b)
        } else {
            out.dims() == y.dims()
        };
        if !ok {
            return Err(self.shape_error("forward", site, y.dims(), out.dims()));
        }
        Ok(out)
    }

    fn shape_error(&self, method: &str, site: usize, want: &[usize], got: &[usize]) -> Error {
        Error::Plugin {
            plugin: self.core.plugin.clone(),
            method: format!("{method} at {}", self.sites[site].name),
            msg: format!("returned a tensor of shape {got:?}, expected {want:?}"),
        }
    }

    /// The site's base weight with the adapter merged in.
    pub fn merge(&self, site: usize, weight: &Tensor) -> Result<Tensor> {
        let hw = self.core.state.temp(weight.clone());
        let h = self
            .core
            .check(format!("merge at {}", self.sites[site].name), self.obj.merge(&self.core.host, site as u32, hw))?;
        let out = self.core.out("merge", h)?;
        if out.dims() != weight.dims() {
            return Err(self.shape_error("merge", site, weight.dims(), out.dims()));
        }
        Ok(out)
    }

    /// The site's base weight with the adapter taken out.
    pub fn unmerge(&self, site: usize, weight: &Tensor) -> Result<Tensor> {
        let hw = self.core.state.temp(weight.clone());
        let h = self.core.check(
            format!("unmerge at {}", self.sites[site].name),
            self.obj.unmerge(&self.core.host, site as u32, hw),
        )?;
        self.core.out("unmerge", h)
    }

    /// The site's base bias with the adapter merged in (unchanged for methods that do
    /// not touch it).
    pub fn merge_bias(&self, site: usize, bias: &Tensor) -> Result<Tensor> {
        let hb = self.core.state.temp(bias.clone());
        let h = self.core.check(
            format!("merge_bias at {}", self.sites[site].name),
            self.obj.merge_bias(&self.core.host, site as u32, hb),
        )?;
        let out = self.core.out("merge_bias", h)?;
        if out.dims() != bias.dims() {
            return Err(self.shape_error("merge_bias", site, bias.dims(), out.dims()));
        }
        Ok(out)
    }

    /// The site's base bias with the adapter taken out.
    pub fn unmerge_bias(&self, site: usize, bias: &Tensor) -> Result<Tensor> {
        let hb = self.core.state.temp(bias.clone());
        let h = self.core.check(
            format!("unmerge_bias at {}", self.sites[site].name),
            self.obj.unmerge_bias(&self.core.host, site as u32, hb),
        )?;
        self.core.out("unmerge_bias", h)
    }

    /// Whether the plugin says it can be merged.
    pub fn merge_support(&self) -> MergeSupport {
        self.obj.merge_support()
    }

    /// Tells the plugin a forward pass starts.
    pub fn begin_forward(&self) -> Result<()> {
        self.core.check("begin_forward", self.obj.begin_forward(&self.core.host))
    }

    /// Key/value positions it prepends at attention sites.
    pub fn kv_prefix_len(&self) -> usize {
        self.obj.kv_prefix_len() as usize
    }

    /// Its persistent non-trainable tensors.
    pub fn buffers(&self) -> Vec<Owned> {
        self.core.store.buffers()
    }

    /// Its trainable parameters.
    pub fn params(&self) -> Vec<Owned> {
        self.core.store.params()
    }
}

/// A parameter the optimizer updates, as the trainer describes it.
#[derive(Debug, Clone)]
pub struct TrainParam {
    /// Full name.
    pub name: String,
    /// The value.
    pub var: Var,
    /// Its handle in the table (persistent).
    pub handle: TensorHandle,
    /// Per-parameter LR multiplier (layer-wise decay).
    pub lr_mul: f64,
    /// Weight-decay multiplier (0 excludes it).
    pub decay_mul: f64,
}

/// An optimizer instance.
pub struct OptimizerInstance {
    /// Common parts.
    pub core: InstanceCore,
    obj: OptimizerBox,
    /// Updates applied over its life: the step count it sees continues across stages
    /// when a stage carries the optimizer over.
    pub updates: u64,
}

impl OptimizerInstance {
    /// Wraps a freshly created plugin object.
    pub fn new(core: InstanceCore, obj: OptimizerBox) -> Self {
        OptimizerInstance { core, obj, updates: 0 }
    }

    fn slots(params: &[TrainParam], grads: Option<&[Option<Tensor>]>, lr: f64, state: &HostState) -> Vec<ParamSlot> {
        params
            .iter()
            .enumerate()
            .map(|(i, p)| ParamSlot {
                name: p.name.as_str().into(),
                param: p.handle,
                grad: match grads.and_then(|g| g[i].as_ref()) {
                    Some(g) => state.temp(g.clone()),
                    None => TensorHandle::NONE,
                },
                lr: lr * p.lr_mul,
                decay_mul: p.decay_mul,
            })
            .collect()
    }

    /// Lets the optimizer create its state for these parameters.
    pub fn init(&mut self, params: &[TrainParam]) -> Result<()> {
        let slots = Self::slots(params, None, 0.0, &self.core.state);
        self.core.check("init", self.obj.init(&self.core.host, slots.as_slice().into()))
    }

    /// One update with these gradients (aligned with `params`). The parameters are lent
    /// to the optimizer for writing during the call, and only then.
    pub fn step(&mut self, params: &[TrainParam], grads: &[Option<Tensor>], lr: f64, step: u64) -> Result<()> {
        let slots = Self::slots(params, Some(grads), lr, &self.core.state);
        self.core.store.lend(params.iter().map(|p| p.handle));
        let r = self.obj.step(&self.core.host, slots.as_slice().into(), step);
        self.core.store.end_loan();
        self.core.check("step", r)
    }

    /// Its state buffers (what checkpoints save).
    pub fn buffers(&self) -> Vec<Owned> {
        self.core.store.buffers()
    }
}

/// The loss of one batch, host side.
#[derive(Debug)]
pub struct StageLoss {
    /// Scalar loss.
    pub loss: Tensor,
    /// Per-example loss, if the objective gives one.
    pub per_example: Option<Tensor>,
    /// Metric contributions.
    pub metrics: Vec<Metric>,
}

/// An objective instance (a plugin of the SDK's `Stage` kind).
pub struct ObjectiveInstance {
    /// Common parts.
    pub core: InstanceCore,
    obj: StageBox,
    /// What `required_outputs` returned when it was created.
    required: Vec<String>,
    /// The model whose logits it reads as `teacher_logits`, if its stage names one.
    teacher: Option<Teacher>,
}

impl ObjectiveInstance {
    /// Wraps a freshly created plugin object (and asks it once which model outputs it
    /// reads).
    pub fn new(core: InstanceCore, obj: StageBox) -> Self {
        let required = obj.required_outputs().into_iter().map(|s| s.into_string()).collect();
        ObjectiveInstance { core, obj, required, teacher: None }
    }

    /// Gives it the teacher whose logits it reads (its stage's `teacher`).
    pub fn set_teacher(&mut self, teacher: Teacher) {
        self.teacher = Some(teacher);
    }

    /// The teacher its stage named, if any.
    pub fn teacher(&self) -> Option<&Teacher> {
        self.teacher.as_ref()
    }

    /// Tells the stage about the model (it may create head parameters).
    pub fn init(&mut self, model: &ModelInfo) -> Result<()> {
        self.core.check("init", self.obj.init(&self.core.host, model))
    }

    /// Outputs the objective reads (`logits`, `hidden`, `pooled`, `teacher_logits`): the
    /// only ones it is given.
    pub fn required_outputs(&self) -> &[String] {
        &self.required
    }

    /// Loss and metrics for one batch.
    pub fn compute(&mut self, outputs: &[(&str, &Tensor)], batch: &[(&str, &Tensor)]) -> Result<StageLoss> {
        let named = |items: &[(&str, &Tensor)]| -> Vec<NamedTensor> {
            items
                .iter()
                .map(|(n, t)| NamedTensor { name: (*n).into(), tensor: self.core.state.temp((*t).clone()) })
                .collect()
        };
        let (o, b) = (named(outputs), named(batch));
        let out =
            self.core.check("compute", self.obj.compute(&self.core.host, o.as_slice().into(), b.as_slice().into()))?;
        let loss = self.core.out("compute", out.loss)?;
        if loss.elem_count() != 1 {
            return Err(Error::Plugin {
                plugin: self.core.plugin.clone(),
                method: "compute".into(),
                msg: format!("returned a loss of shape {:?}, expected a scalar", loss.dims()),
            });
        }
        let per_example =
            if out.per_example.is_none() { None } else { Some(self.core.out("compute", out.per_example)?) };
        Ok(StageLoss { loss: loss.reshape(())?, per_example, metrics: out.metrics.into_vec() })
    }

    /// After an optimizer step.
    pub fn on_step_end(&mut self, info: &StepInfo) -> Result<Control> {
        self.core.check("on_step_end", self.obj.on_step_end(&self.core.host, info))
    }

    /// After an evaluation.
    pub fn on_eval_end(&mut self, metrics: &[Metric]) -> Result<Control> {
        self.core.check("on_eval_end", self.obj.on_eval_end(&self.core.host, metrics.into()))
    }

    /// Head parameters it created.
    pub fn params(&self) -> Vec<Owned> {
        self.core.store.params()
    }
}

/// A plugin entry point's ABI result as a host result: its error names the plugin and
/// the entry point.
pub(crate) fn plugin_result<T>(plugin: &str, method: impl Into<String>, r: RResult<T, RString>) -> Result<T> {
    match r {
        RResult::ROk(v) => Ok(v),
        RResult::RErr(msg) => {
            Err(Error::Plugin { plugin: plugin.to_string(), method: method.into(), msg: msg.into_string() })
        }
    }
}
