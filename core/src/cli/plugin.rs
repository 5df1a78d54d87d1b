//! `stagecraft plugin list | inspect | new`, and the preflight load of a library in a child
//! process (`stagecraft plugin probe FILE`, hidden) that every command runs before it
//! opens a library file, so that one that crashes or hangs when loaded is one line.

use clap::Subcommand;
use stagecraft_core::error::Error;
use stagecraft_core::plugin::{search_path, sha256_file, Compat, Library, Preflight, Registry, SearchDir, Source};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a library may take to load in the preflight child process.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Subcommand)]
pub enum PluginCmd {
    /// Built-in plugins and plugins on the search path (STAGECRAFT_PLUGIN_PATH, then
    /// ./plugins): name, kind, version, SDK version, file.
    List {
        /// Extra directories to search (before the search path).
        #[arg(long = "path")]
        paths: Vec<PathBuf>,
    },
    /// One library file: its plugins, their config schemas, its sha256 and ABI status.
    Inspect {
        /// The .so file.
        file: PathBuf,
    },
    /// Write a new plugin crate: a working example plugin of the kind, unit tests, a
    /// README and a pipeline that trains with it.
    New(super::scaffold::NewArgs),
    /// Load one library file and exit: 0 when it loads, 1 with the error when it does not.
    /// Run in a child process before the host opens a library (a crash there cannot
    /// take the host down).
    #[command(hide = true)]
    Probe {
        /// The .so file.
        file: PathBuf,
    },
}

pub fn run(cmd: PluginCmd) -> anyhow::Result<()> {
    match cmd {
        PluginCmd::List { paths } => list(paths),
        PluginCmd::Inspect { file } => inspect(&file),
        PluginCmd::New(args) => super::scaffold::new_plugin(args),
        PluginCmd::Probe { file } => {
            Registry::empty(super::report_dir()).load_file(&file)?;
            Ok(())
        }
    }
}

/// The preflight check of the CLI's registries: load the library in a child process
/// first; a crash or a hang there is the library's load error.
pub fn preflight() -> Preflight {
    Box::new(|path: &Path| probe(path).map_err(|msg| Error::Load { path: path.to_path_buf(), msg }))
}

/// Loads `path` in a child process. A child that exits (loaded or not) is fine: the
/// host's own load then gives the same result, errors included. A child killed by a
/// signal, or still loading after [`PROBE_TIMEOUT`], is the error.
fn probe(path: &Path) -> Result<(), String> {
    use std::os::unix::process::ExitStatusExt;
    let cannot = |e: std::io::Error| format!("cannot be checked in a child process: {e}");
    let exe = std::env::current_exe().map_err(cannot)?;
    let mut child = Command::new(exe)
        .args(["plugin", "probe"])
        .arg(path)
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(cannot)?;
    let start = Instant::now();
    loop {
        match child.try_wait().map_err(cannot)? {
            Some(status) => {
                return match status.signal() {
                    Some(sig) => Err(format!("crashed while loading (signal {sig}{})", signal_name(sig))),
                    None => Ok(()),
                }
            }
            None if start.elapsed() > PROBE_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("still loading after {} s; given up", PROBE_TIMEOUT.as_secs()));
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// `, SIGSEGV` for the signals a crashing library dies of.
fn signal_name(sig: i32) -> &'static str {
    match sig {
        4 => ", SIGILL",
        5 => ", SIGTRAP",
        6 => ", SIGABRT",
        7 => ", SIGBUS",
        8 => ", SIGFPE",
        9 => ", SIGKILL",
        11 => ", SIGSEGV",
        _ => "",
    }
}

fn compat_note(lib: &Library) -> &'static str {
    match lib.compat {
        Some(Compat::OlderSdk) => " (older SDK, accepted)",
        _ => "",
    }
}

fn list(paths: Vec<PathBuf>) -> anyhow::Result<()> {
    let mut reg = Registry::with_builtins(super::report_dir())?;
    reg.set_preflight(preflight());
    let mut dirs: Vec<SearchDir> = paths.into_iter().map(SearchDir::required).collect();
    dirs.extend(search_path());
    let mut errors = reg.scan_dirs(&dirs);
    // Listing versions loads every library (each after its child-process preflight).
    errors.extend(reg.open_all());
    let rows: Vec<[String; 5]> = reg
        .plugins()
        .filter_map(|(name, kind, _)| reg.find(kind, name).ok())
        .map(|(lib, info)| {
            [
                info.name.to_string(),
                info.kind.to_string(),
                info.version.to_string(),
                format!("{}{}", lib.sdk, compat_note(lib)),
                lib.source.to_string(),
            ]
        })
        .collect();
    let header = ["NAME", "KIND", "VERSION", "SDK", "SOURCE"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    for r in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = r.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", line.join("  ").trim_end());
    }
    for e in &errors {
        eprintln!("warning: {e}");
    }
    Ok(())
}

fn inspect(file: &std::path::Path) -> anyhow::Result<()> {
    let mut reg = Registry::empty(super::report_dir());
    reg.set_preflight(preflight());
    let lib = reg.load_file(file)?;
    let Source::File { path } = &lib.source else { anyhow::bail!("not a file library") };
    println!("library   {}", lib.id);
    println!("file      {}", path.display());
    println!("sha256    {}", sha256_file(path)?);
    println!("sdk       {} (host {}){}", lib.sdk, stagecraft_sdk::SDK_VERSION, compat_note(lib));
    for p in &lib.plugins {
        println!();
        println!("{} {} {}", p.kind, p.name, p.version);
        println!("  {}", p.description);
        let schema: serde_json::Value = serde_json::from_str(&p.config_schema).unwrap_or(serde_json::Value::Null);
        let pretty = serde_json::to_string_pretty(&schema)?;
        println!("  config schema:");
        for l in pretty.lines() {
            println!("    {l}");
        }
    }
    Ok(())
}
