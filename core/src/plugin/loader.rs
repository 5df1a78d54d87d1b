//! Reading and loading plugin libraries from `.so` files.
//!
//! Reading runs none of a library's code ([`read_library_file`]):
//! 1. Refuse what is not a regular file before opening it (a FIFO named `x.so` would
//!    block the read forever; a directory, a socket, a device, a dangling symlink or a
//!    symlink loop are one-line errors too).
//! 2. Parse the file and find its exported `stagecraft_plugin_<id>` symbol (no such
//!    symbol: "not a stagecraft plugin"; not an object file: "not a shared library").
//! 3. Read its manifest, the data-only static `stagecraft_manifest_<id>` that the SDK's
//!    `export_plugin!` writes: the names and kinds of its plugins. Libraries built
//!    before the SDK wrote manifests have none; that is not an error.
//!
//! Loading ([`open_library`]) runs its code:
//! 1. `dlopen` it and read the abi_stable header behind its symbol.
//! 2. Check the SDK major version, then the layout of the root module and everything
//!    reachable from it. A plugin built against an *older* SDK 1.x fails abi_stable's
//!    check ("too many fields": the host's types have more), so on a layout error the
//!    check is repeated with the roles swapped; if the plugin's layout is a prefix of
//!    the host's, the library is used with `unchecked_layout`.
//! 3. An incompatible library gives one line (plugin, both SDK versions, the first
//!    expected/found) and the full abi_stable report goes to a file named in that line.
//!
//! Libraries are never unloaded (`dlclose` is unsound with thread-locals and a no-op on
//! some platforms).

use crate::error::{Error, Result};
use abi_stable::{
    abi_stability::abi_checking::{check_layout_compatibility_with_globals, CheckingGlobals},
    library::{AbiHeaderRef, LibraryError, RawLibrary},
    sabi_types::VersionNumber,
    StableAbi,
};
use stagecraft_sdk::abi::PluginLibRef;
use stagecraft_sdk::export::{valid_name, MANIFEST_HEADER, MANIFEST_SYMBOL_PREFIX};
use stagecraft_sdk::{PluginKind, SdkVersion, SDK_VERSION};
use std::path::{Path, PathBuf};

/// Prefix of the symbol a plugin library exports.
pub const SYMBOL_PREFIX: &str = "stagecraft_plugin_";

/// How a library's ABI relates to the host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compat {
    /// abi_stable's own check passed (same or newer SDK minor).
    Checked,
    /// Built against an older SDK 1.x: accepted by the swapped-roles check.
    OlderSdk,
}

/// A library loaded from a file.
pub struct LoadedLibrary {
    /// The id from its symbol (`stagecraft_plugin_<id>`).
    pub id: String,
    /// The file.
    pub path: PathBuf,
    /// SDK version it was built against.
    pub sdk: SdkVersion,
    /// How its ABI was accepted.
    pub compat: Compat,
    /// Its root module.
    pub lib: PluginLibRef,
}

/// One plugin named by a library's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Its registered name.
    pub name: String,
    /// Its kind.
    pub kind: PluginKind,
}

/// What a library file says about itself, read from its bytes without loading it.
#[derive(Debug, Clone)]
pub struct LibraryFile {
    /// The file.
    pub path: PathBuf,
    /// The id from its symbol (`stagecraft_plugin_<id>`).
    pub id: String,
    /// Its plugins, from its `stagecraft_manifest_<id>` static; `None` for a library
    /// built before the SDK wrote manifests (only loading it tells what it provides).
    pub manifest: Option<Vec<ManifestEntry>>,
}

/// Refuses a path that is not a regular file (following symlinks) without opening it:
/// a directory, a FIFO, a socket or a device named like a library, a dangling symlink
/// or a symlink loop is one line naming the path.
pub fn check_regular_file(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) => match file_kind(meta.file_type()) {
            None => Ok(()),
            Some("a directory") => Err(load_err(path, "is a directory, not a library file")),
            Some(what) => Err(load_err(path, format!("not a regular file ({what})"))),
        },
        Err(e) => {
            let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
            Err(load_err(
                path,
                match (link, e.kind()) {
                    (true, std::io::ErrorKind::NotFound) => "dangling symbolic link (its target does not exist)".into(),
                    (true, _) => format!("symbolic link cannot be followed: {e}"),
                    (false, _) => format!("cannot read: {e}"),
                },
            ))
        }
    }
}

/// What a file type is when it is not a regular file.
fn file_kind(t: std::fs::FileType) -> Option<&'static str> {
    #[cfg(unix)]
    use std::os::unix::fs::FileTypeExt;
    if t.is_file() {
        return None;
    }
    if t.is_dir() {
        return Some("a directory");
    }
    #[cfg(unix)]
    {
        if t.is_fifo() {
            return Some("a FIFO");
        }
        if t.is_socket() {
            return Some("a socket");
        }
        if t.is_char_device() {
            return Some("a character device");
        }
        if t.is_block_device() {
            return Some("a block device");
        }
    }
    Some("not a file")
}

/// Reads a library file's id and manifest from its bytes; runs none of its code.
pub fn read_library_file(path: &Path) -> Result<LibraryFile> {
    check_regular_file(path)?;
    let bytes = std::fs::read(path).map_err(|e| load_err(path, format!("cannot read: {e}")))?;
    let file = object::File::parse(&*bytes).map_err(|e| load_err(path, format!("not a shared library ({e})")))?;
    let ids = exported_ids(path, &file)?;
    let id = match ids.as_slice() {
        [] => {
            return Err(load_err(path, format!("not a stagecraft plugin: it exports no `{SYMBOL_PREFIX}<id>` symbol")))
        }
        [one] => one.clone(),
        many => {
            return Err(load_err(path, format!("exports several plugin libraries ({}); one per file", many.join(", "))))
        }
    };
    let manifest = read_manifest(path, &file, &id)?;
    Ok(LibraryFile { path: path.to_path_buf(), id, manifest })
}

/// The manifest static of library `id`, if the file has one.
fn read_manifest(path: &Path, file: &object::File, id: &str) -> Result<Option<Vec<ManifestEntry>>> {
    use object::{Object, ObjectSection, ObjectSymbol};
    let name = format!("{MANIFEST_SYMBOL_PREFIX}{id}");
    let Some(symbol) =
        file.dynamic_symbols().chain(file.symbols()).find(|s| !s.is_undefined() && s.name() == Ok(name.as_str()))
    else {
        return Ok(None);
    };
    let unreadable = |why: &str| load_err(path, format!("its plugin manifest `{name}` is unreadable ({why})"));
    let section = symbol
        .section_index()
        .and_then(|i| file.section_by_index(i).ok())
        .ok_or_else(|| unreadable("it is in no section"))?;
    let bytes = section
        .data_range(symbol.address(), symbol.size())
        .ok()
        .flatten()
        .ok_or_else(|| unreadable("it lies outside its section"))?;
    let text = std::str::from_utf8(bytes).map_err(|_| unreadable("not UTF-8"))?;
    parse_manifest(text).map(Some).map_err(|why| unreadable(&why))
}

/// Parses a manifest: [`MANIFEST_HEADER`], then `<kind> <name>` lines.
fn parse_manifest(text: &str) -> std::result::Result<Vec<ManifestEntry>, String> {
    let body =
        text.strip_prefix(MANIFEST_HEADER).ok_or_else(|| format!("it does not start with {MANIFEST_HEADER:?}"))?;
    body.lines()
        .map(|line| {
            let (kind, name) = line.split_once(' ').ok_or_else(|| format!("line {line:?} is not `<kind> <name>`"))?;
            let kind = PluginKind::from_name(kind).ok_or_else(|| format!("unknown plugin kind `{kind}`"))?;
            if !valid_name(name) {
                return Err(format!("plugin name `{name}` is not lowercase snake_case"));
            }
            Ok(ManifestEntry { name: name.to_string(), kind })
        })
        .collect()
}

/// sha256 of a file, hex (for provenance: `plugin inspect`, run records, pinning).
pub fn sha256_file(path: &Path) -> Result<String> {
    check_regular_file(path)?;
    super::trust::Sha256::of_file(path).map(String::from)
}

fn load_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Load { path: path.to_path_buf(), msg: msg.into() }
}

/// The plugin ids a file exports, read from its symbol table without loading it.
fn exported_ids(path: &Path, file: &object::File) -> Result<Vec<String>> {
    use object::{Object, ObjectSymbol};
    let mut ids: Vec<String> = file
        .exports()
        .map_err(|e| load_err(path, format!("cannot read its exported symbols ({e})")))?
        .iter()
        .filter_map(|e| std::str::from_utf8(e.name()).ok())
        .chain(file.dynamic_symbols().filter(|s| !s.is_undefined()).filter_map(|s| s.name().ok()))
        .filter_map(|n| n.strip_prefix(SYMBOL_PREFIX).map(str::to_string))
        .collect();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

fn parse_version(path: &Path, v: abi_stable::sabi_types::VersionStrings) -> Result<SdkVersion> {
    let n = VersionNumber::new(v).map_err(|e| load_err(path, format!("unreadable SDK version: {e}")))?;
    Ok(SdkVersion { major: n.major, minor: n.minor, patch: n.patch })
}

/// The most telling mismatch of an abi_stable report, on one line, with the path of
/// fields that leads to it: the first error that is neither "too many fields" (which
/// only says the sides are different 1.x versions) nor a size/alignment difference
/// (a consequence of a mismatch further in).
pub(crate) fn first_mismatch(report: &str) -> String {
    struct Found {
        kind: String,
        expected: String,
        found: String,
        path: Vec<(String, String)>,
    }
    let lines: Vec<&str> = report.lines().collect();
    let mut path: Vec<(String, String)> = Vec::new();
    let mut in_trace = false;
    let mut all: Vec<Found> = Vec::new();
    let next_value = |i: usize| lines.get(i + 1).map(|l| l.trim().to_string()).unwrap_or_default();
    for (i, raw) in lines.iter().enumerate() {
        let l = raw.trim();
        if l.ends_with("error(s)inside:") || l.ends_with("error(s).") {
            path.clear();
            in_trace = true;
        } else if l.starts_with("Layout of") {
            in_trace = false;
        } else if in_trace && l.starts_with("field_name:") {
            path.push((l["field_name:".len()..].to_string(), String::new()));
        } else if in_trace && l.starts_with("type:") {
            if let Some(last) = path.last_mut() {
                last.1 = l["type:".len()..].trim().to_string();
            }
        } else if let Some(kind) = l.strip_prefix("Error:") {
            let expected =
                lines[i..].iter().position(|x| x.trim() == "Expected:").map(|k| next_value(i + k)).unwrap_or_default();
            let found =
                lines[i..].iter().position(|x| x.trim() == "Found:").map(|k| next_value(i + k)).unwrap_or_default();
            all.push(Found { kind: kind.trim().to_string(), expected, found, path: path.clone() });
        }
    }
    // Size and alignment errors are consequences of a mismatch further in: prefer that.
    let consequence = |k: &str| {
        k == "too many fields" || k.starts_with("incompatible type size") || k.starts_with("incompatible alignment")
    };
    let pick = all
        .iter()
        .find(|f| !consequence(&f.kind))
        .or_else(|| all.iter().find(|f| f.kind != "too many fields"))
        .or(all.first());
    let Some(f) = pick else { return "layouts differ (no detail in the report)".to_string() };
    let mut steps: Vec<String> = Vec::new();
    for (k, (name, _)) in f.path.iter().enumerate() {
        if name == "0" || name == "obj" || name == "vtable" || name.starts_with("param_") {
            continue;
        }
        let parent = f.path[..k]
            .iter()
            .rev()
            .map(|(_, t)| t.as_str())
            .find(|t| !t.is_empty() && *t != "AFunctionPointer" && !t.contains('<') && !t.starts_with('&'));
        steps.push(match parent {
            Some(t) => format!("{t}.{name}"),
            None => name.clone(),
        });
    }
    let at = if steps.is_empty() { String::new() } else { format!(" at {}", steps.join(" > ")) };
    format!("{}{at}: expected {}, found {}", f.kind, f.expected, f.found)
}

/// Reads and loads a plugin library ([`read_library_file`], then [`open_library`]).
pub fn load_library(path: &Path, report_dir: &Path) -> Result<LoadedLibrary> {
    open_library(&read_library_file(path)?, report_dir)
}

/// Loads a library file that [`read_library_file`] read: this runs its code. `report_dir`
/// receives the full abi_stable report when the layouts are incompatible.
pub fn open_library(file: &LibraryFile, report_dir: &Path) -> Result<LoadedLibrary> {
    let (path, id) = (file.path.as_path(), file.id.clone());
    let raw = RawLibrary::load_at(path)
        .map_err(|e| load_err(path, format!("cannot be loaded: {}", one_line(&e.to_string()))))?;
    let symbol = format!("{SYMBOL_PREFIX}{id}\0");
    // SAFETY: the symbol was found in the file's export table under the name the SDK's
    // `export_plugin!` gives its `LibHeader` static; `AbiHeaderRef` is a reference to the
    // header that starts that static, and `upgrade` validates it before any use. The
    // library is leaked below, so the `'static` references stay valid.
    let header = unsafe { raw.get::<AbiHeaderRef>(symbol.as_bytes()) }.map(|s| *s).map_err(|e| {
        load_err(path, format!("cannot read symbol `{SYMBOL_PREFIX}{id}`: {}", one_line(&e.to_string())))
    })?;
    let header = header
        .upgrade()
        .map_err(|e| load_err(path, format!("built with an incompatible abi_stable ({})", one_line(&e.to_string()))))?;
    std::mem::forget(raw);

    let sdk = parse_version(path, header.version_strings())?;
    if !sdk.is_compatible_with(SDK_VERSION) {
        return Err(load_err(
            path,
            format!("plugin `{id}` was built against stagecraft-sdk {sdk}, host uses {SDK_VERSION}: major versions differ, rebuild the plugin"),
        ));
    }

    match header.init_root_module::<PluginLibRef>() {
        Ok(lib) => Ok(LoadedLibrary { id, path: path.to_path_buf(), sdk, compat: Compat::Checked, lib }),
        Err(LibraryError::AbiInstability(report)) => {
            let plugin_layout = header.layout().ok_or_else(|| load_err(path, "library has no layout information"))?;
            // A fresh set of checking globals: the global one would record the older
            // plugin's prefix types as the interface, and every library checked after it
            // (any SDK) would then fail with "too many fields".
            let scratch = CheckingGlobals::new();
            match check_layout_compatibility_with_globals(plugin_layout, <PluginLibRef as StableAbi>::LAYOUT, &scratch)
            {
                Ok(()) => {
                    // SAFETY: the swapped check proved the plugin's root module (and all it
                    // reaches) is a prefix of the host's: every field and method it has is
                    // laid out as the host expects, and the host reads fields it lacks as
                    // absent (prefix types) or falls back to default bodies (sabi_trait).
                    let lib = unsafe { header.init_root_module_with_unchecked_layout::<PluginLibRef>() }
                        .map_err(|e| load_err(path, one_line(&e.to_string())))?;
                    Ok(LoadedLibrary { id, path: path.to_path_buf(), sdk, compat: Compat::OlderSdk, lib })
                }
                Err(swapped) => {
                    let full = format!("{report}\n\n---- with roles swapped (plugin as interface) ----\n\n{swapped}");
                    let file = report_dir.join(format!("abi-mismatch-{id}.txt"));
                    let saved = std::fs::create_dir_all(report_dir).and_then(|_| std::fs::write(&file, &full));
                    let where_ = match saved {
                        Ok(()) => format!("full report: {}", file.display()),
                        Err(e) => format!("full report could not be written to {}: {e}", file.display()),
                    };
                    Err(load_err(
                        path,
                        format!(
                            "plugin `{id}` has an incompatible ABI (plugin built against stagecraft-sdk {sdk}, host {SDK_VERSION}): {}; {where_}",
                            first_mismatch(&report.to_string())
                        ),
                    ))
                }
            }
        }
        Err(e) => Err(load_err(path, one_line(&e.to_string()))),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
