//! `stagecraft plugin list | inspect`.

use clap::Subcommand;
use stagecraft_core::plugin::{search_path, sha256_file, Compat, Library, Registry, Source};
use std::path::PathBuf;

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
}

pub fn run(cmd: PluginCmd) -> anyhow::Result<()> {
    match cmd {
        PluginCmd::List { paths } => list(paths),
        PluginCmd::Inspect { file } => inspect(&file),
    }
}

fn compat_note(lib: &Library) -> &'static str {
    match lib.compat {
        Some(Compat::OlderSdk) => " (older SDK, accepted)",
        _ => "",
    }
}

fn list(mut dirs: Vec<PathBuf>) -> anyhow::Result<()> {
    let mut reg = Registry::with_builtins(super::report_dir())?;
    dirs.extend(search_path());
    let errors = reg.load_dirs(&dirs);
    let rows: Vec<[String; 5]> = reg
        .plugins()
        .map(|(name, lib, info)| {
            [
                name.to_string(),
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
