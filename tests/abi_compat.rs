//! Loading plugins across SDK versions, and every load or call failure the host must
//! survive with one clear line.

mod support;

use candle_core::{Device, Tensor};
use stagecraft_core::model::{Adapters, MlpLm, MlpLmConfig, Model};
use stagecraft_core::plugin::{Compat, Registry, SearchDir};
use stagecraft_core::Error;
use stagecraft_sdk::MergeSupport;
use support::{compat, scratch, state};

const CFG: MlpLmConfig = MlpLmConfig { vocab: 32, hidden: 16, intermediate: 24, layers: 2 };

fn ids() -> Tensor {
    Tensor::new(&[[1u32, 5, 9, 3], [7, 2, 2, 30]], &Device::Cpu).expect("ids")
}

fn one_line(e: &Error) -> String {
    support::one_line(e)
}

#[test]
fn plugin_built_against_older_sdk_loads_and_runs() {
    let c = compat();
    let mut reg = Registry::empty(scratch("older"));
    let lib = reg.load_file(&c.old).expect("older plugin loads");
    assert_eq!(lib.compat, Some(Compat::OlderSdk));
    assert_eq!(lib.sdk.to_string(), "1.0.0");
    assert!(
        lib.sdk < stagecraft_sdk::SDK_VERSION,
        "the plugin's SDK is older than the host's {}",
        stagecraft_sdk::SDK_VERSION
    );

    let st = state();
    let model = MlpLm::new(CFG, 1, &Device::Cpu).expect("model");
    let base = model.forward(&ids(), None, &Adapters::none(model.sites().len())).expect("base").logits.expect("logits");

    let mut adapters = Adapters::none(model.sites().len());
    let m = reg.new_method("old_scale", r#"{"suffix": "down_proj"}"#, &st).expect("instance");
    adapters.attach(m, model.sites()).expect("attach");
    assert_eq!(adapters.methods()[0].attachments().len(), 2);
    let out = model.forward(&ids(), None, &adapters).expect("forward through old plugin").logits.expect("logits");
    // `y · (1 + s)` with s = 0.5 on both down projections: what the model computes with
    // those weights scaled by 1.5.
    let scaled = MlpLm::new(CFG, 1, &Device::Cpu).expect("model");
    for (name, w) in scaled.weights() {
        if name.ends_with("down_proj.weight") {
            w.var().set(&w.var().as_tensor().affine(1.5, 0.0).expect("scale")).expect("set");
        }
    }
    let want =
        scaled.forward(&ids(), None, &Adapters::none(scaled.sites().len())).expect("forward").logits.expect("logits");
    let (d, effect) = (support::max_abs_diff(&out, &want), support::max_abs_diff(&out, &base));
    // Exact up to rounding (scaling the output or the weight differ in the last bits):
    // an op off by 0.1% would leave 1e-3 of the effect.
    assert!(effect > 0.0 && d <= 1e-4 * effect, "old plugin output off by {d}, for an effect of {effect}");

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

    // The method appended in 1.4, at a site the plugin hooks: it declares no low-rank
    // update (so the forward above called its hook).
    assert!(m.low_rank(site).expect("no declaration").is_none());
}

#[test]
fn plugin_calling_an_op_the_host_lacks_gets_the_default_body_error() {
    let c = compat();
    let mut reg = Registry::empty(scratch("newer"));
    let lib = reg.load_file(&c.next).expect("newer plugin loads");
    assert_eq!(lib.compat, Some(Compat::Checked));
    assert_eq!(lib.sdk.to_string(), "1.5.0");
    let st = state();
    let model = MlpLm::new(CFG, 1, &Device::Cpu).expect("model");
    let mut adapters = Adapters::none(model.sites().len());
    adapters
        .attach(reg.new_method("next_cumsum", r#"{"suffix": "up_proj"}"#, &st).expect("instance"), model.sites())
        .expect("attach");
    let err = model.forward(&ids(), None, &adapters).expect_err("host lacks cumsum");
    let msg = one_line(&err);
    assert!(msg.contains("host lacks op `cumsum`"), "{msg}");
    assert!(msg.contains("host built against stagecraft-sdk 1.4.0, plugin against 1.5.0"), "{msg}");
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
    assert!(msg.contains("plugin built against stagecraft-sdk 1.0.0, host 1.4.0"), "{msg}");
    assert!(
        msg.contains("mismatched type at PluginLib.new_method > VTable.new_param > Init.a: expected f64, found f32"),
        "{msg}"
    );
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
    let errors = reg.scan_dirs(&[SearchDir::required(&dir)]);
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
    // Every plugin the two files share is named, not only the first.
    assert!(msg.contains("are provided by both"), "{msg}");
    assert!(msg.contains("`panicky`") && msg.contains("`nan_loss`") && msg.contains("`wrong_shape`"), "{msg}");
    assert!(msg.contains("libcompat_faulty.so") && msg.contains("libfaulty_copy.so"), "{msg}");
}

fn faulty_forward(name: &str) -> (Error, Registry) {
    let c = compat();
    let mut reg = Registry::empty(scratch(&format!("faulty-{name}")));
    reg.load_file(&c.faulty).expect("load");
    let st = state();
    let model = MlpLm::new(CFG, 1, &Device::Cpu).expect("model");
    let mut adapters = Adapters::none(model.sites().len());
    adapters
        .attach(reg.new_method(name, r#"{"targets": ["up_proj"]}"#, &st).expect("instance"), model.sites())
        .expect("attach");
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
fn a_declared_low_rank_update_of_the_wrong_shape_is_an_error_naming_plugin_and_site() {
    let c = compat();
    let mut reg = Registry::empty(scratch("faulty-low-rank"));
    reg.load_file(&c.faulty).expect("load");
    let st = state();
    let model = MlpLm::new(CFG, 1, &Device::Cpu).expect("model");
    let mut adapters = Adapters::none(model.sites().len());
    let m = reg.new_method("bad_low_rank", r#"{"targets": ["up_proj"]}"#, &st).expect("instance");
    let msg = one_line(&adapters.attach(m, model.sites()).expect_err("swapped factors refused on attaching"));
    assert!(msg.contains("plugin `bad_low_rank`") && msg.contains("low_rank at model.layers.0.mlp.up_proj"), "{msg}");
    assert!(msg.contains("A [24, 2] and B [2, 16], expected [r, 16] and [24, r]"), "{msg}");
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

#[test]
fn a_plugin_of_another_major_sdk_version_is_refused() {
    let mut reg = Registry::empty(scratch("major"));
    let msg = one_line(&reg.load_file(&compat().major).err().expect("refused"));
    assert!(
        msg.contains("built against stagecraft-sdk 2.0.0")
            && msg.contains("major versions differ")
            && msg.contains("rebuild the plugin"),
        "{msg}"
    );
}

#[test]
fn a_library_file_replaces_the_built_in_of_the_same_name() {
    let mut reg = Registry::with_builtins(scratch("replace")).expect("registry");
    let (lib, _) = reg.find(stagecraft_sdk::PluginKind::METHOD, "lora").expect("built-in lora");
    assert_eq!(lib.source, stagecraft_core::plugin::Source::Builtin);
    let file = support::first_party("lora");
    reg.load_file(&file).expect("the .so loads");
    let (lib, _) = reg.find(stagecraft_sdk::PluginKind::METHOD, "lora").expect("lora");
    assert_eq!(lib.source, stagecraft_core::plugin::Source::File { path: std::fs::canonicalize(&file).expect("path") });
}

/// A registry with the faulty plugins and the first-party optimizers and objectives.
fn faulty_registry(name: &str) -> Registry {
    let mut reg = Registry::with_builtins(scratch(name)).expect("registry");
    reg.load_file(&compat().faulty).expect("faulty plugins load");
    reg
}

#[test]
fn panics_while_a_plugin_is_made_or_sets_up_are_errors_naming_it() {
    let reg = faulty_registry("panic-new");
    let st = state();
    let msg = one_line(&reg.new_method("panicky_new", r#"{"targets": []}"#, &st).err().expect("fails"));
    assert!(
        msg.contains("plugin `panicky_new`") && msg.contains("panicked") && msg.contains("deliberate panic in new"),
        "{msg}"
    );
    let model = MlpLm::new(CFG, 1, &Device::Cpu).expect("model");
    let mut adapters = Adapters::none(model.sites().len());
    let m = reg.new_method("panicky_init", r#"{"targets": ["up_proj"]}"#, &st).expect("made");
    let msg = one_line(&adapters.attach(m, model.sites()).expect_err("init fails"));
    assert!(
        msg.contains("plugin `panicky_init`")
            && msg.contains("init_site(model.layers.0.mlp.up_proj)")
            && msg.contains("deliberate panic creating"),
        "{msg}"
    );
}

#[test]
fn panics_in_an_optimizer_or_an_objective_are_errors_naming_them() {
    use stagecraft_core::train::{Batch, Trainer};
    let reg = faulty_registry("panic-train");
    let trainer = |objective: &str, optimizer: &str| {
        let st = state();
        let model = MlpLm::new(CFG, 1, &Device::Cpu).expect("model");
        let adapters = Adapters::none(model.sites().len());
        let stage = reg.new_objective(objective, "{}", &st).expect("objective");
        let opt = reg.new_optimizer(optimizer, r#"{"lr": 0.1}"#, &st).expect("optimizer");
        Trainer::new(st, Box::new(model), adapters, stage, opt).expect("trainer")
    };
    let msg =
        one_line(&trainer("causal_lm", "panicky_opt").train_step(&Batch::tokens(ids()), 0.1).expect_err("step fails"));
    assert!(
        msg.contains("plugin `panicky_opt` failed in `step`") && msg.contains("deliberate panic in step 1"),
        "{msg}"
    );
    let msg =
        one_line(&trainer("panicky_stage", "adamw").train_step(&Batch::tokens(ids()), 0.1).expect_err("loss fails"));
    assert!(
        msg.contains("plugin `panicky_stage` failed in `compute`") && msg.contains("deliberate panic in compute"),
        "{msg}"
    );
}

#[test]
fn a_panic_inside_a_host_op_is_an_error_for_the_plugin() {
    use stagecraft_core::plugin::{host_for, InstanceStore};
    let st = state();
    let host = host_for(&st, &std::rc::Rc::new(InstanceStore::default()), "probe");
    // A shape whose element count overflows makes the allocation panic inside candle.
    let shape = [usize::MAX / 2, 3];
    let msg = host
        .full(shape.as_slice().into(), 1.0, stagecraft_sdk::DType::F32)
        .into_result()
        .expect_err("fails")
        .to_string();
    assert!(msg.starts_with("op `full`: host panicked") && !msg.contains('\n'), "{msg}");
    // The host is fine afterwards.
    let x = st.temp(Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).expect("x"));
    assert!(host.add(x, x).into_result().is_ok());
}

#[test]
fn a_plugin_can_overwrite_only_what_it_owns() {
    // `thief` tries to assign to every handle of the table's first generation: base
    // weights and other plugins' parameters included. Each attempt is refused.
    use stagecraft_core::train::{Batch, Trainer};
    let reg = faulty_registry("thief");
    let st = state();
    let model = MlpLm::new(CFG, 1, &Device::Cpu).expect("model");
    model.weights().iter().for_each(|(_, w)| w.set_trainable(false));
    let before: Vec<Vec<u32>> = model.weights().iter().map(|(_, w)| support::bits(w.var().as_tensor())).collect();
    let mut adapters = Adapters::none(model.sites().len());
    adapters
        .attach(reg.new_method("lora", r#"{"targets": ["down_proj"]}"#, &st).expect("lora"), model.sites())
        .expect("attach");
    adapters
        .attach(reg.new_method("thief", r#"{"targets": ["up_proj"]}"#, &st).expect("thief"), model.sites())
        .expect("attach");
    let stage = reg.new_objective("causal_lm", "{}", &st).expect("objective");
    let opt = reg.new_optimizer("sgd", r#"{"lr": 0.1}"#, &st).expect("optimizer");
    let mut t = Trainer::new(st.clone(), Box::new(model), adapters, stage, opt).expect("trainer");
    t.train_step(&Batch::tokens(ids()), 0.1).expect("no theft succeeds");
    let after: Vec<Vec<u32>> = t.model().weights().iter().map(|(_, w)| support::bits(w.var().as_tensor())).collect();
    assert_eq!(before, after, "base weights untouched");
    // The refusal names the rule.
    let host = stagecraft_core::plugin::host_for(
        &st,
        &std::rc::Rc::new(stagecraft_core::plugin::InstanceStore::default()),
        "probe",
    );
    let p = t.params()[0].handle;
    let msg = host.assign(p, p).into_result().expect_err("refused").to_string();
    assert!(msg.contains("may only assign to its own parameters and buffers"), "{msg}");
}
