//! `[plugins]`: where a pipeline's plugin libraries are found besides
//! `STAGECRAFT_PLUGIN_PATH` and `./plugins`.

use crate::plugin::SearchDir;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `[plugins] paths = ["target/release"]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Folders searched for plugin libraries, after `STAGECRAFT_PLUGIN_PATH` and before
    /// `./plugins`; a relative one is relative to the config file's folder.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathBuf>,
}

impl PluginsConfig {
    /// Whether the table says nothing (it is then left out of the resolved config).
    pub fn is_empty(&self) -> bool {
        self == &PluginsConfig::default()
    }

    /// `paths` as search directories, relative ones joined to `base` (the config
    /// file's folder).
    pub fn search_dirs(&self, base: &Path) -> Vec<SearchDir> {
        self.paths.iter().map(|p| SearchDir::required(base.join(p))).collect()
    }
}
