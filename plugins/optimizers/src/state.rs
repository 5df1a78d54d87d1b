//! What the three optimizers share: state buffers keyed by parameter name, and
//! releasing each parameter's temporaries as soon as its update is applied.
//!
//! State lives only in host buffers (`<kind>.<param name>`), which the host checkpoints
//! and restores, so a resumed run continues with exactly the state it stopped with.
//! Releasing temporaries per parameter keeps the peak memory of a step at one
//! parameter's worth of scratch rather than the whole model's.

use stagecraft_sdk::prelude::*;
use std::collections::HashMap;

/// State buffers of every parameter, keyed by parameter name.
pub(crate) struct StateMap<S> {
    optimizer: &'static str,
    by_param: HashMap<String, S>,
}

impl<S> StateMap<S> {
    /// An empty map for the optimizer called `optimizer` (named in errors).
    pub(crate) fn new(optimizer: &'static str) -> Self {
        StateMap { optimizer, by_param: HashMap::new() }
    }

    /// Creates the state of every parameter with `make(name, shape)`.
    pub(crate) fn init(
        &mut self,
        host: Host<'_>,
        params: &[ParamSlot],
        mut make: impl FnMut(&str, &[usize]) -> Result<S>,
    ) -> Result<()> {
        for slot in params {
            let shape = host.tensor(slot.param).shape()?;
            let state = make(slot.name.as_str(), &shape)?;
            self.by_param.insert(slot.name.to_string(), state);
        }
        Ok(())
    }

    /// The state of a parameter.
    pub(crate) fn get(&self, slot: &ParamSlot) -> Result<&S> {
        self.by_param.get(slot.name.as_str()).ok_or_else(|| {
            Error(format!("{}: no state for parameter `{}` (it was not passed to init)", self.optimizer, slot.name))
        })
    }
}

/// A state buffer `<kind>.<param>` of `shape`, filled with zeros.
pub(crate) fn zeros_buffer(host: Host<'_>, kind: &str, param: &str, shape: &[usize]) -> Result<TensorHandle> {
    Ok(host.new_buffer(&format!("{kind}.{param}"), shape, Init::ZEROS)?.handle())
}

/// Releases the temporaries of one parameter's update once it is assigned.
///
/// `release` is an optional host op: a host without it frees temporaries at the end of
/// the step, so its "host lacks op" error only means less memory is saved, and is
/// ignored.
pub(crate) fn release_all(temps: Vec<Tensor<'_>>) {
    for t in temps {
        let _ = t.release();
    }
}
