//! What every plugin has: a name, a version, a config type.

use crate::error::Result;
use crate::host::Host;
use serde::de::DeserializeOwned;

/// Common to all plugin kinds: identity and construction from config.
pub trait Plugin: Sized + 'static {
    /// Registered name: lowercase snake_case, unique among loaded plugins (`lora`).
    const NAME: &'static str;
    /// One line on what the plugin does (shown by `stagecraft plugin list`).
    const DESCRIPTION: &'static str;
    /// The plugin's own version; use `env!("CARGO_PKG_VERSION")`.
    const VERSION: &'static str;

    /// The config, deserialized from the plugin's TOML table (sent as JSON). Use
    /// `#[serde(deny_unknown_fields)]` so typos are errors, and derive
    /// [`JsonSchema`](schemars::JsonSchema) so `stagecraft plugin inspect` can show it.
    type Config: DeserializeOwned + schemars::JsonSchema;

    /// Builds an instance. Check rules across fields here and return an error naming
    /// the field (`"r must be > 0, got 0"`). Do not create tensors here: the lifecycle
    /// methods of each kind do that.
    fn new(config: Self::Config, host: Host<'_>) -> Result<Self>;
}
