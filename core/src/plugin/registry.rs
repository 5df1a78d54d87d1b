//! The plugin registry: built-in libraries (compiled into the host, found through
//! `inventory`) and libraries from `.so` files, by plugin name and kind.
//!
//! Files are opened lazily. Scanning the search path ([`Registry::scan_dirs`]) reads
//! each library's id and manifest (the names and kinds of its plugins) from its bytes
//! and runs none of its code; a file is `dlopen`ed only when a plugin it provides is
//! looked up ([`Registry::find`], `new_*`), so a broken library that a pipeline does not
//! name is never opened. A library without a manifest (built before the SDK wrote one)
//! is opened when scanned, as before, since only loading it tells what it provides.
//! Each oddity on the search path (a directory, FIFO or dangling symlink named like a
//! library, a missing or unreadable directory, an entry that is not a folder) is one
//! error naming the path and where it was named; what each directory held is kept, so
//! that a plugin not found is an error listing every place searched.
//!
//! Before opening a file the registry checks it against its trust policy (sha256 pins,
//! [`TrustPolicy`]), before any of its code runs, then runs its preflight check, if it
//! has one: the CLI loads the library in a child process first, so a library that
//! crashes or hangs when loaded is one error rather than the end of the host.
//!
//! Name rules: two files providing the same plugin names is an error naming both files
//! and every such name (the second library is not registered); a file providing a
//! built-in's name replaces the built-in (logged), which is how a team swaps in its own
//! build. A library that fails to open when looked up is an error for each of its
//! names: a built-in it replaces is not used in its stead.

use super::instance::{InstanceCore, MethodInstance, ObjectiveInstance, OptimizerInstance};
use super::loader::{open_library, read_library_file, Compat, LibraryFile, ManifestEntry};
use super::state::HostState;
use super::trust::TrustPolicy;
use crate::error::{Clash, Error, Result};
use abi_stable::std_types::{RResult, RStr};
use stagecraft_sdk::abi::PluginLibRef;
use stagecraft_sdk::export::BuiltinLibrary;
use stagecraft_sdk::{PluginInfo, PluginKind, SdkVersion, SDK_VERSION};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::OnceLock;

/// Where a library came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Compiled into the host.
    Builtin,
    /// Loaded from a file.
    File {
        /// The file.
        path: PathBuf,
    },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Builtin => f.write_str("built-in"),
            Source::File { path, .. } => write!(f, "{}", path.display()),
        }
    }
}

/// One loaded library.
pub struct Library {
    /// Its id.
    pub id: String,
    /// Where it came from.
    pub source: Source,
    /// SDK version it was built against.
    pub sdk: SdkVersion,
    /// How its ABI was accepted (files only).
    pub compat: Option<Compat>,
    /// What it provides.
    pub plugins: Vec<PluginInfo>,
    lib: PluginLibRef,
}

/// A check run on a library file before the host opens it (see [`Registry::set_preflight`]).
pub type Preflight = Box<dyn Fn(&Path) -> Result<()> + Send + Sync>;

/// A library file known to the registry, opened the first time one of its plugins is
/// looked up.
struct FileLibrary {
    file: LibraryFile,
    source: Source,
    /// The library once opened, or why it could not be.
    opened: OnceLock<std::result::Result<Library, String>>,
}

/// Where a plugin name leads.
#[derive(Debug, Clone, Copy)]
enum At {
    Builtin(usize),
    File(usize),
}

/// A directory [`Registry::scan_dirs`] searched, and the plugins found there.
struct Searched {
    dir: SearchDir,
    state: DirState,
    plugins: Vec<ManifestEntry>,
}

/// All known plugins.
pub struct Registry {
    builtins: Vec<Library>,
    files: Vec<FileLibrary>,
    by_name: BTreeMap<String, (At, PluginKind)>,
    report_dir: PathBuf,
    preflight: Option<Preflight>,
    trust: TrustPolicy,
    searched: Vec<Searched>,
}

/// Where a searched directory was named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchOrigin {
    /// Given to the command (`plugin list DIR`) or by the caller.
    Given,
    /// An entry of `STAGECRAFT_PLUGIN_PATH`.
    EnvVar,
    /// An entry of the pipeline's `[plugins] paths`.
    Config,
    /// `./plugins`, searched when it exists.
    Default,
}

impl std::fmt::Display for SearchOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SearchOrigin::Given => "given",
            SearchOrigin::EnvVar => "STAGECRAFT_PLUGIN_PATH",
            SearchOrigin::Config => "[plugins] paths",
            SearchOrigin::Default => "default",
        })
    }
}

/// A directory searched for plugin files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchDir {
    /// The directory.
    pub path: PathBuf,
    /// Where it was named.
    pub origin: SearchOrigin,
}

impl SearchDir {
    /// A directory named by `origin`.
    pub fn new(path: impl Into<PathBuf>, origin: SearchOrigin) -> Self {
        SearchDir { path: path.into(), origin }
    }

    /// A directory given by the caller: a missing one is reported.
    pub fn required(path: impl Into<PathBuf>) -> Self {
        SearchDir::new(path, SearchOrigin::Given)
    }

    /// Whether it may be missing without a word (`./plugins`); a directory the user
    /// named that does not exist is a warning.
    pub fn optional(&self) -> bool {
        self.origin == SearchOrigin::Default
    }
}

/// The directories searched for plugin files: `STAGECRAFT_PLUGIN_PATH` (a `:`-separated
/// list), then `./plugins` (optional).
pub fn search_path() -> Vec<SearchDir> {
    search_path_with(Vec::new())
}

/// The directories searched for plugin files, in order: `STAGECRAFT_PLUGIN_PATH` (a
/// `:`-separated list), then `config` (a pipeline's `[plugins] paths`), then
/// `./plugins` (optional). Where two files provide the same plugin, the first found
/// is used.
pub fn search_path_with(config: Vec<SearchDir>) -> Vec<SearchDir> {
    let mut dirs: Vec<SearchDir> = std::env::var_os("STAGECRAFT_PLUGIN_PATH")
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .map(|p| SearchDir::new(p, SearchOrigin::EnvVar))
                .collect()
        })
        .unwrap_or_default();
    dirs.extend(config);
    dirs.push(SearchDir::new("plugins", SearchOrigin::Default));
    dirs
}

/// Whether a file name looks like a shared library.
pub fn is_library_file(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("so" | "dylib" | "dll"))
}

/// What a searched directory turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirState {
    /// Read (its unusable entries are errors of their own).
    Read,
    /// It does not exist.
    Missing,
    /// It is a file or something else that is not a folder.
    NotAFolder,
    /// It could not be read.
    Unreadable,
}

/// One directory of the search path, scanned.
pub struct DirScan {
    /// What it turned out to be.
    pub state: DirState,
    /// Its library files, by name, read without running their code.
    pub files: Vec<LibraryFile>,
    /// One per path that cannot be used (the directory itself, or an entry).
    pub errors: Vec<Error>,
}

/// The library files in `dirs` (not recursive), read without running their code, in
/// search-path order and by name within a directory. Each path that cannot be used (a
/// missing or unreadable directory, a directory, FIFO, socket or device named like a
/// library, a dangling symlink or a symlink loop, a file that is not a plugin) is one
/// error; the others are still returned. Names without a library extension are skipped.
pub fn scan_dirs(dirs: &[SearchDir]) -> (Vec<LibraryFile>, Vec<Error>) {
    let (mut found, mut errors) = (Vec::new(), Vec::new());
    for dir in dirs {
        let scan = scan_dir(dir);
        found.extend(scan.files);
        errors.extend(scan.errors);
    }
    (found, errors)
}

/// The library files in one directory (see [`scan_dirs`]). A directory that is missing
/// (unless optional), is not a folder (`STAGECRAFT_PLUGIN_PATH` naming the `.so` itself:
/// its folder is suggested) or cannot be read is one error naming it and where it was
/// named.
pub fn scan_dir(dir: &SearchDir) -> DirScan {
    let origin = dir.origin;
    let refused = |state, msg: String| DirScan { state, files: Vec::new(), errors: vec![Error::file(&dir.path, msg)] };
    match std::fs::metadata(&dir.path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir.optional() => {
            return DirScan { state: DirState::Missing, files: Vec::new(), errors: Vec::new() }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return refused(DirState::Missing, format!("plugin directory does not exist ({origin})"))
        }
        Ok(meta) if !meta.is_dir() => {
            let msg = match dir.path.parent().filter(|_| is_library_file(&dir.path)) {
                Some(folder) => format!(
                    "not a folder but a library file ({origin}): the search path takes folders, use its folder {}",
                    if folder.as_os_str().is_empty() { Path::new(".") } else { folder }.display()
                ),
                None => format!("not a folder ({origin}): the search path takes folders"),
            };
            return refused(DirState::NotAFolder, msg);
        }
        _ => {}
    }
    let entries = match std::fs::read_dir(&dir.path) {
        Ok(rd) => rd,
        Err(e) => return refused(DirState::Unreadable, format!("plugin directory cannot be read ({origin}): {e}")),
    };
    let mut errors = Vec::new();
    let mut paths = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => paths.push(entry.path()),
            Err(e) => errors.push(Error::file(&dir.path, format!("plugin directory cannot be read ({origin}): {e}"))),
        }
    }
    paths.retain(|p| is_library_file(p));
    paths.sort();
    let mut files = Vec::new();
    for path in paths {
        match read_library_file(&path) {
            Ok(file) => files.push(file),
            Err(e) => errors.push(e),
        }
    }
    DirScan { state: DirState::Read, files, errors }
}

/// The message of a load error (its path is given again when the error is rebuilt).
fn load_msg(e: Error) -> String {
    match e {
        Error::Load { msg, .. } => msg,
        e => e.to_string(),
    }
}

impl Registry {
    /// An empty registry; incompatible-ABI reports go to `report_dir`.
    pub fn empty(report_dir: impl Into<PathBuf>) -> Self {
        Registry {
            builtins: Vec::new(),
            files: Vec::new(),
            by_name: BTreeMap::new(),
            report_dir: report_dir.into(),
            preflight: None,
            trust: TrustPolicy::default(),
            searched: Vec::new(),
        }
    }

    /// A registry with every built-in library.
    pub fn with_builtins(report_dir: impl Into<PathBuf>) -> Result<Self> {
        let mut r = Registry::empty(report_dir);
        let mut builtins: Vec<&BuiltinLibrary> = inventory::iter::<BuiltinLibrary>.into_iter().collect();
        builtins.sort_by_key(|b| b.id);
        for b in builtins {
            let lib = (b.lib)();
            let plugins = checked_plugins(&Source::Builtin, lib)?;
            let names = entries(&plugins);
            r.claim(&Source::Builtin, &names)?;
            let index = r.builtins.len();
            r.builtins.push(Library {
                id: b.id.to_string(),
                source: Source::Builtin,
                sdk: SDK_VERSION,
                compat: None,
                plugins,
                lib,
            });
            for e in names {
                r.by_name.insert(e.name, (At::Builtin(index), e.kind));
            }
        }
        Ok(r)
    }

    /// Runs `check` on each library file before it is opened; an error from it is the
    /// file's load error. The CLI loads the library in a child process there, so that a
    /// library that crashes when loaded does not take the host down.
    pub fn set_preflight(&mut self, check: Preflight) {
        self.preflight = Some(check);
    }

    /// Checks each library file against `policy` before it is opened (see
    /// [`TrustPolicy::check`]); a file opened already is checked now.
    pub fn set_trust(&mut self, policy: TrustPolicy) -> Result<()> {
        self.check_trust(&policy)?;
        self.trust = policy;
        Ok(())
    }

    /// Checks the library files opened so far against `policy`.
    pub fn check_trust(&self, policy: &TrustPolicy) -> Result<()> {
        let mut opened = self.files.iter().filter(|f| f.opened.get().is_some_and(|r| r.is_ok()));
        opened.try_for_each(|f| policy.check(&f.file))
    }

    /// The pins of the trust policy that name no library file opened so far (a typo, or
    /// a plugin built into the host used instead: built-ins are not pinned).
    pub fn unused_pins(&self) -> Vec<&str> {
        let opened: Vec<&FileLibrary> =
            self.files.iter().filter(|f| f.opened.get().is_some_and(|r| r.is_ok())).collect();
        let used = |key: &str| opened.iter().any(|f| TrustPolicy::names(key, &f.file));
        self.trust.pins.keys().map(String::as_str).filter(|k| !used(k)).collect()
    }

    /// The libraries loaded so far: the built-ins, then each file opened.
    pub fn libraries(&self) -> impl Iterator<Item = &Library> {
        let files = self.files.iter().filter_map(|f| f.opened.get().and_then(|r| r.as_ref().ok()));
        self.builtins.iter().chain(files)
    }

    /// Every plugin by name, `(name, kind, source)`, opening nothing.
    pub fn plugins(&self) -> impl Iterator<Item = (&str, PluginKind, &Source)> {
        self.by_name.iter().map(|(n, &(at, kind))| (n.as_str(), kind, self.source_of(at)))
    }

    /// Where the plugin at `at` comes from.
    fn source_of(&self, at: At) -> &Source {
        match at {
            At::Builtin(i) => &self.builtins[i].source,
            At::File(i) => &self.files[i].source,
        }
    }

    /// Checks `names` of a library from `source` against those registered: an error
    /// naming every name provided twice or by another file (built-ins may be replaced
    /// by files).
    fn claim(&self, source: &Source, names: &[ManifestEntry]) -> Result<()> {
        let mut seen = std::collections::BTreeSet::new();
        let twice: Vec<String> = names
            .iter()
            .filter(|p| !seen.insert((p.name.as_str(), p.kind.0)))
            .map(|p| format!("`{}`", p.name))
            .collect();
        if !twice.is_empty() {
            return Err(Error::Load {
                path: PathBuf::from(source.to_string()),
                msg: format!("provides {} twice", twice.join(", ")),
            });
        }
        let mut clashes: Vec<Clash> = Vec::new();
        for p in names {
            let Some(&(at, _)) = self.by_name.get(p.name.as_str()) else { continue };
            let other = self.source_of(at);
            if *other == Source::Builtin && *source != Source::Builtin {
                continue;
            }
            let first = other.to_string();
            match clashes.iter_mut().find(|c| c.first == first) {
                Some(c) => c.names.push(p.name.clone()),
                None => clashes.push(Clash { first, names: vec![p.name.clone()] }),
            }
        }
        clashes.iter_mut().for_each(|c| c.names.sort());
        match clashes.is_empty() {
            true => Ok(()),
            false => Err(Error::Duplicate { second: source.to_string(), clashes }),
        }
    }

    /// Registers a file library whose plugins are `names`, opened or not.
    fn register(&mut self, file: LibraryFile, names: Vec<ManifestEntry>, opened: Option<Library>) -> Result<usize> {
        let source = Source::File { path: file.path.clone() };
        self.claim(&source, &names)?;
        let index = self.files.len();
        let mut replaced = Vec::new();
        for e in &names {
            if self.by_name.insert(e.name.clone(), (At::File(index), e.kind)).is_some() {
                replaced.push(e.name.as_str());
            }
        }
        if !replaced.is_empty() {
            tracing::debug!("{source} replaces built-in plugins {}", replaced.join(", "));
        }
        let cell = OnceLock::new();
        if let Some(lib) = opened {
            let _ = cell.set(Ok(lib));
        }
        self.files.push(FileLibrary { file, source, opened: cell });
        Ok(index)
    }

    /// The index of the file library at canonical path `path`, if registered.
    fn registered(&self, path: &Path) -> Option<usize> {
        self.files.iter().position(|f| f.file.path == path)
    }

    /// Loads one library file now (it runs the library's code). Loading the same file
    /// twice is a no-op.
    pub fn load_file(&mut self, path: &Path) -> Result<&Library> {
        let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let i = match self.registered(&canon) {
            Some(i) => i,
            None => {
                let file = read_library_file(&canon)?;
                let lib = self.open(&file)?;
                let names = entries(&lib.plugins);
                self.register(file, names, Some(lib))?
            }
        };
        self.opened(i)
    }

    /// Registers the library files in `dirs` ([`scan_dir`]) without opening those with a
    /// manifest; a file without one is opened now. Each failure is one error; the other
    /// files are still registered. What each directory held is remembered for the
    /// message of a plugin not found.
    pub fn scan_dirs(&mut self, dirs: &[SearchDir]) -> Vec<Error> {
        let mut errors = Vec::new();
        for dir in dirs {
            let scan = scan_dir(dir);
            errors.extend(scan.errors);
            let mut plugins = Vec::new();
            for file in scan.files {
                let manifest = file.manifest.clone();
                match self.add_file(file) {
                    Ok(i) => plugins.extend(manifest.unwrap_or_else(|| self.file_plugins(i))),
                    Err(e) => {
                        plugins.extend(manifest.unwrap_or_default());
                        errors.push(e);
                    }
                }
            }
            self.searched.push(Searched { dir: dir.clone(), state: scan.state, plugins });
        }
        errors
    }

    /// The plugins file library `i` provides, as far as known without opening it.
    fn file_plugins(&self, i: usize) -> Vec<ManifestEntry> {
        let f = &self.files[i];
        match (&f.file.manifest, f.opened.get()) {
            (Some(m), _) => m.clone(),
            (None, Some(Ok(lib))) => entries(&lib.plugins),
            (None, _) => Vec::new(),
        }
    }

    /// Registers a file read by [`read_library_file`]; opens it only when it has no manifest.
    fn add_file(&mut self, file: LibraryFile) -> Result<usize> {
        let canon = std::fs::canonicalize(&file.path).unwrap_or_else(|_| file.path.clone());
        if let Some(i) = self.registered(&canon) {
            return Ok(i);
        }
        let file = LibraryFile { path: canon, ..file };
        match file.manifest.clone() {
            Some(names) => self.register(file, names, None),
            None => {
                let lib = self.open(&file)?;
                let names = entries(&lib.plugins);
                self.register(file, names, Some(lib))
            }
        }
    }

    /// Opens every registered file library not opened yet; one error per library that
    /// cannot be opened (its plugins are then unusable).
    pub fn open_all(&self) -> Vec<Error> {
        (0..self.files.len()).filter_map(|i| self.opened(i).err()).collect()
    }

    /// Loads a library file: the trust policy's check (its sha256 against the pins,
    /// before any of its code runs), the preflight check, then the loader; checks that
    /// what it provides is what its manifest says.
    fn open(&self, file: &LibraryFile) -> Result<Library> {
        self.trust.check(file)?;
        if let Some(check) = &self.preflight {
            check(&file.path)?;
        }
        let loaded = open_library(file, &self.report_dir)?;
        let source = Source::File { path: file.path.clone() };
        let plugins = checked_plugins(&source, loaded.lib)?;
        if let Some(manifest) = &file.manifest {
            let mut said: Vec<&ManifestEntry> = manifest.iter().collect();
            let provided = entries(&plugins);
            let mut has: Vec<&ManifestEntry> = provided.iter().collect();
            said.sort_by(|a, b| (&a.name, a.kind.0).cmp(&(&b.name, b.kind.0)));
            has.sort_by(|a, b| (&a.name, a.kind.0).cmp(&(&b.name, b.kind.0)));
            if said != has {
                let list = |v: &[&ManifestEntry]| {
                    v.iter().map(|e| format!("{} {}", e.kind, e.name)).collect::<Vec<_>>().join(", ")
                };
                return Err(Error::Load {
                    path: file.path.clone(),
                    msg: format!("its manifest lists {} but it provides {}", list(&said), list(&has)),
                });
            }
        }
        Ok(Library { id: loaded.id, source, sdk: loaded.sdk, compat: Some(loaded.compat), plugins, lib: loaded.lib })
    }

    /// File library `i`, opened now if it was not yet.
    fn opened(&self, i: usize) -> Result<&Library> {
        let f = &self.files[i];
        f.opened
            .get_or_init(|| self.open(&f.file).map_err(load_msg))
            .as_ref()
            .map_err(|msg| Error::Load { path: f.file.path.clone(), msg: msg.clone() })
    }

    /// The library and info of a plugin of `kind`; opens the library that provides it
    /// if it is not open yet.
    pub fn find(&self, kind: PluginKind, name: &str) -> Result<(&Library, &PluginInfo)> {
        let Some(&(at, _)) = self.by_name.get(name).filter(|(_, k)| *k == kind) else {
            let available: Vec<&str> = self.plugins().filter(|(_, k, _)| *k == kind).map(|(n, _, _)| n).collect();
            return Err(Error::UnknownPlugin {
                kind: kind.to_string(),
                name: name.to_string(),
                available: if available.is_empty() { "none".into() } else { available.join(", ") },
                searched: self.searched_places(kind),
            });
        };
        let lib = match at {
            At::Builtin(i) => &self.builtins[i],
            At::File(i) => self.opened(i)?,
        };
        let info =
            lib.plugins.iter().find(|p| p.name.as_str() == name && p.kind == kind).ok_or_else(|| Error::Load {
                path: PathBuf::from(lib.source.to_string()),
                msg: format!("does not provide {kind} `{name}`"),
            })?;
        Ok((lib, info))
    }

    /// Every place plugins were looked for and what was found there: `built in: lora,
    /// ia3; /opt/plugins (STAGECRAFT_PLUGIN_PATH): bottleneck, sgd (optimizer); plugins
    /// (default): does not exist`. Plugins of another kind than `kind` carry theirs.
    fn searched_places(&self, kind: PluginKind) -> String {
        let list = |plugins: &[ManifestEntry]| {
            let mut names: Vec<String> = plugins
                .iter()
                .map(|p| if p.kind == kind { p.name.clone() } else { format!("{} ({})", p.name, p.kind) })
                .collect();
            names.sort();
            if names.is_empty() {
                "no plugins".to_string()
            } else {
                names.join(", ")
            }
        };
        let builtin: Vec<ManifestEntry> =
            self.builtins.iter().flat_map(|b| entries(&b.plugins)).filter(|p| p.kind == kind).collect();
        let mut places = vec![format!("built in: {}", list(&builtin))];
        for s in &self.searched {
            let found = match s.state {
                DirState::Read => list(&s.plugins),
                DirState::Missing => "does not exist".into(),
                DirState::NotAFolder => "not a folder".into(),
                DirState::Unreadable => "cannot be read".into(),
            };
            places.push(format!("{} ({}): {found}", s.dir.path.display(), s.dir.origin));
        }
        if self.searched.is_empty() {
            places.push("no folder searched".into());
        }
        places.join("; ")
    }

    fn core(&self, kind: PluginKind, name: &str, state: &Rc<HostState>) -> Result<(InstanceCore, PluginLibRef)> {
        let (lib, _) = self.find(kind, name)?;
        Ok((InstanceCore::new(name, &lib.source.to_string(), state), lib.lib))
    }

    /// Creates an adaptation method instance from its JSON config.
    pub fn new_method(&self, name: &str, config_json: &str, state: &Rc<HostState>) -> Result<MethodInstance> {
        let (core, lib) = self.core(PluginKind::METHOD, name, state)?;
        let obj = created(name, "new", (lib.new_method())(RStr::from(name), RStr::from(config_json), &core.host))?;
        Ok(MethodInstance::new(core, obj))
    }

    /// Creates an optimizer instance from its JSON config.
    pub fn new_optimizer(&self, name: &str, config_json: &str, state: &Rc<HostState>) -> Result<OptimizerInstance> {
        let (core, lib) = self.core(PluginKind::OPTIMIZER, name, state)?;
        let obj = created(name, "new", (lib.new_optimizer())(RStr::from(name), RStr::from(config_json), &core.host))?;
        Ok(OptimizerInstance::new(core, obj))
    }

    /// Creates a stage instance from its JSON config.
    pub fn new_objective(&self, name: &str, config_json: &str, state: &Rc<HostState>) -> Result<ObjectiveInstance> {
        let (core, lib) = self.core(PluginKind::STAGE, name, state)?;
        let obj = created(name, "new", (lib.new_stage())(RStr::from(name), RStr::from(config_json), &core.host))?;
        Ok(ObjectiveInstance::new(core, obj))
    }
}

fn created<T>(plugin: &str, method: &str, r: RResult<T, abi_stable::std_types::RString>) -> Result<T> {
    super::instance::plugin_result(plugin, method, r)
}

/// The plugins a library's root module says it provides, with their names checked.
fn checked_plugins(source: &Source, lib: PluginLibRef) -> Result<Vec<PluginInfo>> {
    let plugins: Vec<PluginInfo> = (lib.manifest())().into_vec();
    if let Some(p) = plugins.iter().find(|p| !stagecraft_sdk::export::valid_name(&p.name)) {
        return Err(Error::Load {
            path: PathBuf::from(source.to_string()),
            msg: format!("plugin name `{}` is not lowercase snake_case", p.name),
        });
    }
    Ok(plugins)
}

/// The names and kinds of `plugins`.
fn entries(plugins: &[PluginInfo]) -> Vec<ManifestEntry> {
    plugins.iter().map(|p| ManifestEntry { name: p.name.to_string(), kind: p.kind }).collect()
}
