//! Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM.
//!
//! [`Interrupt::install`] registers handlers that only set a flag. The stage loop looks
//! at it before each optimizer step, so the step under way (and an evaluation due after
//! it) finishes; the run then records an `interrupt` event in `events.jsonl`, writes
//! the rolling resume checkpoint (durably, covering that event) and returns a
//! [`RunSummary`](super::RunSummary) whose `interrupted` says where it stopped. A second
//! signal while the first is being handled ends the process at once with the shell's
//! code (130 for SIGINT, 143 for SIGTERM): whatever was saved stays valid, since
//! checkpoints only become visible once complete and a resume cuts the logs back to
//! what its checkpoint covers.
//!
//! A library caller that installs nothing gets [`Interrupt::none`], which never fires;
//! [`Interrupt::raise`] sets the flag by hand (what a handler does).
//!
//! [`Interrupt::with_pause`] adds a pause point (`run --pause-at STAGE:STEP`): the run
//! stops there the same way, its cause [`Cause::Pause`] rather than a signal.
//!
//! ```
//! use stagecraft_core::pipeline::{Interrupt, Signal};
//! let stop = Interrupt::none();
//! assert_eq!(stop.pending(), None);
//! stop.raise(Signal::Term);
//! assert_eq!(stop.pending(), Some(Signal::Term));
//! assert_eq!((Signal::Int.exit_code(), Signal::Term.exit_code()), (130, 143));
//! ```

use crate::error::{Error, Result};
use signal_hook::consts::{SIGINT, SIGTERM};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// A signal that stops a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Int,
    /// SIGTERM (`kill`, a scheduler's preemption).
    Term,
}

impl Signal {
    /// `SIGINT` or `SIGTERM`.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
        }
    }

    /// The exit code a shell gives a process the signal ended: 128 + its number.
    pub fn exit_code(self) -> u8 {
        match self {
            Signal::Int => 130,
            Signal::Term => 143,
        }
    }

    fn number(self) -> usize {
        match self {
            Signal::Int => SIGINT as usize,
            Signal::Term => SIGTERM as usize,
        }
    }
}

/// Whether a stop was asked for, and by which signal (shared with the handlers), and
/// where the run pauses on its own, if anywhere.
#[derive(Debug, Clone, Default)]
pub struct Interrupt {
    /// Set by the first signal; a second one then exits at once.
    armed: Arc<AtomicBool>,
    /// The number of the last signal received (0: none).
    signal: Arc<AtomicUsize>,
    /// The point at which the run stops as on a signal, without one.
    pause: Option<PausePoint>,
}

/// `stagecraft run --pause-at STAGE:STEP`: the run stops once stage `stage` has taken
/// `step` steps (after that step's evaluation, if one is due), saving the resume
/// checkpoint there as a signal would. What population-based training trains to between
/// its decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PausePoint {
    /// The stage.
    pub stage: String,
    /// Its steps taken.
    pub step: u64,
}

impl std::str::FromStr for PausePoint {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("`{s}`: expected STAGE:STEP with STEP > 0, e.g. `adapt:40`");
        let (stage, step) = s.rsplit_once(':').ok_or_else(bad)?;
        let step: u64 = step.parse().map_err(|_| bad())?;
        if stage.is_empty() || step == 0 {
            return Err(bad());
        }
        Ok(PausePoint { stage: stage.to_string(), step })
    }
}

/// Why a run stopped before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A signal.
    Signal(Signal),
    /// Its pause point ([`PausePoint`]).
    Pause,
}

impl Cause {
    /// How events and messages name it.
    pub fn describe(self) -> String {
        match self {
            Cause::Signal(s) => format!("interrupted by {}", s.name()),
            Cause::Pause => "paused at its pause point".to_string(),
        }
    }
}

impl Interrupt {
    /// A flag no signal sets (only [`Interrupt::raise`]).
    pub fn none() -> Interrupt {
        Interrupt::default()
    }

    /// Handlers for SIGINT and SIGTERM: the first one sets the flag, a second exits the
    /// process at once with code 128 + its number.
    pub fn install() -> Result<Interrupt> {
        let stop = Interrupt::default();
        for (sig, code) in [(SIGINT, 130), (SIGTERM, 143)] {
            let failed = |e: std::io::Error| Error::msg(format!("cannot install the signal {sig} handler: {e}"));
            // Handlers run in the order they were registered: the exit comes first so
            // that it only fires once the flag was set by an earlier signal.
            signal_hook::flag::register_conditional_shutdown(sig, code, stop.armed.clone()).map_err(failed)?;
            signal_hook::flag::register(sig, stop.armed.clone()).map_err(failed)?;
            signal_hook::flag::register_usize(sig, stop.signal.clone(), sig as usize).map_err(failed)?;
        }
        Ok(stop)
    }

    /// Sets the flag as signal `s` would (without the second-signal exit).
    pub fn raise(&self, s: Signal) {
        self.signal.store(s.number(), Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }

    /// The same flag, and a pause when stage `p.stage` has taken `p.step` steps.
    pub fn with_pause(mut self, p: Option<PausePoint>) -> Interrupt {
        self.pause = p;
        self
    }

    /// Why stage `stage` stops before its next step after `steps` steps, if it does: a
    /// signal came, or this is the pause point.
    pub fn due(&self, stage: &str, steps: u64) -> Option<Cause> {
        if let Some(s) = self.pending() {
            return Some(Cause::Signal(s));
        }
        self.pause.as_ref().filter(|p| p.stage == stage && p.step == steps).map(|_| Cause::Pause)
    }

    /// The signal that asked the run to stop, if one did.
    pub fn pending(&self) -> Option<Signal> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            n if n == SIGTERM as usize => Some(Signal::Term),
            _ => Some(Signal::Int),
        }
    }
}

/// Where an interrupted run stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct Interruption {
    /// What stopped it.
    pub cause: Cause,
    /// The stage it stopped in.
    pub stage: String,
    /// The optimizer steps that stage had taken.
    pub step: u64,
    /// The resume checkpoint written then.
    pub checkpoint: std::path::PathBuf,
}
