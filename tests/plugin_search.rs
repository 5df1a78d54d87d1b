//! Libraries on the plugin search path: scanning reads names without running plugin
//! code, a library is opened only when a pipeline names one of its plugins, a library
//! that crashes when loaded is one line (never the end of the host), and each oddity
//! on the path (a FIFO, a directory or a dangling symlink named like a library, a
//! symlink loop, a missing directory) is one warning and never a hang.

mod support;

use stagecraft_core::plugin::{Registry, SearchDir};
use stagecraft_sdk::PluginKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{first_party, root, scratch};

/// What a `stagecraft` run gave: exit status, stdout, stderr.
struct Output {
    status: std::process::ExitStatus,
    out: String,
    err: String,
}

impl Output {
    fn warnings(&self) -> Vec<&str> {
        // `plugin list` prints `warning: ...`; other commands log ` WARN ...`.
        self.err.lines().filter(|l| l.contains("warning:") || l.contains("WARN")).collect()
    }
}

/// Runs `stagecraft` in `cwd` with `STAGECRAFT_PLUGIN_PATH` set to `plugin_path` (or
/// unset); kills it and fails the test if it has not finished within 60 s.
fn stagecraft(cwd: &Path, args: &[&str], plugin_path: Option<&str>) -> Output {
    let logs = scratch("plugin-search-logs");
    let (out_file, err_file) = (logs.join("stdout"), logs.join("stderr"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stagecraft"));
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("STAGECRAFT_PLUGIN_PATH")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_file).expect("stdout file"))
        .stderr(std::fs::File::create(&err_file).expect("stderr file"));
    if let Some(p) = plugin_path {
        cmd.env("STAGECRAFT_PLUGIN_PATH", p);
    }
    let mut child = cmd.spawn().expect("run stagecraft");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for stagecraft") {
            break status;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`stagecraft {}` still running after 60 s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    Output { status, out: read(&out_file), err: read(&err_file) }
}

/// A copy of a first-party library with every byte of its code inverted: it still has
/// its symbols and manifest, but running any of its code crashes (or at least fails).
fn corrupted(name: &str, to: &Path) -> PathBuf {
    use object::{Object, ObjectSection};
    let mut bytes = std::fs::read(first_party(name)).expect("read library");
    let (start, len) = {
        let file = object::File::parse(&*bytes).expect("an ELF file");
        let text = file.section_by_name(".text").expect("a .text section");
        text.file_range().expect("a .text in the file")
    };
    for b in &mut bytes[start as usize..(start + len) as usize] {
        *b ^= 0xff;
    }
    std::fs::write(to, bytes).expect("write corrupted copy");
    to.to_path_buf()
}

/// The default pipeline with its LoRA adapter replaced by IA3.
fn ia3_pipeline(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(root().join("examples/pipelines/default.toml")).expect("default pipeline");
    let lora = "plugin = \"lora\", targets = [\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\", \"gate_proj\", \"up_proj\", \"down_proj\"], r = 16, alpha = 32";
    assert!(text.contains(lora), "the default pipeline's adapter changed; update this test");
    let path = dir.join("ia3.toml");
    std::fs::write(&path, text.replace(lora, "plugin = \"ia3\", targets = [\"k_proj\", \"v_proj\"]")).expect("write");
    path
}

fn utf8(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn a_library_that_crashes_when_loaded_is_one_line_and_is_not_opened_unless_named() {
    let cwd = scratch("crash-cwd");
    let dir = scratch("crash-path");
    let bad = corrupted("ia3", &dir.join("libbroken_ia3.so"));
    std::fs::copy(first_party("lora"), dir.join("libstagecraft_lora.so")).expect("copy");

    // Loading it the way every command used to crashes; now it is one line, exit 1.
    let o = stagecraft(&cwd, &["plugin", "inspect", utf8(&bad)], None);
    assert_eq!(o.status.code(), Some(1), "no crash of the host: {}", o.err);
    assert_eq!(o.err.trim().lines().count(), 1, "{}", o.err);
    assert!(o.err.contains("libbroken_ia3.so"), "{}", o.err);

    // `plugin list` lists the others, and the broken one in one warning line.
    let o = stagecraft(&cwd, &["plugin", "list"], Some(utf8(&dir)));
    assert!(o.status.success(), "{}", o.err);
    assert_eq!(o.warnings().len(), 1, "{}", o.err);
    assert!(o.warnings()[0].contains("libbroken_ia3.so"), "{}", o.err);
    let lora = o.out.lines().find(|l| l.starts_with("lora ")).expect("lora listed");
    assert!(lora.ends_with("libstagecraft_lora.so"), "{lora}");
    assert!(o.out.lines().any(|l| l.starts_with("adamw ") && l.ends_with("built-in")), "{}", o.out);

    // A pipeline that does not name it never opens it.
    let o = stagecraft(&cwd, &["run", "--check"], Some(utf8(&dir)));
    assert!(o.status.success(), "{}", o.err);
    assert!(o.warnings().is_empty(), "{}", o.err);

    // One that names it (it replaces the built-in `ia3`) is refused in one line.
    let pipeline = ia3_pipeline(&cwd);
    let o = stagecraft(&cwd, &["run", "--check", utf8(&pipeline)], Some(utf8(&dir)));
    assert_eq!(o.status.code(), Some(1), "no crash of the host: {}", o.err);
    let errors: Vec<&str> = o.err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{}", o.err);
    assert!(errors[0].contains("libbroken_ia3.so") && errors[0].contains("adapter `ia3`"), "{}", o.err);

    // With a good build of it there instead, the same pipeline checks.
    std::fs::remove_file(&bad).expect("rm");
    std::fs::copy(first_party("ia3"), dir.join("libstagecraft_ia3.so")).expect("copy");
    let o = stagecraft(&cwd, &["run", "--check", utf8(&pipeline)], Some(utf8(&dir)));
    assert!(o.status.success(), "{}", o.err);
}

#[test]
fn scanning_opens_nothing_and_a_lookup_opens_only_the_library_it_names() {
    let dir = scratch("lazy-path");
    corrupted("ia3", &dir.join("libbroken_ia3.so"));
    std::fs::copy(first_party("lora"), dir.join("libstagecraft_lora.so")).expect("copy");
    let mut reg = Registry::with_builtins(scratch("lazy-reports")).expect("registry");
    let builtins = reg.libraries().count();

    // Scanning reads the names from the files: nothing opened (the broken one would crash).
    let errors = reg.scan_dirs(&[SearchDir::required(&dir)]);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(reg.libraries().count(), builtins);
    let from = |name: &str| reg.plugins().find(|(n, _, _)| *n == name).map(|(_, _, s)| s.to_string());
    assert!(from("ia3").is_some_and(|s| s.ends_with("libbroken_ia3.so")), "{:?}", from("ia3"));
    assert!(from("lora").is_some_and(|s| s.ends_with("libstagecraft_lora.so")), "{:?}", from("lora"));

    // Built-ins need no file; `lora` opens its library and nothing else.
    reg.find(PluginKind::OPTIMIZER, "adamw").expect("built-in adamw");
    assert_eq!(reg.libraries().count(), builtins);
    let (lib, _) = reg.find(PluginKind::METHOD, "lora").expect("lora from its file");
    assert!(lib.source.to_string().ends_with("libstagecraft_lora.so"));
    assert_eq!(reg.libraries().count(), builtins + 1);

    // Two files with the same plugin names: the second is an error naming both.
    let other = scratch("lazy-dup");
    std::fs::copy(first_party("lora"), other.join("liblora_copy.so")).expect("copy");
    let errors = reg.scan_dirs(&[SearchDir::required(&other)]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let msg = errors[0].to_string();
    assert!(msg.contains("is provided by both") && msg.contains("libstagecraft_lora.so"), "{msg}");
    assert!(msg.contains("liblora_copy.so"), "{msg}");
}

#[test]
fn a_fifo_named_like_a_library_is_an_error_at_once() {
    let cwd = scratch("fifo-cwd");
    let dir = scratch("fifo-path");
    let fifo = dir.join("x.so");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("run mkfifo");
    assert!(made.success(), "mkfifo failed");

    let o = stagecraft(&cwd, &["plugin", "inspect", utf8(&fifo)], None);
    assert_eq!(o.status.code(), Some(1), "{}", o.err);
    assert_eq!(o.err.trim().lines().count(), 1, "{}", o.err);
    assert!(o.err.contains("x.so: not a regular file (a FIFO)"), "{}", o.err);

    let o = stagecraft(&cwd, &["plugin", "list"], Some(utf8(&dir)));
    assert!(o.status.success(), "{}", o.err);
    assert_eq!(o.warnings().len(), 1, "{}", o.err);
    assert!(o.warnings()[0].contains("x.so: not a regular file (a FIFO)"), "{}", o.err);

    let o = stagecraft(&cwd, &["run", "--check"], Some(utf8(&dir)));
    assert!(o.status.success(), "{}", o.err);
    assert!(o.err.contains("x.so: not a regular file (a FIFO)"), "{}", o.err);
}

#[test]
fn odd_entries_on_the_search_path_are_one_warning_each() {
    let cwd = scratch("odd-cwd");
    let dir = scratch("odd-path");
    std::fs::create_dir(dir.join("d.so")).expect("mkdir");
    std::os::unix::fs::symlink(dir.join("nowhere.so"), dir.join("dangling.so")).expect("symlink");
    std::os::unix::fs::symlink(dir.join("loop.so"), dir.join("loop.so")).expect("symlink");
    std::fs::write(dir.join("notes.txt"), "not a library name: skipped").expect("write");
    let missing = dir.join("no-such-dir");
    let path = format!("{}:{}", utf8(&dir), utf8(&missing));

    let o = stagecraft(&cwd, &["plugin", "list"], Some(&path));
    assert!(o.status.success(), "{}", o.err);
    let warnings = o.warnings();
    assert_eq!(warnings.len(), 4, "{}", o.err);
    let one = |what: &str, needle: &str| {
        let hits: Vec<&&str> = warnings.iter().filter(|w| w.contains(needle)).collect();
        assert_eq!(hits.len(), 1, "{what}: {}", o.err);
    };
    one("a directory", "d.so: is a directory");
    one("a dangling symlink", "dangling.so: dangling symbolic link");
    one("a symlink loop", "loop.so: symbolic link cannot be followed");
    one("a missing directory", "no-such-dir: plugin directory does not exist");
    assert!(o.out.lines().any(|l| l.starts_with("lora ") && l.ends_with("built-in")), "{}", o.out);

    // A run still checks, with the same warnings.
    let o = stagecraft(&cwd, &["run", "--check"], Some(&path));
    assert!(o.status.success(), "{}", o.err);
    assert_eq!(o.warnings().len(), 4, "{}", o.err);

    // No `./plugins` and no STAGECRAFT_PLUGIN_PATH is normal: not a word.
    let o = stagecraft(&cwd, &["plugin", "list"], None);
    assert!(o.status.success(), "{}", o.err);
    assert!(o.warnings().is_empty(), "{}", o.err);
}

#[test]
fn a_library_of_an_older_sdk_opened_first_does_not_spoil_the_check_of_the_next() {
    // Lazy opening makes the order of opening the pipeline's: an older library first
    // must not make abi_stable refuse a current one after it.
    let c = support::compat();
    let mut reg = Registry::empty(scratch("older-first"));
    reg.load_file(&c.old).expect("older plugin loads");
    reg.load_file(&c.faulty).expect("a current plugin still loads after it");
}

#[test]
fn a_pipelines_plugin_paths_are_searched_relative_to_its_folder() {
    let cwd = scratch("paths-cwd");
    let project = scratch("paths-project");
    std::fs::create_dir(project.join("libs")).expect("mkdir");
    let bad = corrupted("ia3", &project.join("libs/libbroken_ia3.so"));
    let text = std::fs::read_to_string(ia3_pipeline(&project)).expect("read");
    let pipeline = project.join("ia3.toml");
    std::fs::write(&pipeline, format!("{text}\n[plugins]\npaths = [\"libs\"]\n")).expect("write");

    // Run from elsewhere: `libs` is the pipeline's folder's, and its `ia3` is the one used.
    let o = stagecraft(&cwd, &["run", "--check", utf8(&pipeline)], None);
    assert_eq!(o.status.code(), Some(1), "{}", o.err);
    assert!(o.err.contains("libbroken_ia3.so") && o.err.contains("adapter `ia3`"), "{}", o.err);

    // A good build there instead checks.
    std::fs::remove_file(&bad).expect("rm");
    std::fs::copy(first_party("ia3"), project.join("libs/libstagecraft_ia3.so")).expect("copy");
    let o = stagecraft(&cwd, &["run", "--check", utf8(&pipeline)], None);
    assert!(o.status.success(), "{}", o.err);

    // STAGECRAFT_PLUGIN_PATH comes first: its library is used, the pipeline's is a warning.
    let env = scratch("paths-env");
    corrupted("ia3", &env.join("libbroken_ia3.so"));
    let o = stagecraft(&cwd, &["run", "--check", utf8(&pipeline)], Some(utf8(&env)));
    assert_eq!(o.status.code(), Some(1), "{}", o.err);
    assert!(o.err.lines().any(|l| l.starts_with("error:") && l.contains("libbroken_ia3.so")), "{}", o.err);
    assert!(o.warnings().iter().any(|w| w.contains("libstagecraft_ia3.so")), "{}", o.err);
}

/// A project folder with `libs/` holding a copy of first-party `ia3` (`libstagecraft_ia3.so`,
/// or `corrupt` made by inverting its code) and the IA3 pipeline searching `libs`, with
/// `plugins` appended to its `[plugins]` table.
fn pinned_project(name: &str, corrupt: bool, plugins: &str) -> (PathBuf, PathBuf) {
    let project = scratch(name);
    std::fs::create_dir(project.join("libs")).expect("mkdir");
    let lib = project.join("libs/libstagecraft_ia3.so");
    if corrupt {
        corrupted("ia3", &lib);
    } else {
        std::fs::copy(first_party("ia3"), &lib).expect("copy");
    }
    let text = std::fs::read_to_string(ia3_pipeline(&project)).expect("read");
    let pipeline = project.join("pinned.toml");
    std::fs::write(&pipeline, format!("{text}\n[plugins]\npaths = [\"libs\"]\n{plugins}\n")).expect("write");
    (pipeline, lib)
}

fn sha256(p: &Path) -> String {
    stagecraft_core::plugin::sha256_file(p).expect("sha256")
}

#[test]
fn a_tampered_library_is_refused_by_its_pin_before_it_is_loaded() {
    let cwd = scratch("pin-cwd");
    let good = sha256(&first_party("ia3"));
    let (pipeline, lib) =
        pinned_project("pin-tampered", true, &format!("[plugins.pins]\n\"libstagecraft_ia3.so\" = \"{good}\""));
    let bad = sha256(&lib);

    // Its code is inverted: had it been loaded, even in the child process, the error would say so.
    for args in
        [&["run", "--check", utf8(&pipeline)][..], &["run", utf8(&pipeline), "--run-dir", utf8(&cwd.join("run"))]]
    {
        let o = stagecraft(&cwd, args, None);
        assert_eq!(o.status.code(), Some(1), "{}", o.err);
        let errors: Vec<&str> = o.err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{}", o.err);
        for needle in ["libs/libstagecraft_ia3.so", &good, &bad, "does not match its pin", "pinned.toml"] {
            assert!(errors[0].contains(needle), "{needle}: {}", o.err);
        }
        assert!(!cwd.join("run/checkpoints").exists(), "nothing trained");
    }

    // The good build passes the same pin, also given by library id and in capitals.
    let (pipeline, _) =
        pinned_project("pin-good", false, &format!("[plugins.pins]\nia3 = \"{}\"", good.to_uppercase()));
    let o = stagecraft(&cwd, &["run", "--check", utf8(&pipeline)], None);
    assert!(o.status.success(), "{}", o.err);
    assert!(o.warnings().is_empty(), "{}", o.err);

    // A pin that is not a sha256 is a config error at its line.
    let (pipeline, _) = pinned_project("pin-malformed", false, "[plugins.pins]\nia3 = \"abc\"");
    let o = stagecraft(&cwd, &["run", "--check", utf8(&pipeline)], None);
    assert_eq!(o.status.code(), Some(1), "{}", o.err);
    assert!(o.err.contains("pinned.toml:") && o.err.contains("64 hexadecimal digits"), "{}", o.err);

    // A pin naming no library the pipeline loads (here: a plugin built into the binary) is a warning.
    let (pipeline, _) =
        pinned_project("pin-unused", false, &format!("[plugins.pins]\nia3 = \"{good}\"\nlora = \"{good}\""));
    let o = stagecraft(&cwd, &["run", "--check", utf8(&pipeline)], None);
    assert!(o.status.success(), "{}", o.err);
    assert!(o.warnings().iter().any(|w| w.contains("\"lora\" names no plugin library file")), "{}", o.err);
}

#[test]
fn require_pinned_refuses_an_unpinned_library_and_exempts_built_ins() {
    let cwd = scratch("require-cwd");
    let (pipeline, lib) = pinned_project("require-unpinned", false, "require_pinned = true");
    let o = stagecraft(&cwd, &["run", "--check", utf8(&pipeline)], None);
    assert_eq!(o.status.code(), Some(1), "{}", o.err);
    let errors: Vec<&str> = o.err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{}", o.err);
    for needle in ["libs/libstagecraft_ia3.so", "not pinned", "require_pinned", &sha256(&lib)] {
        assert!(errors[0].contains(needle), "{needle}: {}", o.err);
    }

    // Pinned, it passes; the built-in optimizer and objective need no pin.
    let pin = format!("require_pinned = true\n[plugins.pins]\n\"libstagecraft_ia3.so\" = \"{}\"", sha256(&lib));
    let (pipeline, _) = pinned_project("require-pinned", false, &pin);
    let o = stagecraft(&cwd, &["run", "--check", utf8(&pipeline)], None);
    assert!(o.status.success(), "{}", o.err);
}

#[test]
fn search_path_entries_that_are_not_folders_warn_with_what_to_use_instead() {
    let cwd = scratch("entries-cwd");
    let dir = scratch("entries-path");
    let so = dir.join("libstagecraft_lora.so");
    std::fs::copy(first_party("lora"), &so).expect("copy");
    let text = dir.join("notes.txt");
    std::fs::write(&text, "x").expect("write");
    let path = format!("{}:{}", utf8(&so), utf8(&text));

    let o = stagecraft(&cwd, &["plugin", "list"], Some(&path));
    assert!(o.status.success(), "{}", o.err);
    let w = o.warnings();
    assert_eq!(w.len(), 2, "{}", o.err);
    assert!(
        w[0].contains("libstagecraft_lora.so: not a folder but a library file (STAGECRAFT_PLUGIN_PATH)"),
        "{}",
        o.err
    );
    assert!(w[0].contains(&format!("use its folder {}", utf8(&dir))), "{}", o.err);
    assert!(w[1].contains("notes.txt: not a folder (STAGECRAFT_PLUGIN_PATH)"), "{}", o.err);

    // A missing folder in a pipeline's `[plugins] paths` warns too, naming the key.
    let pipeline = cwd.join("p.toml");
    let default = std::fs::read_to_string(root().join("examples/pipelines/default.toml")).expect("read");
    std::fs::write(&pipeline, format!("{default}\n[plugins]\npaths = [\"no-such-libs\"]\n")).expect("write");
    let o = stagecraft(&cwd, &["run", "--check", utf8(&pipeline)], None);
    assert!(o.status.success(), "{}", o.err);
    assert_eq!(o.warnings().len(), 1, "{}", o.err);
    assert!(o.warnings()[0].contains("no-such-libs: plugin directory does not exist ([plugins] paths)"), "{}", o.err);
}

#[test]
fn a_plugin_not_found_lists_every_place_searched_and_what_was_there() {
    let cwd = scratch("notfound-cwd");
    let dir = scratch("notfound-path");
    std::fs::copy(first_party("optimizers"), dir.join("libstagecraft_optimizers.so")).expect("copy");
    let missing = dir.join("missing");
    let pipeline = ia3_pipeline(&cwd);
    let text = std::fs::read_to_string(&pipeline).expect("read").replace("plugin = \"ia3\"", "plugin = \"bottle\"");
    std::fs::write(&pipeline, text).expect("write");

    let o = stagecraft(&cwd, &["run", "--check", utf8(&pipeline)], Some(&format!("{}:{}", utf8(&dir), utf8(&missing))));
    assert_eq!(o.status.code(), Some(1), "{}", o.err);
    let error = o.err.lines().find(|l| l.starts_with("error:")).expect("an error line");
    for needle in [
        "no method plugin named `bottle`",
        "built in: bottleneck, ia3, lora, prefix_tuning, prompt_tuning;",
        &format!("{} (STAGECRAFT_PLUGIN_PATH): adamw (optimizer), lion (optimizer), sgd (optimizer)", utf8(&dir)),
        &format!("{} (STAGECRAFT_PLUGIN_PATH): does not exist", utf8(&missing)),
        "plugins (default): does not exist",
    ] {
        assert!(error.contains(needle), "{needle}: {error}");
    }
}

#[test]
fn a_duplicate_library_warning_names_every_plugin_it_provides_again() {
    let cwd = scratch("dups-cwd");
    let (a, b) = (scratch("dups-a"), scratch("dups-b"));
    std::fs::copy(first_party("optimizers"), a.join("libstagecraft_optimizers.so")).expect("copy");
    std::fs::copy(first_party("optimizers"), b.join("libteam_optimizers.so")).expect("copy");
    let o = stagecraft(&cwd, &["plugin", "list"], Some(&format!("{}:{}", utf8(&a), utf8(&b))));
    assert!(o.status.success(), "{}", o.err);
    assert_eq!(o.warnings().len(), 1, "{}", o.err);
    let w = o.warnings()[0];
    assert!(w.contains("plugins `adamw`, `lion`, `sgd` are provided by both"), "{w}");
    assert!(w.contains("libstagecraft_optimizers.so") && w.contains("libteam_optimizers.so"), "{w}");
}
