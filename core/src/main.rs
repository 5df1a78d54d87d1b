//! The `stagecraft` command line.

mod cli;

use clap::Parser;

/// mimalloc keeps freed pages for the next allocation of their size class. A training
/// step frees and reallocates the same activation and gradient sizes every step; the
/// system allocator returns large blocks to the kernel at once (`munmap`) and takes
/// them back page fault by page fault, zeroing each page: measured on W1, a third
/// of the step time. See also [`keep_freed_memory`].
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in `mi_option_t` (`mimalloc.h`), the same index in
/// mimalloc 2 and 3.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Stops mimalloc from returning freed memory to the kernel. By default it does so
/// shortly after a free (10 ms in mimalloc 2, 1 s in mimalloc 3, whose arenas purge in
/// bulk), and a step that frees an activation and allocates the same size later faults
/// every page back in, zeroed: W2 full, 37k page faults and ~15% of the step. A
/// training process keeps its working set anyway; its peak stays the same. The option
/// is set only for the mimalloc majors whose option table is known (2 and 3), so a
/// different mimalloc is left as it is.
#[allow(unsafe_code)]
fn keep_freed_memory() {
    // SAFETY: plain calls into mimalloc's version and option table with a valid option
    // index; they take no pointers.
    unsafe {
        let major = libmimalloc_sys::mi_version() / 10_000;
        if (2..=3).contains(&major) {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
        }
    }
}

/// Whether log lines may carry ANSI colours: only on a terminal, and not when
/// `NO_COLOR` is set to anything but the empty string (no-color.org).
fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn main() -> std::process::ExitCode {
    stagecraft_core::cpu_threads::configure();
    keep_freed_memory();
    let args = cli::Cli::parse();
    #[cfg(unix)]
    if !args.outlives_its_reader() {
        end_quietly_on_closed_pipe();
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(colour_on_stderr())
        .with_target(false)
        .without_time()
        .init();
    let outcome = match stagecraft_core::cpu_threads::run_in_pool(|| cli::run(args)) {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("error: cannot start the CPU thread pool: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // Already said where the run was saved and how to resume it.
        Err(e) if e.downcast_ref::<cli::Interrupted>().is_some() => {
            std::process::ExitCode::from(e.downcast_ref::<cli::Interrupted>().map_or(1, |i| i.code))
        }
        // The table on stdout says which tests; this is the one-line summary.
        Err(e) if e.downcast_ref::<cli::DriftFound>().is_some() => {
            eprintln!("{e}");
            std::process::ExitCode::from(cli::DriftFound::EXIT_CODE)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            match e.downcast_ref::<cli::GateStopped>() {
                Some(_) => std::process::ExitCode::from(cli::GateStopped::EXIT_CODE),
                None => std::process::ExitCode::FAILURE,
            }
        }
    }
}

/// Restores the default action of SIGPIPE, which the Rust runtime ignores: a command
/// whose reader has gone (`stagecraft model sites ... | head -1`) then ends quietly at
/// its next write, as Unix tools do, instead of panicking on the `EPIPE` error.
#[cfg(unix)]
#[allow(unsafe_code)]
fn end_quietly_on_closed_pipe() {
    // SAFETY: `signal` with `SIG_DFL` installs no handler code; it runs before the
    // process starts any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
