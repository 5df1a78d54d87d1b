//! Frozen copy of stagecraft-sdk's wire level, for ABI compatibility tests (see
//! Cargo.toml). Module paths match the live SDK's: abi_stable compares type names and
//! packages, so the copied types must live where the originals do.

#[allow(unsafe_code, non_local_definitions)]
pub mod abi;
#[allow(unsafe_code)]
mod types;
#[allow(unsafe_code)]
mod version;

pub use types::*;
pub use version::{SdkVersion, SDK_VERSION};
pub use abi_stable;
