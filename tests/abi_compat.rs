//! Loading plugins across SDK versions, and every load or call failure the host must
//! survive with one clear line.

mod support;

use candle_core::{Device, Tensor};
use stagecraft_core::model::{Adapters, MlpLm, MlpLmConfig, Model};
use stagecraft_core::plugin::{Compat, Registry};
use stagecraft_core::Error;
use stagecraft_sdk::MergeSupport;
use support::{compat, scratch, state};

const CFG: MlpLmConfig = MlpLmConfig { vocab: 32, hidden: 16, intermediate: 24, layers: 2 };

fn ids() -> Tensor {
    Tensor::new(&[[1u32, 5, 9, 3], [7, 2, 2, 30]], &Device::Cpu).expect("ids")
}

fn one_line(e: &Error) -> String {
    let s = e.to_string();
    assert!(!s.contains('\n'), "error is not one line: {s}");
    s
}

#[test]
fn plugin_built_against_older_sdk_loads_and_runs() {
    let c = compat();
    let mut reg = Registry::empty(scratch("older"));
    let lib = reg.load_file(&c.old).expect("older plugin loads");
    assert_eq!(lib.compat, Some(Compat::OlderSdk));
    assert_eq!(lib.sdk.to_string(), "1.0.0");

    let st = state();
    let model = MlpLm::new(CFG, 1, &Device::Cpu).expect("model");
    let base = model.forward(&ids(), None, &Adapters::none(model.sites().len())).expect("base").logits.expect("logits");

    let mut adapters = Adapters::none(model.sites().len());
    let m = reg.new_method("old_scale", r#"{"suffix": "down_proj"}"#, &st).expect("instance");
    adapters.attach(m, model.sites()).expect("attach");
    assert_eq!(adapters.methods()[0].attachments().len(), 2);
    let out = model.forward(&ids(), None, &adapters).expect("forward through old plugin").logits.expect("logits");
    assert_ne!(out.to_vec3::<f32>().expect("v"), base.to_vec3::<f32>().expect("v"));

    // A method appended after the 1.0 prefix: the host falls back to the default body.
    let w = Tensor::zeros((CFG.hidden, CFG.intermediate), candle_core::DType::F32, &Device::Cpu).expect("w");
    let site = model.sites().index("model.layers.0.mlp.down_proj").expect("site");
    let err = adapters.methods()[0].merge(site, &w).expect_err("old plugin has no merge");
    let msg = one_line(&err);
    assert!(msg.contains("plugin `old_scale`") && msg.contains("lacks `merge`"), "{msg}");

    // Methods appended in 1.1 (the forward above already went through `begin_forward`
    // and `kv_prefix_len`): neutral answers on the plugin's behalf.
    let m = &adapters.methods()[0];
    assert_eq!(m.merge_support(), MergeSupport::UNKNOWN);
    assert_eq!(m.kv_prefix_len(), 0);
    let bias = Tensor::new(&[1f32, 2.0], &Device::Cpu).expect("bias");
    assert_eq!(m.merge_bias(site, &bias).expect("bias kept").to_vec1::<f32>().expect("v"), vec![1.0, 2.0]);
}

#[test]
fn plugin_calling_an_op_the_host_lacks_gets_the_default_body_error() {
    let c = compat();
    let mut reg = Registry::empty(scratch("newer"));
    let lib = reg.load_file(&c.next).expect("newer plugin loads");
    assert_eq!(lib.compat, Some(Compat::Checked));
    assert_eq!(lib.sdk.to_string(), "1.2.0");
    let st = state();
    let model = MlpLm::new(CFG, 1, &Device::Cpu).expect("model");
    let mut adapters = Adapters::none(model.sites().len());
    adapters.attach(reg.new_method("next_cumsum", r#"{"suffix": "up_proj"}"#, &st).expect("instance"), model.sites()).expect("attach");
    let err = model.forward(&ids(), None, &adapters).expect_err("host lacks cumsum");
    let msg = one_line(&err);
    assert!(msg.contains("host lacks op `cumsum`"), "{msg}");
    assert!(msg.contains("host built against stagecraft-sdk 1.1.0, plugin against 1.2.0"), "{msg}");
    // The host is fine afterwards.
    assert!(model.forward(&ids(), None, &Adapters::none(model.sites().len())).is_ok());
}

#[test]
fn incompatible_abi_is_one_line_with_versions_and_a_report_file() {
    let c = compat();
    let dir = scratch("mismatch");
    let mut reg = Registry::empty(&dir);
    let err = match reg.load_file(&c.old_mismatch) {
        Err(e) => e,
        Ok(_) => panic!("mismatched plugin must not load"),
    };
    let msg = one_line(&err);
    assert!(msg.contains("incompatible ABI"), "{msg}");
    assert!(msg.contains("plugin built against stagecraft-sdk 1.0.0, host 1.1.0"), "{msg}");
    assert!(msg.contains("mismatched type at PluginLib.new_method > VTable.new_param > Init.a: expected f64, found f32"), "{msg}");
    let report = dir.join("abi-mismatch-compat_old.txt");
    assert!(msg.contains(&report.display().to_string()), "{msg}");
    let text = std::fs::read_to_string(&report).expect("report written");
    assert!(text.lines().count() > 20, "full report expected");
    // The registry still works and still loads good plugins.
    assert!(reg.load_file(&c.faulty).is_ok());
}

#[test]
fn files_that_are_not_plugins_are_rejected_in_one_line() {
    let c = compat();
    let dir = scratch("not-plugins");
    let mut reg = Registry::empty(&dir);

    let msg = one_line(&reg.load_file(&c.not_a_plugin).err().expect("not a plugin"));
    assert!(msg.contains("not a stagecraft plugin"), "{msg}");

    let text = dir.join("notes.so");
    std::fs::write(&text, "just text").expect("write");
    let msg = one_line(&reg.load_file(&text).err().expect("not a library"));
    assert!(msg.contains("not a shared library"), "{msg}");

    let msg = one_line(&reg.load_file(&dir.join("missing.so")).err().expect("missing"));
    assert!(msg.contains("cannot read"), "{msg}");

    // A directory scan reports each failure and loads the rest.
    std::fs::copy(&c.faulty, dir.join("libfaulty.so")).expect("copy");
    let errors = reg.load_dirs(&[dir.clone()]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(reg.plugins().any(|(n, _, _)| n == "panicky"));
}

#[test]
fn two_files_with_the_same_plugin_name_is_an_error_naming_both() {
    let c = compat();
    let dir = scratch("duplicate");
    let copy = dir.join("libfaulty_copy.so");
    std::fs::copy(&c.faulty, &copy).expect("copy");
    let mut reg = Registry::empty(&dir);
    reg.load_file(&c.faulty).expect("first");
    let msg = one_line(&reg.load_file(&copy).err().expect("duplicate"));
    assert!(msg.contains("is provided by both"), "{msg}");
    assert!(msg.contains("libcompat_faulty.so") && msg.contains("libfaulty_copy.so"), "{msg}");
}

fn faulty_forward(name: &str) -> (Error, Registry) {
    let c = compat();
    let mut reg = Registry::empty(scratch(&format!("faulty-{name}")));
    reg.load_file(&c.faulty).expect("load");
    let st = state();
    let model = MlpLm::new(CFG, 1, &Device::Cpu).expect("model");
    let mut adapters = Adapters::none(model.sites().len());
    adapters.attach(reg.new_method(name, r#"{"targets": ["up_proj"]}"#, &st).expect("instance"), model.sites()).expect("attach");
    let first = model.forward(&ids(), None, &adapters);
    st.end_step();
    let err = match first {
        Err(e) => e,
        Ok(_) => model.forward(&ids(), None, &adapters).expect_err("second forward fails"),
    };
    (err, reg)
}

#[test]
fn a_panicking_entry_point_is_an_error_naming_plugin_and_method() {
    let (err, _) = faulty_forward("panicky");
    let msg = one_line(&err);
    assert!(msg.contains("plugin `panicky`") && msg.contains("forward at model.layers.0.mlp.up_proj"), "{msg}");
    assert!(msg.contains("panicked") && msg.contains("deliberate panic in forward"), "{msg}");
}

#[test]
fn a_result_of_the_wrong_shape_is_rejected() {
    let (err, _) = faulty_forward("wrong_shape");
    let msg = one_line(&err);
    assert!(msg.contains("returned a tensor of shape [2, 4, 1], expected [2, 4, 24]"), "{msg}");
}

#[test]
fn forged_and_stale_handles_are_errors() {
    let (err, _) = faulty_forward("forger");
    let msg = one_line(&err);
    assert!(msg.contains("plugin `forger`") && msg.contains("invalid tensor handle"), "{msg}");
    let (err, _) = faulty_forward("stale");
    let msg = one_line(&err);
    assert!(msg.contains("plugin `stale`") && msg.contains("stale tensor handle"), "{msg}");
}

#[test]
fn a_rejected_config_names_the_plugin_and_field() {
    let c = compat();
    let mut reg = Registry::empty(scratch("bad-config"));
    reg.load_file(&c.faulty).expect("load");
    let st = state();
    let msg = one_line(&reg.new_method("bad_config", r#"{"targets": ["q_proj"]}"#, &st).err().expect("rejected"));
    assert!(msg.contains("plugin `bad_config`") && msg.contains("targets: expected at most 0"), "{msg}");
    let msg = one_line(&reg.new_method("panicky", r#"{"targetz": []}"#, &st).err().expect("unknown field"));
    assert!(msg.contains("unknown field `targetz`"), "{msg}");
    let msg = one_line(&reg.new_method("nope", "{}", &st).err().expect("unknown plugin"));
    assert!(msg.contains("no method plugin named `nope`"), "{msg}");
}
