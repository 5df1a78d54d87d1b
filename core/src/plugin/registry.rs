//! The plugin registry: built-in libraries (compiled into the host, found through
//! `inventory`) and libraries loaded from `.so` files, by plugin name and kind.
//!
//! Name rules: two files providing the same plugin name is an error naming both (the
//! second library is not registered); a file providing a built-in's name replaces the
//! built-in (logged), which is how a team swaps in its own build.

use super::instance::{InstanceCore, MethodInstance, ObjectiveInstance, OptimizerInstance};
use super::loader::{load_library, Compat};
use super::state::HostState;
use crate::error::{Error, Result};
use abi_stable::std_types::{RResult, RStr};
use stagecraft_sdk::abi::PluginLibRef;
use stagecraft_sdk::export::BuiltinLibrary;
use stagecraft_sdk::{PluginInfo, PluginKind, SdkVersion, SDK_VERSION};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

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

/// One registered library.
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

/// All known plugins.
pub struct Registry {
    libs: Vec<Library>,
    by_name: BTreeMap<String, (usize, usize)>,
    report_dir: PathBuf,
}

/// The directories searched for plugin files: `STAGECRAFT_PLUGIN_PATH` (a `:`-separated
/// list), then `./plugins`.
pub fn search_path() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("STAGECRAFT_PLUGIN_PATH")
        .map(|v| std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()).collect())
        .unwrap_or_default();
    dirs.push(PathBuf::from("plugins"));
    dirs
}

/// Whether a file name looks like a shared library.
pub fn is_library_file(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("so" | "dylib" | "dll"))
}

impl Registry {
    /// An empty registry; incompatible-ABI reports go to `report_dir`.
    pub fn empty(report_dir: impl Into<PathBuf>) -> Self {
        Registry { libs: Vec::new(), by_name: BTreeMap::new(), report_dir: report_dir.into() }
    }

    /// A registry with every built-in library.
    pub fn with_builtins(report_dir: impl Into<PathBuf>) -> Result<Self> {
        let mut r = Registry::empty(report_dir);
        let mut builtins: Vec<&BuiltinLibrary> = inventory::iter::<BuiltinLibrary>.into_iter().collect();
        builtins.sort_by_key(|b| b.id);
        for b in builtins {
            let lib = (b.lib)();
            r.add(b.id.to_string(), Source::Builtin, SDK_VERSION, None, lib)?;
        }
        Ok(r)
    }

    /// Libraries in registration order.
    pub fn libraries(&self) -> &[Library] {
        &self.libs
    }

    /// Every plugin by name: `(name, library, info)`.
    pub fn plugins(&self) -> impl Iterator<Item = (&str, &Library, &PluginInfo)> {
        self.by_name.iter().map(|(n, &(l, p))| (n.as_str(), &self.libs[l], &self.libs[l].plugins[p]))
    }

    fn add(
        &mut self,
        id: String,
        source: Source,
        sdk: SdkVersion,
        compat: Option<Compat>,
        lib: PluginLibRef,
    ) -> Result<usize> {
        let manifest = (lib.manifest())();
        let plugins: Vec<PluginInfo> = manifest.into_vec();
        let mut seen = std::collections::BTreeSet::new();
        for p in &plugins {
            if !stagecraft_sdk::export::valid_name(&p.name) {
                return Err(Error::Load {
                    path: PathBuf::from(source.to_string()),
                    msg: format!("plugin name `{}` is not lowercase snake_case", p.name),
                });
            }
            if !seen.insert((p.name.to_string(), p.kind.0)) {
                return Err(Error::Load {
                    path: PathBuf::from(source.to_string()),
                    msg: format!("provides `{}` twice", p.name),
                });
            }
            if let Some(&(l, _)) = self.by_name.get(p.name.as_str()) {
                let other = &self.libs[l];
                if other.source != Source::Builtin || source == Source::Builtin {
                    return Err(Error::Duplicate {
                        name: p.name.to_string(),
                        first: other.source.to_string(),
                        second: source.to_string(),
                    });
                }
            }
        }
        let index = self.libs.len();
        let mut replaced = Vec::new();
        for (i, p) in plugins.iter().enumerate() {
            if self.by_name.insert(p.name.to_string(), (index, i)).is_some() {
                replaced.push(p.name.as_str());
            }
        }
        if !replaced.is_empty() {
            tracing::debug!("{source} replaces built-in plugins {}", replaced.join(", "));
        }
        self.libs.push(Library { id, source, sdk, compat, plugins, lib });
        Ok(index)
    }

    /// Loads one library file. Loading the same file twice is a no-op.
    pub fn load_file(&mut self, path: &Path) -> Result<&Library> {
        let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if let Some(i) = self.libs.iter().position(|l| matches!(&l.source, Source::File { path: p } if *p == canon)) {
            return Ok(&self.libs[i]);
        }
        let loaded = load_library(&canon, &self.report_dir)?;
        let source = Source::File { path: canon };
        let i = self.add(loaded.id, source, loaded.sdk, Some(loaded.compat), loaded.lib)?;
        Ok(&self.libs[i])
    }

    /// Loads every library file in `dirs` (not recursive). Each failure is one error;
    /// the others still load.
    pub fn load_dirs(&mut self, dirs: &[PathBuf]) -> Vec<Error> {
        let mut errors = Vec::new();
        for dir in dirs {
            let Ok(rd) = std::fs::read_dir(dir) else { continue };
            let mut files: Vec<PathBuf> =
                rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file() && is_library_file(p)).collect();
            files.sort();
            for f in files {
                if let Err(e) = self.load_file(&f) {
                    errors.push(e);
                }
            }
        }
        errors
    }

    /// The library and info of a plugin of `kind`.
    pub fn find(&self, kind: PluginKind, name: &str) -> Result<(&Library, &PluginInfo)> {
        match self.by_name.get(name) {
            Some(&(l, p)) if self.libs[l].plugins[p].kind == kind => Ok((&self.libs[l], &self.libs[l].plugins[p])),
            _ => {
                let available: Vec<&str> =
                    self.plugins().filter(|(_, _, i)| i.kind == kind).map(|(n, _, _)| n).collect();
                Err(Error::UnknownPlugin {
                    kind: kind.to_string(),
                    name: name.to_string(),
                    available: if available.is_empty() { "none".into() } else { available.join(", ") },
                })
            }
        }
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
