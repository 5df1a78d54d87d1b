//! The handle table: where the tensors that plugins refer to live.
//!
//! A [`TensorHandle`] is `generation << 32 | slot`. Releasing a slot bumps its
//! generation, so an old handle to it no longer resolves: a stale or forged handle is
//! an error, never a wrong tensor. Temporaries (op results) are released at the end of
//! every step; parameters and buffers live until their owner is dropped.

use crate::error::{Error, Result};
use candle_core::{Tensor, Var};
use stagecraft_sdk::TensorHandle;

/// What a slot holds.
#[derive(Debug, Clone)]
pub enum Entry {
    /// An op result or an input lent to a plugin for one call; released at step end.
    Temp(Tensor),
    /// A trainable parameter.
    Param(Var),
    /// A persistent non-trainable tensor (optimizer state).
    Buffer(Var),
}

impl Entry {
    /// The tensor (for vars, the var's current value).
    pub fn tensor(&self) -> &Tensor {
        match self {
            Entry::Temp(t) => t,
            Entry::Param(v) | Entry::Buffer(v) => v.as_tensor(),
        }
    }
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    entry: Option<Entry>,
}

/// Slots, a free list, and the list of live temporaries.
#[derive(Debug, Default)]
pub struct TensorTable {
    slots: Vec<Slot>,
    free: Vec<u32>,
    temps: Vec<u32>,
}

impl TensorTable {
    /// Stores an entry and returns its handle.
    pub fn insert(&mut self, entry: Entry) -> TensorHandle {
        let is_temp = matches!(entry, Entry::Temp(_));
        let index = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize].entry = Some(entry);
                i
            }
            None => {
                self.slots.push(Slot { generation: 0, entry: Some(entry) });
                (self.slots.len() - 1) as u32
            }
        };
        if is_temp {
            self.temps.push(index);
        }
        let generation = self.slots[index as usize].generation;
        TensorHandle(((generation as u64) << 32) | index as u64)
    }

    /// Stores a temporary.
    pub fn temp(&mut self, t: Tensor) -> TensorHandle {
        self.insert(Entry::Temp(t))
    }

    /// Resolves a handle.
    pub fn entry(&self, h: TensorHandle) -> Result<&Entry> {
        if h.is_none() {
            return Err(Error::msg("tensor handle is NONE where a tensor is required"));
        }
        let index = (h.0 & 0xFFFF_FFFF) as usize;
        let generation = (h.0 >> 32) as u32;
        let slot = self.slots.get(index).ok_or_else(|| {
            Error::msg(format!("invalid tensor handle {:#x}: no such slot (forged or corrupted)", h.0))
        })?;
        match &slot.entry {
            Some(e) if slot.generation == generation => Ok(e),
            _ if generation < slot.generation || slot.entry.is_none() => Err(Error::msg(format!(
                "stale tensor handle {:#x}: its tensor was released (temporaries live until the end of the step that made them)",
                h.0
            ))),
            _ => Err(Error::msg(format!("invalid tensor handle {:#x}: wrong generation (forged or corrupted)", h.0))),
        }
    }

    /// Resolves a handle to its tensor.
    pub fn get(&self, h: TensorHandle) -> Result<Tensor> {
        Ok(self.entry(h)?.tensor().clone())
    }

    /// Frees one slot (bumping its generation).
    pub fn remove(&mut self, h: TensorHandle) -> Result<Entry> {
        self.entry(h)?;
        let index = (h.0 & 0xFFFF_FFFF) as u32;
        let slot = &mut self.slots[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(index);
        slot.entry.take().ok_or_else(|| Error::msg("slot already empty"))
    }

    /// Releases a temporary early; params and buffers are refused.
    pub fn release_temp(&mut self, h: TensorHandle) -> Result<()> {
        match self.entry(h)? {
            Entry::Temp(_) => {
                let index = (h.0 & 0xFFFF_FFFF) as u32;
                self.temps.retain(|&i| i != index);
                self.remove(h).map(|_| ())
            }
            _ => Err(Error::msg("cannot release a parameter or buffer: it lives as long as its plugin instance")),
        }
    }

    /// Releases every temporary (end of a step).
    pub fn end_step(&mut self) {
        for index in std::mem::take(&mut self.temps) {
            let slot = &mut self.slots[index as usize];
            if matches!(slot.entry, Some(Entry::Temp(_))) {
                slot.entry = None;
                slot.generation = slot.generation.wrapping_add(1);
                self.free.push(index);
            }
        }
    }

    /// Number of live temporaries.
    pub fn live_temps(&self) -> usize {
        self.temps.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t() -> Tensor {
        Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).expect("zeros")
    }

    #[test]
    fn temporaries_go_stale_at_step_end() {
        let mut table = TensorTable::default();
        let h = table.temp(t());
        assert!(table.get(h).is_ok());
        table.end_step();
        let err = table.get(h).expect_err("stale");
        assert!(err.to_string().contains("stale"), "{err}");
        // The slot is reused with a new generation; the old handle stays invalid.
        let h2 = table.temp(t());
        assert_eq!(h2.0 & 0xFFFF_FFFF, h.0 & 0xFFFF_FFFF);
        assert!(table.get(h).is_err());
        assert!(table.get(h2).is_ok());
    }

    #[test]
    fn forged_handles_are_rejected() {
        let mut table = TensorTable::default();
        let h = table.temp(t());
        assert!(table.get(TensorHandle(12345)).expect_err("forged").to_string().contains("invalid"));
        assert!(table.get(TensorHandle(h.0 + (5 << 32))).expect_err("forged").to_string().contains("invalid"));
        assert!(table.get(TensorHandle::NONE).is_err());
    }

    #[test]
    fn params_survive_step_end_and_cannot_be_released() {
        let mut table = TensorTable::default();
        let p = table.insert(Entry::Param(Var::from_tensor(&t()).expect("var")));
        table.end_step();
        assert!(table.get(p).is_ok());
        assert!(table.release_temp(p).is_err());
    }
}
