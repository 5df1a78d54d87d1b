//! Plugins: the host op table, the handle table, loading libraries, the registry, and
//! host-side handles on plugin instances.

mod adamw;
mod instance;
// The loader is the one place in the host allowed `unsafe` (each use has a SAFETY comment).
#[allow(unsafe_code)]
mod loader;
mod ops;
mod registry;
mod state;
mod table;
mod trust;

pub use crate::kernels::cross_entropy::cross_entropy;
pub use crate::model::layers::{log_softmax, softmax};
pub use instance::{
    host_for, InstanceCore, MethodInstance, ObjectiveInstance, OptimizerInstance, StageLoss, TrainParam,
};
pub use loader::{
    check_regular_file, load_library, open_library, read_library_file, sha256_file, Compat, LibraryFile, LoadedLibrary,
    ManifestEntry,
};
pub use ops::{from_candle_dtype, to_candle_dtype, HostCtx};
pub use registry::{
    is_library_file, scan_dir, scan_dirs, search_path, search_path_with, DirScan, DirState, Library, Preflight,
    Registry, SearchDir, SearchOrigin, Source,
};
pub use state::{HostState, InstanceStore, Owned};
pub use table::{Entry, TensorTable};
pub use trust::{Sha256, TrustPolicy};
