//! `[plugins]`: where a pipeline's plugin libraries are found besides
//! `STAGECRAFT_PLUGIN_PATH` and `./plugins`, and which library files it trusts
//! (sha256 pins, checked before a library's code runs; see [`TrustPolicy`]).

use crate::error::{Error, Result};
use crate::plugin::{SearchDir, SearchOrigin, Sha256, TrustPolicy};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `[plugins] paths = ["target/release"]`, `require_pinned = true` and
/// `[plugins.pins] "libstagecraft_bottleneck.so" = "<sha256>"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Folders searched for plugin libraries, after `STAGECRAFT_PLUGIN_PATH` and before
    /// `./plugins`; a relative one is relative to the config file's folder.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathBuf>,
    /// sha256 of plugin library files, by file name (`libx.so`) or library id (`x`):
    /// a library a pin names is refused, before its code runs, when its hash differs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pins: BTreeMap<String, Sha256>,
    /// Refuse a plugin library file that no pin names. Plugins compiled into the
    /// binary (built-ins) are exempt. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_pinned: bool,
}

impl PluginsConfig {
    /// Whether the table says nothing (it is then left out of the resolved config).
    pub fn is_empty(&self) -> bool {
        self == &PluginsConfig::default()
    }

    /// `paths` as search directories, relative ones joined to `base` (the config
    /// file's folder).
    pub fn search_dirs(&self, base: &Path) -> Vec<SearchDir> {
        self.paths.iter().map(|p| SearchDir::new(base.join(p), SearchOrigin::Config)).collect()
    }

    /// The trust policy of the pins and `require_pinned`; `source` names the config in
    /// errors.
    pub fn trust(&self, source: &str) -> TrustPolicy {
        TrustPolicy { pins: self.pins.clone(), require_pinned: self.require_pinned, source: source.to_string() }
    }

    /// Pin keys are file names or library ids, not paths.
    pub(crate) fn validate(&self, file: &str) -> Result<()> {
        match self.pins.keys().find(|k| k.is_empty() || k.contains(['/', '\\'])) {
            Some(k) => {
                let name = Path::new(k).file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned());
                Err(Error::msg(format!(
                    "{file}: plugins.pins: key \"{k}\" is not a library file name or id (give its file name, like \"{name}\", or its library id)"
                )))
            }
            None => Ok(()),
        }
    }
}
