//! PEFT adapter directories through the LoRA plugin (`.so`): the fixture's LoRA on the
//! llama-tiny base reproduces PEFT's logits, unmerged and merged; malformed adapters
//! are one-line errors naming the file.

mod support;

use candle_core::{Device, Tensor};
use stagecraft_core::adapter::{load_peft, merge_into_base};
use stagecraft_core::model::{load_model, Adapters, Model};
use stagecraft_core::plugin::{HostState, Registry};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use support::{first_party, max_abs_diff, scratch, state};

fn fixture(p: &str) -> PathBuf {
    support::fixture("llama-tiny", p)
}

fn reference(name: &str) -> Tensor {
    support::reference("llama-tiny").remove(name).expect(name)
}

fn setup() -> (Box<dyn Model>, Adapters, Rc<HostState>, Registry) {
    let mut reg = Registry::empty(scratch("peft"));
    reg.load_file(&first_party("lora")).expect("lora .so");
    let st = state();
    let model = load_model(&fixture("base"), &Device::Cpu).expect("base model");
    for (_, w) in model.weights() {
        w.set_trainable(false);
    }
    st.register_model(model.as_ref());
    let adapters = Adapters::none(model.sites().len());
    (model, adapters, st, reg)
}

fn ids() -> Tensor {
    reference("input_ids").to_dtype(candle_core::DType::U32).expect("u32")
}

#[test]
fn peft_lora_reproduces_peft_logits_unmerged_and_merged() {
    let (model, mut adapters, st, reg) = setup();
    load_peft(&fixture("lora"), &reg, &st, model.as_ref(), &mut adapters).expect("load adapter");
    assert_eq!(adapters.methods()[0].attachments().len(), 4, "q_proj and v_proj in 2 layers");
    let logits = model.forward(&ids(), None, &adapters).expect("forward").logits.expect("logits");
    let d = max_abs_diff(&logits, &reference("logits_lora"));
    println!("logits_lora max abs diff {d:e}");
    assert!(d <= 1e-5, "logits_lora differ by {d}");
    // The adapter really changes the output.
    assert!(max_abs_diff(&logits, &reference("logits")) > 1e-2);

    merge_into_base(model.as_ref(), &mut adapters).expect("merge");
    assert!(adapters.methods().is_empty());
    let merged = model.forward(&ids(), None, &adapters).expect("forward").logits.expect("logits");
    let d = max_abs_diff(&merged, &reference("logits_lora_merged"));
    println!("logits_lora_merged max abs diff {d:e}");
    assert!(d <= 1e-5, "merged logits differ by {d}");
}

fn broken_copy(
    name: &str,
    edit_config: impl Fn(&mut serde_json::Value),
    edit_tensors: impl Fn(&mut std::collections::HashMap<String, Tensor>),
) -> PathBuf {
    let dir = scratch(&format!("peft-{name}"));
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("lora/adapter_config.json")).expect("read"))
            .expect("json");
    edit_config(&mut cfg);
    std::fs::write(dir.join("adapter_config.json"), cfg.to_string()).expect("write");
    let mut t = candle_core::safetensors::load(fixture("lora/adapter_model.safetensors"), &Device::Cpu).expect("load");
    edit_tensors(&mut t);
    candle_core::safetensors::save(&t, dir.join("adapter_model.safetensors")).expect("save");
    dir
}

fn load_err(dir: &Path) -> String {
    let (model, mut adapters, st, reg) = setup();
    let e = load_peft(dir, &reg, &st, model.as_ref(), &mut adapters).expect_err("must fail").to_string();
    assert!(!e.contains('\n'), "not one line: {e}");
    e
}

#[test]
fn malformed_adapters_are_one_line_errors_naming_the_file() {
    let key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight";
    let missing = broken_copy(
        "missing",
        |_| {},
        |t| {
            t.remove(key);
        },
    );
    let e = load_err(&missing);
    assert!(e.contains("adapter_model.safetensors") && e.contains("missing tensor") && e.contains(key), "{e}");

    let shape = broken_copy(
        "shape",
        |_| {},
        |t| {
            t.insert(key.to_string(), Tensor::zeros((32, 3), candle_core::DType::F32, &Device::Cpu).expect("z"));
        },
    );
    let e = load_err(&shape);
    assert!(e.contains("has shape [32, 3], expected [32, 4]"), "{e}");

    let extra = broken_copy(
        "extra",
        |_| {},
        |t| {
            t.insert(
                "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight".into(),
                Tensor::zeros((4, 64), candle_core::DType::F32, &Device::Cpu).expect("z"),
            );
        },
    );
    let e = load_err(&extra);
    assert!(e.contains("up_proj.lora_A.weight") && e.contains("matches no parameter"), "{e}");

    // DoRA needs its magnitude vectors: a LoRA file is not a DoRA adapter.
    let dora = broken_copy("dora", |c| c["use_dora"] = true.into(), |_| {});
    let e = load_err(&dora);
    assert!(
        e.contains("adapter_model.safetensors") && e.contains("missing tensor") && e.contains("lora_magnitude_vector"),
        "{e}"
    );

    let conv = broken_copy("conv", |c| c["fan_in_fan_out"] = true.into(), |_| {});
    let e = load_err(&conv);
    assert!(e.contains("adapter_config.json") && e.contains("fan_in_fan_out"), "{e}");

    let loha = broken_copy("loha", |c| c["peft_type"] = "LOHA".into(), |_| {});
    let e = load_err(&loha);
    assert!(e.contains("peft_type `LOHA`") && e.contains("supported: LORA, IA3, PROMPT_TUNING, PREFIX_TUNING"), "{e}");

    let nothing = load_err(&scratch("peft-empty"));
    assert!(nothing.contains("adapter_config.json") && nothing.contains("cannot read"), "{nothing}");

    let no_target = broken_copy("target", |c| c["target_modules"] = serde_json::json!(["qq_proj"]), |_| {});
    let e = load_err(&no_target);
    assert!(e.contains("qq_proj") && e.contains("matches no linear site"), "{e}");
}
