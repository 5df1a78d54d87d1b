//! PEFT adapters of every method stagecraft reads — DoRA, rsLoRA with per-module
//! ranks and layers, IA3, prompt tuning, prefix tuning — through the first-party
//! plugins loaded from their `.so` files: the outputs match what PEFT computed, within
//! 1e-5, unmerged and (where the method merges) merged; and adapters stagecraft
//! exported give PEFT the outputs stagecraft computes.
//!
//! The references were made by `tests/fixtures/make_method_references.py` with
//! transformers 5.24 and PEFT 0.21 (see that script for what each adapter is):
//! ```python
//! model = get_peft_model(base, config)          # random, non-trivial adapter weights
//! logits = model(input_ids=ids).logits          # e.g. logits_ia3
//! merged = model.merge_and_unload()(input_ids=ids).logits
//! ```

mod support;

use candle_core::{DType, Device, Tensor};
use stagecraft_core::adapter::{load_peft, merge_into_base};
use stagecraft_core::model::{load_model, Adapters, Model};
use stagecraft_core::plugin::{HostState, Registry};
use std::rc::Rc;
use support::{first_party, fixture, fixture_tensors, max_abs_diff, scratch, state};

/// Within the project's parity bar (1e-4 vs transformers/PEFT). The fused CPU kernels
/// round differently from PyTorch's MKL (other summation orders): rsLoRA's logits land
/// 1.0e-5 from PEFT's, the others below.
const TOL: f32 = 5e-5;

/// The plugins from their `.so` files, as a user's install has them.
fn registry() -> Registry {
    let mut reg = Registry::empty(scratch("peft-methods"));
    for lib in ["lora", "ia3", "prompt_tuning"] {
        reg.load_file(&first_party(lib)).expect("plugin .so loads");
    }
    reg
}

/// A base model, frozen, in evaluation mode, with the adapter of `folder` attached.
fn with_adapter(model: &str, folder: &str) -> (Box<dyn Model>, Adapters, Rc<HostState>, Registry) {
    let reg = registry();
    let st = state();
    st.set_training(false);
    let m = load_model(&fixture(model, "base"), &Device::Cpu).expect("base model");
    for (_, w) in m.weights() {
        w.set_trainable(false);
    }
    st.register_model(m.as_ref());
    let mut adapters = Adapters::none(m.sites().len());
    load_peft(&fixture(model, folder), &reg, &st, m.as_ref(), &mut adapters).expect("adapter loads");
    (m, adapters, st, reg)
}

fn llama_logits(model: &dyn Model, adapters: &Adapters) -> Tensor {
    let ids = fixture_tensors("llama-tiny", "reference.safetensors")["input_ids"].to_dtype(DType::U32).expect("u32");
    model.forward(&ids, None, adapters).expect("forward").logits.expect("logits")
}

fn bert_hidden(model: &dyn Model, adapters: &Adapters) -> Tensor {
    let r = fixture_tensors("bert-tiny", "reference.safetensors");
    let ids = r["input_ids"].to_dtype(DType::U32).expect("u32");
    model.forward(&ids, Some(&r["attention_mask"]), adapters).expect("forward").hidden
}

/// Checks one output against its reference, and that the adapter matters at all.
fn check(name: &str, ours: &Tensor, reference: &Tensor, base: &Tensor) {
    let d = max_abs_diff(ours, reference);
    println!("{name}: max abs diff vs PEFT {d:e}");
    assert!(d <= TOL, "{name} differs from PEFT by {d}");
    assert!(max_abs_diff(ours, base) > 1e-2, "{name}: the adapter changes nothing");
}

fn check_llama(folder: &str, merged: bool) {
    let want = fixture_tensors("llama-tiny", "methods.safetensors");
    let base = &fixture_tensors("llama-tiny", "reference.safetensors")["logits"];
    let (model, mut adapters, _st, _reg) = with_adapter("llama-tiny", folder);
    check(
        &format!("llama {folder}"),
        &llama_logits(model.as_ref(), &adapters),
        &want[&format!("logits_{folder}")],
        base,
    );
    if merged {
        merge_into_base(model.as_ref(), &mut adapters).expect("merge");
        check(
            &format!("llama {folder} merged"),
            &llama_logits(model.as_ref(), &adapters),
            &want[&format!("logits_{folder}_merged")],
            base,
        );
    }
}

fn check_bert(folder: &str, merged: bool) {
    let want = fixture_tensors("bert-tiny", "methods.safetensors");
    let base = &fixture_tensors("bert-tiny", "reference.safetensors")["last_hidden_state"];
    let (model, mut adapters, _st, _reg) = with_adapter("bert-tiny", folder);
    check(
        &format!("bert {folder}"),
        &bert_hidden(model.as_ref(), &adapters),
        &want[&format!("last_hidden_state_{folder}")],
        base,
    );
    if merged {
        merge_into_base(model.as_ref(), &mut adapters).expect("merge");
        check(
            &format!("bert {folder} merged"),
            &bert_hidden(model.as_ref(), &adapters),
            &want[&format!("last_hidden_state_{folder}_merged")],
            base,
        );
    }
}

#[test]
fn dora_matches_peft_unmerged_and_merged() {
    check_llama("dora", true);
    // BERT's query and value have biases: DoRA rescales the weight, never the bias.
    check_bert("dora", false);
}

#[test]
fn rslora_with_rank_and_alpha_patterns_on_one_layer_matches_peft() {
    let (_, adapters, _st, _reg) = with_adapter("llama-tiny", "rslora");
    let sites = adapters.methods()[0].attachments().len();
    assert_eq!(sites, 7, "the seven projections of layer 1 only");
    check_llama("rslora", false);
}

#[test]
fn ia3_matches_peft_unmerged_and_merged_with_biases() {
    check_llama("ia3", true);
    check_bert("ia3", true);
}

#[test]
fn prefix_tuning_matches_peft_on_a_decoder_and_an_encoder() {
    check_llama("prefix", false);
    check_bert("prefix", false);
}

#[test]
fn prompt_tuning_matches_peft_on_the_real_positions() {
    // PEFT's outputs carry the virtual tokens in front; stagecraft's drop them.
    let (model, adapters, _st, _reg) = with_adapter("llama-tiny", "prompt");
    let r = fixture_tensors("llama-tiny", "reference.safetensors");
    let peft = r["logits_prompt"].narrow(1, 4, 12).expect("real positions");
    check("llama prompt", &llama_logits(model.as_ref(), &adapters), &peft, &r["logits"]);
    check_bert("prompt", false);
}

#[test]
fn methods_that_cannot_merge_say_so() {
    for (model, folder) in [("llama-tiny", "prefix"), ("bert-tiny", "prompt")] {
        let (m, mut adapters, _st, _reg) = with_adapter(model, folder);
        assert_eq!(adapters.methods()[0].merge_support(), stagecraft_sdk::MergeSupport::NO);
        let e = merge_into_base(m.as_ref(), &mut adapters).expect_err("cannot merge").to_string();
        assert!(e.contains("only linear sites can be merged"), "{e}");
    }
}

/// The other direction: adapters stagecraft trained and exported
/// (`tests/fixtures/make_export_references.py` ran `stagecraft export` and loaded the
/// result with `PeftModel.from_pretrained`), against PEFT's outputs on them.
#[test]
fn stagecraft_exports_give_peft_the_same_outputs() {
    let want = fixture_tensors("llama-tiny", "exported.safetensors");
    let base = &fixture_tensors("llama-tiny", "reference.safetensors")["logits"];
    for stage in ["lora", "dora", "ia3", "prompt", "prefix"] {
        let (model, adapters, _st, _reg) = with_adapter("llama-tiny", &format!("exported/{stage}"));
        check(
            &format!("stagecraft export of {stage} in PEFT"),
            &llama_logits(model.as_ref(), &adapters),
            &want[&format!("logits_{stage}")],
            base,
        );
    }
}
