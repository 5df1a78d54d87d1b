//! The SDK's own version, as plugins and hosts report it to each other.
//!
//! Rules (see the crate docs, "Versioning"): the major version changes only when the
//! ABI breaks; a minor version may only *append* ops to [`HostOps`](crate::abi::HostOps)
//! and methods to the plugin traits, each with a default body that returns a clear
//! "lacks X" error, so plugins and hosts of any two 1.x versions work together.

use abi_stable::StableAbi;
use std::fmt;

/// A semantic version number, laid out for the ABI.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SdkVersion {
    /// Breaking ABI changes only.
    pub major: u32,
    /// Appended ops and trait methods.
    pub minor: u32,
    /// Fixes that change no layout.
    pub patch: u32,
}

impl SdkVersion {
    /// `major.minor.patch`, e.g. to ask whether a host has an op appended in a minor
    /// version: `host.sdk_version() >= SdkVersion::new(1, 2, 0)`.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        SdkVersion { major, minor, patch }
    }

    /// Whether a plugin built against `self` can be used by a host built against `host`
    /// (and vice versa): same major version.
    pub const fn is_compatible_with(self, host: SdkVersion) -> bool {
        self.major == host.major
    }
}

impl fmt::Display for SdkVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

const fn parse_u32(s: &str) -> u32 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut v = 0u32;
    while i < b.len() {
        v = v * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    v
}

/// The version of the SDK this crate is (its Cargo package version).
pub const SDK_VERSION: SdkVersion = SdkVersion {
    major: parse_u32(env!("CARGO_PKG_VERSION_MAJOR")),
    minor: parse_u32(env!("CARGO_PKG_VERSION_MINOR")),
    patch: parse_u32(env!("CARGO_PKG_VERSION_PATCH")),
};
