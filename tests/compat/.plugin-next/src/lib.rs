//! `next_cumsum`: replaces a linear site's output by its cumulative sum along the last
//! dim, using `cumsum`, an op appended in SDK 1.5. In a 1.4 host the call fails with the
//! op's default body ("host lacks op"), and nothing crashes.

use stagecraft_sdk::abi::{CallResult, HostRef, MethodAbi, MethodAbi_TO, MethodBox, OptimizerBox, PluginLib, PluginLibRef, StageBox};
use stagecraft_sdk::abi_stable::{
    library::{CheckTypeLayout, LibHeader, RootModuleResult},
    prefix_type::PrefixTypeTrait,
    sabi_trait::TD_Opaque,
    std_types::{RResult, RSlice, RStr, RString, RVec},
};
use stagecraft_sdk::{Attachment, Hooks, PluginInfo, PluginKind, SdkVersion, SiteInfo, SiteKind, TensorHandle, SDK_VERSION};

struct NextCumsum {
    suffix: String,
    sites: Vec<SiteInfo>,
    params: Vec<(u32, TensorHandle)>,
}

impl MethodAbi for NextCumsum {
    fn select_sites(&mut self, _host: HostRef<'_>, sites: RSlice<'_, SiteInfo>) -> CallResult<RVec<Attachment>> {
        self.sites = sites.to_vec();
        let picked: RVec<Attachment> = sites
            .iter()
            .enumerate()
            .filter(|(_, s)| s.kind == SiteKind::LINEAR && s.name.as_str().ends_with(self.suffix.as_str()))
            .map(|(i, _)| Attachment { site: i as u32, hooks: Hooks::POST })
            .collect();
        RResult::ROk(picked)
    }

    fn init_site(&mut self, host: HostRef<'_>, site: u32) -> CallResult<()> {
        let _ = host;
        self.params.push((site, TensorHandle::NONE));
        RResult::ROk(())
    }

    fn forward(&self, host: HostRef<'_>, site: u32, _pre: bool, _x: TensorHandle, y: TensorHandle) -> CallResult<TensorHandle> {
        let _ = site;
        host.cumsum(y, 2)
    }
}

extern "C" fn sdk_version() -> SdkVersion {
    SDK_VERSION
}

extern "C" fn manifest() -> RVec<PluginInfo> {
    vec![PluginInfo {
        name: "next_cumsum".into(),
        kind: PluginKind::METHOD,
        version: "0.1.0".into(),
        description: "cumulative sums through an op appended in SDK 1.4".into(),
        config_schema: "{}".into(),
    }]
    .into()
}

extern "C" fn new_method(name: RStr<'_>, config: RStr<'_>, _host: HostRef<'_>) -> CallResult<MethodBox> {
    if name.as_str() != "next_cumsum" {
        return RResult::RErr(RString::from(format!("no method `{name}`")));
    }
    let suffix = config.as_str().split('"').nth(3).unwrap_or("up_proj").to_string();
    RResult::ROk(MethodAbi_TO::from_value(NextCumsum { suffix, sites: Vec::new(), params: Vec::new() }, TD_Opaque))
}

extern "C" fn new_optimizer(_: RStr<'_>, _: RStr<'_>, _: HostRef<'_>) -> CallResult<OptimizerBox> {
    RResult::RErr("no optimizers here".into())
}

extern "C" fn new_stage(_: RStr<'_>, _: RStr<'_>, _: HostRef<'_>) -> CallResult<StageBox> {
    RResult::RErr("no stages here".into())
}

fn plugin_lib() -> PluginLibRef {
    PluginLib { sdk_version, manifest, new_method, new_optimizer, new_stage }.leak_into_prefix()
}

extern "C" fn loader() -> RootModuleResult {
    stagecraft_sdk::abi_stable::library::__call_root_module_loader(plugin_lib)
}

#[unsafe(export_name = "stagecraft_plugin_compat_next")]
pub static LIB_HEADER: LibHeader = {
    // SAFETY: `loader` returns the root module of type `PluginLibRef`.
    unsafe { LibHeader::from_constructor::<PluginLibRef>(loader, CheckTypeLayout::Yes) }
};
