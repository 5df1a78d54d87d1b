//! What the host op table works on: the device, the handle table, the seeded RNG, the
//! train/eval flag, the model (its shape, its sites' roles and base tensors) and the
//! run's tokenizer.
//!
//! One [`HostState`] per run, shared by every plugin instance; one [`InstanceStore`]
//! per instance, holding the parameters and buffers it created (by local name), which
//! is what checkpoints, adapter files and optimizers see.

use super::table::{Entry, TensorTable};
use crate::bail;
use crate::data::Tokenizer;
use crate::error::{Error, Result};
use crate::memory::{self, Bytes};
use crate::model::Model;
use crate::rng::Rng;
use candle_core::{DType, Device, Tensor, Var};
use stagecraft_sdk::{Init, InitKind, ModelSpec, SiteRole, TensorHandle};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

/// Shared state behind every plugin call.
#[derive(Debug)]
pub struct HostState {
    /// Where tensors live.
    pub device: Device,
    /// Float dtype of parameters.
    pub dtype: DType,
    seed: u64,
    /// The handle table.
    pub table: RefCell<TensorTable>,
    /// Init and dropout randomness.
    pub rng: RefCell<Rng>,
    training: Cell<bool>,
    site_tensors: RefCell<HashMap<String, HashMap<String, Tensor>>>,
    model: RefCell<Option<ModelView>>,
    tokenizer: RefCell<Option<Rc<Tokenizer>>>,
    instances: Cell<u64>,
    /// Checks only: plugin tensors are all-zero placeholders (no values drawn, no
    /// memory touched), and their sizes add up against the memory available.
    placeholder: Option<Cell<Bytes>>,
}

/// What plugins may learn about the model they work on: its shape and the role of
/// each site.
#[derive(Debug, Clone)]
struct ModelView {
    spec: ModelSpec,
    roles: HashMap<String, SiteRole>,
}

impl HostState {
    /// A fresh state.
    pub fn new(device: Device, dtype: DType, seed: u64) -> Self {
        HostState {
            device,
            dtype,
            seed,
            table: RefCell::default(),
            rng: RefCell::new(Rng::new(seed)),
            training: Cell::new(true),
            site_tensors: RefCell::default(),
            model: RefCell::default(),
            tokenizer: RefCell::default(),
            instances: Cell::new(0),
            placeholder: None,
        }
    }

    /// State for checks, whose plugin tensors' values never matter: every tensor a
    /// plugin creates is zeros from the allocator's untouched pages, so a check costs
    /// little whatever the sizes, and their sizes add up to be refused together when
    /// they exceed the memory available.
    pub fn for_checks(device: Device, dtype: DType, seed: u64) -> Self {
        HostState { placeholder: Some(Cell::new(Bytes(0))), ..HostState::new(device, dtype, seed) }
    }

    /// A number for a new plugin instance, unique in this state: instances are made in
    /// the same order whenever a pipeline's config is replayed (resume, branching), so
    /// the names built from it are the same too.
    pub fn next_instance_serial(&self) -> u64 {
        let n = self.instances.get() + 1;
        self.instances.set(n);
        n
    }

    /// Makes a model visible to plugins: its shape (`model_info`), its sites' roles
    /// (`site_role`) and its sites' base tensors (`site_weight`). Replaces whatever
    /// model was registered before.
    pub fn register_model(&self, model: &dyn Model) {
        let roles =
            model.sites().infos().iter().zip(model.sites().roles()).map(|(s, r)| (s.name.to_string(), *r)).collect();
        *self.model.borrow_mut() = Some(ModelView { spec: model.spec(), roles });
        let mut tensors = self.site_tensors.borrow_mut();
        tensors.clear();
        for (site, name, t) in model.site_tensors() {
            tensors.entry(site).or_default().insert(name.to_string(), t);
        }
    }

    /// The registered model's shape.
    pub fn model_spec(&self) -> Result<ModelSpec> {
        self.model
            .borrow()
            .as_ref()
            .map(|m| m.spec.clone())
            .ok_or_else(|| Error::msg("no model is registered with the host"))
    }

    /// The role of a site of the registered model.
    pub fn site_role(&self, site: &str) -> Result<SiteRole> {
        let model = self.model.borrow();
        let m = model.as_ref().ok_or_else(|| Error::msg("no model is registered with the host"))?;
        m.roles.get(site).copied().ok_or_else(|| Error::msg(format!("the model has no site named `{site}`")))
    }

    /// Sets the tokenizer plugins encode text with (`encode`).
    pub fn set_tokenizer(&self, tokenizer: Rc<Tokenizer>) {
        *self.tokenizer.borrow_mut() = Some(tokenizer);
    }

    /// The tokenizer plugins encode text with, if one is set.
    pub fn tokenizer(&self) -> Option<Rc<Tokenizer>> {
        self.tokenizer.borrow().clone()
    }

    /// Token ids of `text` with the run's tokenizer (special tokens added, as Hugging
    /// Face tokenizers do by default).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let t = self.tokenizer.borrow();
        let t = t.as_ref().ok_or_else(|| {
            Error::msg(
                "this host has no tokenizer (initialising from a text needs a pipeline or a model directory with one)",
            )
        })?;
        t.encode(text)
    }

    /// The run's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Training (dropout on) or evaluation mode.
    pub fn set_training(&self, on: bool) {
        self.training.set(on);
    }

    /// Whether in training mode.
    pub fn is_training(&self) -> bool {
        self.training.get()
    }

    /// Inverted dropout with drop probability `p` in training mode (masks drawn from
    /// the seeded RNG, so runs and resumes repeat exactly); identity in evaluation mode.
    pub fn dropout(&self, x: &Tensor, p: f64) -> Result<Tensor> {
        if !(0.0..1.0).contains(&p) {
            bail!("dropout probability must be in [0, 1), got {p}");
        }
        if !self.is_training() || p == 0.0 {
            return Ok(x.clone());
        }
        let scale = (1.0 / (1.0 - p)) as f32;
        let mask: Vec<f32> = {
            let mut rng = self.rng.borrow_mut();
            (0..x.elem_count()).map(|_| if rng.uniform() >= p { scale } else { 0.0 }).collect()
        };
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok(x.mul(&mask)?)
    }

    /// A registered base tensor.
    pub fn site_tensor(&self, site: &str, name: &str) -> Result<Tensor> {
        let map = self.site_tensors.borrow();
        let s = map.get(site).ok_or_else(|| Error::msg(format!("no site named `{site}` with base tensors")))?;
        s.get(name).cloned().ok_or_else(|| {
            let mut have: Vec<&str> = s.keys().map(|k| k.as_str()).collect();
            have.sort();
            Error::msg(format!("site `{site}` has no base tensor `{name}` (it has: {})", have.join(", ")))
        })
    }

    /// Stores a temporary and returns its handle.
    pub fn temp(&self, t: Tensor) -> TensorHandle {
        self.table.borrow_mut().temp(t)
    }

    /// Resolves a handle.
    pub fn get(&self, h: TensorHandle) -> Result<Tensor> {
        self.table.borrow().get(h)
    }

    /// Releases all temporaries: call at the end of every step.
    pub fn end_step(&self) {
        self.table.borrow_mut().end_step();
    }

    /// The elements of a tensor of `shape` a plugin asks for, refused in one line when
    /// they cannot fit in the device's memory (a LoRA rank of 10^9, say) instead of
    /// aborting the process on the allocation. For checks, all such tensors together.
    fn checked_size(&self, shape: &[usize]) -> Result<usize> {
        let what = || format!("a tensor of shape {shape:?}");
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::msg(format!("{} has more elements than this machine can count", what())))?;
        let bytes = Bytes::f32s(n as u128);
        match &self.placeholder {
            Some(total) => {
                let all = total.get() + bytes;
                total.set(all);
                if all > Bytes(64 << 20) {
                    memory::ensure_fits(
                        &format!("{} with the plugin tensors before it", what()),
                        all,
                        "",
                        &self.device,
                    )?;
                }
            }
            // Small tensors are never refused: reading the available memory costs more.
            None if bytes > Bytes(64 << 20) => memory::ensure_fits(&what(), bytes, "", &self.device)?,
            None => {}
        }
        Ok(n)
    }

    /// A variable drawn from an initializer with the host's RNG, made in place (no
    /// copy). For checks, zeros that touch no memory.
    pub fn init_var(&self, shape: &[usize], init: Init) -> Result<Var> {
        let n = self.checked_size(shape)?;
        if self.placeholder.is_some() {
            return Ok(Var::zeros(shape, self.dtype, &self.device)?);
        }
        let data: Vec<f32> = match init.kind {
            InitKind::ZEROS => vec![0.0; n],
            InitKind::ONES => vec![1.0; n],
            InitKind::CONSTANT => vec![init.a as f32; n],
            InitKind::UNIFORM => {
                if init.b < init.a {
                    bail!("uniform init needs lo <= hi, got [{}, {})", init.a, init.b);
                }
                let mut r = self.rng.borrow_mut();
                (0..n).map(|_| (init.a + (init.b - init.a) * r.uniform()) as f32).collect()
            }
            InitKind::NORMAL => {
                if init.b < 0.0 {
                    bail!("normal init needs std >= 0, got {}", init.b);
                }
                let mut r = self.rng.borrow_mut();
                (0..n).map(|_| (init.a + init.b * r.normal()) as f32).collect()
            }
            other => return Err(Error::msg(format!("host does not know initializer {other:?}"))),
        };
        let var = Var::from_vec(data, shape, &self.device)?;
        match self.dtype {
            DType::F32 => Ok(var),
            other => Ok(Var::from_tensor(&var.as_tensor().to_dtype(other)?)?),
        }
    }
}

/// A named persistent tensor of one instance.
#[derive(Debug, Clone)]
pub struct Owned {
    /// Local name, e.g. `model.layers.0.self_attn.q_proj.lora_A.weight`.
    pub name: String,
    /// The value.
    pub var: Var,
    /// Its handle in the table.
    pub handle: TensorHandle,
}

/// The parameters and buffers one plugin instance created, and the ones lent to it for
/// writing (an optimizer's parameters, during its call).
#[derive(Debug, Default)]
pub struct InstanceStore {
    params: RefCell<Vec<Owned>>,
    buffers: RefCell<Vec<Owned>>,
    lent: RefCell<Vec<TensorHandle>>,
}

impl InstanceStore {
    /// Whether the instance may overwrite `h` with `assign`: its own parameters and
    /// buffers, and what is lent to it now.
    pub fn may_write(&self, h: TensorHandle) -> bool {
        self.params.borrow().iter().chain(self.buffers.borrow().iter()).any(|o| o.handle == h)
            || self.lent.borrow().contains(&h)
    }

    /// Lends `handles` for writing until [`end_loan`](Self::end_loan).
    pub fn lend(&self, handles: impl IntoIterator<Item = TensorHandle>) {
        self.lent.borrow_mut().extend(handles);
    }

    /// Takes every loan back.
    pub fn end_loan(&self) {
        self.lent.borrow_mut().clear();
    }

    /// Parameters in creation order.
    pub fn params(&self) -> Vec<Owned> {
        self.params.borrow().clone()
    }

    /// Buffers in creation order.
    pub fn buffers(&self) -> Vec<Owned> {
        self.buffers.borrow().clone()
    }

    /// Creates a parameter (error on a duplicate name).
    pub fn new_param(&self, state: &HostState, name: &str, shape: &[usize], init: Init) -> Result<TensorHandle> {
        if self.params.borrow().iter().any(|p| p.name == name) {
            bail!("parameter `{name}` already exists in this instance");
        }
        let var = state.init_var(shape, init)?;
        let handle = state.table.borrow_mut().insert(Entry::Param(var.clone()));
        self.params.borrow_mut().push(Owned { name: name.to_string(), var, handle });
        Ok(handle)
    }

    /// Creates a buffer, or returns the existing one of that name (same shape required).
    pub fn new_buffer(&self, state: &HostState, name: &str, shape: &[usize], init: Init) -> Result<TensorHandle> {
        if let Some(b) = self.buffers.borrow().iter().find(|b| b.name == name) {
            if b.var.dims() != shape {
                return Err(Error::msg(format!(
                    "buffer `{name}` exists with shape {:?}, requested {shape:?}",
                    b.var.dims()
                )));
            }
            return Ok(b.handle);
        }
        let var = state.init_var(shape, init)?;
        let handle = state.table.borrow_mut().insert(Entry::Buffer(var.clone()));
        self.buffers.borrow_mut().push(Owned { name: name.to_string(), var, handle });
        Ok(handle)
    }

    /// Releases this instance's parameters and buffers from the table.
    pub fn release_all(&self, state: &HostState) {
        let mut table = state.table.borrow_mut();
        for o in self.params.borrow_mut().drain(..).chain(self.buffers.borrow_mut().drain(..)) {
            let _ = table.remove(o.handle);
        }
    }
}
