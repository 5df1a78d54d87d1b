//! How the CPU's cores are shared between the thread that drives a step and the
//! threads that run its matrix products and fused ops.
//!
//! Three settings, each measured on 2-core machines (`stagecraft bench --profile`):
//!
//! 1. **Element-wise ops on the calling thread** ([`configure`]). candle 0.11 runs them
//!    on a pool of its own beside rayon's; with one thread per core in each, the two
//!    pools' spinning workers took each other's cores, half the step time.
//! 2. **The driving thread is a pool worker** ([`run_in_pool`]). A parallel op started
//!    from outside the pool waits until enough workers have woken up; one started by a
//!    worker runs its first part at once, and takes back the parts no other worker has
//!    picked up by the time it is done. On a virtual machine whose idle vCPUs halt, a
//!    sleeping worker took 2–3 ms to start after 20 ms of idleness: longer than a
//!    whole W2 product.
//! 3. **Active waiting during a step** ([`ActiveWait`]). Between two parallel ops the
//!    driving thread runs candle's element-wise ops alone; rayon's other workers then
//!    go to sleep within microseconds, and each next op waits for them to wake. During
//!    a step they poll for work instead, as OpenMP's threads do by default (PyTorch's
//!    pool): W1 full 192–216 → 166–190 ms per step, three alternating runs of each,
//!    and W1 LoRA 0.58× → 0.95× PyTorch's speed. `STAGECRAFT_CPU_WAIT=passive`
//!    turns this off (as `OMP_WAIT_POLICY=passive` does for OpenMP), for a machine whose
//!    cores are shared with other work.

use candle_core::Device;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The environment variable that picks how idle workers wait during a step.
pub const WAIT_POLICY_VAR: &str = "STAGECRAFT_CPU_WAIT";

/// Stack size of the pool's threads: the driving thread runs the whole command, as the
/// main thread (8 MiB by default) did.
const STACK_BYTES: usize = 16 << 20;

/// Configures candle's CPU threads; call it first thing in `main`, before any thread
/// starts and any tensor op runs.
///
/// candle 0.11 runs element-wise ops on a pool of its own (`CANDLE_NUM_THREADS`, default:
/// one thread per core) whose workers spin for 25,000 iterations before they sleep,
/// beside rayon's pool (`RAYON_NUM_THREADS`), which the matrix products and the fused
/// ops ([`crate::kernels`]) use. With one thread per core in each, a spinning element-wise
/// worker takes the core a GEMM thread needs, and the caller spins at the element-wise
/// pool's barrier waiting for a worker the scheduler has preempted: on 2 cores this took
/// half the step time. Unless the user sets `CANDLE_NUM_THREADS`, element-wise ops
/// therefore run on the calling thread, and rayon keeps every core for the GEMMs and the
/// fused ops.
pub fn configure() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Runs `f` on a worker of a rayon pool of one thread per core (`RAYON_NUM_THREADS`
/// overrides), so that every parallel op it starts begins on the calling thread.
/// Everything `f` runs in parallel uses this pool.
pub fn run_in_pool<T: Send>(f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    let pool = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("stagecraft-cpu-{i}"))
        .stack_size(STACK_BYTES)
        .build()
        .map_err(std::io::Error::other)?;
    Ok(pool.install(f))
}

/// While alive, the other workers of the calling thread's pool poll for work instead of
/// sleeping (see the module docs). Start one around each training or evaluation step;
/// it does nothing for a GPU (whose steps leave the CPU threads idle), outside a pool,
/// with one thread, or with `STAGECRAFT_CPU_WAIT=passive`.
#[must_use = "the workers stop polling when it is dropped"]
pub struct ActiveWait {
    stop: Option<Arc<AtomicBool>>,
}

impl ActiveWait {
    /// Starts polling on the other workers of the calling thread's pool, for a step on
    /// `device`.
    pub fn start(device: &Device) -> ActiveWait {
        let Some(driver) = rayon::current_thread_index() else { return ActiveWait { stop: None } };
        if !device.is_cpu() || rayon::current_num_threads() < 2 || passive_requested() {
            return ActiveWait { stop: None };
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        rayon::spawn_broadcast(move |_| poll(Arc::clone(&flag), driver));
        ActiveWait { stop: Some(stop) }
    }
}

impl Drop for ActiveWait {
    fn drop(&mut self) {
        if let Some(stop) = &self.stop {
            stop.store(true, Ordering::Relaxed);
        }
    }
}

/// How long a polling worker goes without finding work before it hands its thread back
/// to rayon (and queues its own successor).
const HAND_BACK: Duration = Duration::from_millis(1);

/// Polls the pool for work until `stop` is set. Not on the driving thread: were it to
/// poll, nothing would ever set the flag.
///
/// A worker may start this job while it waits inside another job for a half that a
/// different thread is computing (rayon runs pending jobs while it waits). Polling there
/// until the step ends would never let that outer job finish: so after [`HAND_BACK`]
/// without work the job returns, letting the worker see that its wait is over, and
/// queues a successor on the same worker, which then polls on at its top level.
fn poll(stop: Arc<AtomicBool>, driver: usize) {
    if rayon::current_thread_index() == Some(driver) {
        return;
    }
    let mut last_work = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            last_work = Instant::now();
        } else if last_work.elapsed() >= HAND_BACK {
            rayon::spawn(move || poll(stop, driver));
            return;
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Whether `STAGECRAFT_CPU_WAIT=passive` is set, read once per process.
fn passive_requested() -> bool {
    static PASSIVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PASSIVE.get_or_init(|| std::env::var(WAIT_POLICY_VAR).is_ok_and(|v| v.eq_ignore_ascii_case("passive")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn work_runs_and_finishes_under_active_wait() -> std::io::Result<()> {
        let total = run_in_pool(|| {
            (0..50u64)
                .map(|round| {
                    let _wait = ActiveWait::start(&Device::Cpu);
                    (0..1000u64).into_par_iter().map(|i| i * round).sum::<u64>()
                })
                .sum::<u64>()
        })?;
        assert_eq!(total, (0..50u64).sum::<u64>() * (0..1000u64).sum::<u64>());
        Ok(())
    }

    #[test]
    fn outside_a_pool_it_does_nothing() {
        let wait = ActiveWait::start(&Device::Cpu);
        assert!(wait.stop.is_none());
    }
}
