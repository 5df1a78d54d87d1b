//! The `stagecraft` command line.

mod cli;

use clap::Parser;

/// mimalloc keeps freed pages for the next allocation of their size class. A training
/// step frees and reallocates the same activation and gradient sizes every step; the
/// system allocator returns large blocks to the kernel at once (`munmap`) and takes
/// them back page fault by page fault, zeroing each page: measured on W1, a third
/// of the step time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    stagecraft_core::device::configure_cpu_threads();
    let args = cli::Cli::parse();
    #[cfg(unix)]
    if !args.outlives_its_reader() {
        end_quietly_on_closed_pipe();
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
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
