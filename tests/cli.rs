//! The `stagecraft` binary: `plugin list` and `plugin inspect`, and one-line errors.

mod support;

use std::process::Command;
use support::{compat, first_party, scratch};

fn stagecraft(args: &[&str], plugin_path: Option<&std::path::Path>) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stagecraft"));
    cmd.args(args).current_dir(scratch("cli-cwd")).env_remove("STAGECRAFT_PLUGIN_PATH");
    if let Some(p) = plugin_path {
        cmd.env("STAGECRAFT_PLUGIN_PATH", p);
    }
    let out = cmd.output().expect("run stagecraft");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn plugin_list_shows_builtins_and_search_path_plugins_with_versions() {
    let (ok, out, _) = stagecraft(&["plugin", "list"], None);
    assert!(ok);
    let header = out.lines().next().expect("header");
    assert_eq!(header.split_whitespace().collect::<Vec<_>>(), ["NAME", "KIND", "VERSION", "SDK", "SOURCE"]);
    for name in ["lora", "adamw", "sgd", "lion", "causal_lm", "completion", "classification"] {
        assert!(out.lines().any(|l| l.starts_with(name) && l.ends_with("built-in")), "{name} missing:\n{out}");
    }

    // Plugins on STAGECRAFT_PLUGIN_PATH; a broken file there is one warning line.
    let dir = scratch("cli-path");
    std::fs::copy(&compat().faulty, dir.join("libfaulty.so")).expect("copy");
    std::fs::copy(&compat().old, dir.join("libold.so")).expect("copy");
    std::fs::copy(&compat().old_mismatch, dir.join("libbroken.so")).expect("copy");
    let (ok, out, err) = stagecraft(&["plugin", "list"], Some(&dir));
    assert!(ok, "{err}");
    let old = out.lines().find(|l| l.starts_with("old_scale")).expect("old plugin listed");
    assert!(old.contains("1.0.0 (older SDK, accepted)") && old.contains("libold.so"), "{old}");
    assert!(out.lines().any(|l| l.starts_with("panicky") && l.contains("libfaulty.so")));
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(warnings[0].contains("libbroken.so") && warnings[0].contains("incompatible ABI"), "{err}");
}

#[test]
fn plugin_inspect_shows_schema_and_sha256() {
    let lora = first_party("lora");
    let (ok, out, err) = stagecraft(&["plugin", "inspect", lora.to_str().expect("utf-8 path")], None);
    assert!(ok, "{err}");
    let sha = out.lines().find_map(|l| l.strip_prefix("sha256")).expect("sha256 line").trim().to_string();
    assert_eq!(sha.len(), 64);
    assert!(out.contains("method lora"), "{out}");
    assert!(out.contains("\"targets\"") && out.contains("\"use_rslora\""), "config schema shown:\n{out}");

    let (ok, _, err) = stagecraft(&["plugin", "inspect", "no-such.so"], None);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no-such.so") && err.contains("cannot read"), "{err}");
}
