//! The objective plugins against the same losses written directly in candle: the
//! causal-LM and completion losses and the classification head give the same loss and
//! the same gradients, and report their metrics.

mod support;

use candle_core::{DType, Device, Tensor, Var};
use stagecraft_core::plugin::{Registry, StageInstance};
use stagecraft_sdk::ModelInfo;
use support::{first_party, scratch, state};

fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut r = stagecraft_core::rng::Rng::new(seed);
    let n: usize = shape.iter().product();
    Tensor::from_vec((0..n).map(|_| r.normal() as f32).collect::<Vec<_>>(), shape, &Device::Cpu).expect("tensor")
}

fn stage(name: &str, config: &str) -> (StageInstance, std::rc::Rc<stagecraft_core::plugin::HostState>) {
    let mut reg = Registry::empty(scratch(&format!("stage-{name}")));
    reg.load_file(&first_party("stages")).expect("load");
    let st = state();
    let s = reg.new_stage(name, config, &st).expect("stage");
    (s, st)
}

fn close(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).expect("sub").abs().expect("abs").flatten_all().expect("f").max(0).expect("max").to_scalar::<f32>().expect("s")
}

const B: usize = 2;
const S: usize = 5;
const V: usize = 7;

fn ids() -> Tensor {
    Tensor::new(&[[1u32, 4, 2, 6, 3], [0, 5, 5, 1, 2]], &Device::Cpu).expect("ids")
}

#[test]
fn causal_lm_loss_and_gradient_equal_candle_cross_entropy() {
    let (mut s, _st) = stage("causal_lm", "{}");
    let logits = Var::from_tensor(&random(&[B, S, V], 1)).expect("var");
    let out = s.compute(&[("logits", logits.as_tensor())], &[("input_ids", &ids())]).expect("compute");
    let pred = logits.as_tensor().narrow(1, 0, S - 1).expect("n").reshape((B * (S - 1), V)).expect("r");
    let tgt = ids().narrow(1, 1, S - 1).expect("n").flatten_all().expect("f");
    let direct = candle_nn::loss::cross_entropy(&pred, &tgt).expect("ce");
    assert!(close(&out.loss, &direct) <= 1e-6, "loss {} vs {}", out.loss, direct);
    let (gp, gd) = (out.loss.backward().expect("b"), direct.backward().expect("b"));
    let d = close(gp.get(logits.as_tensor()).expect("g"), gd.get(logits.as_tensor()).expect("g"));
    assert!(d <= 1e-6, "gradient differs by {d}");
    assert!(out.metrics.iter().any(|m| m.name.as_str() == "token_accuracy" && m.count == (B * (S - 1)) as f64));
    assert_eq!(out.per_example.expect("per-example loss").dims(), [B]);
}

#[test]
fn completion_loss_counts_only_completion_tokens_and_reports_exact_match() {
    let (mut s, _st) = stage("completion", "{}");
    let logits = Var::from_tensor(&random(&[B, S, V], 2)).expect("var");
    // Prompt = first 3 tokens: labels -100 there.
    let labels = Tensor::new(&[[-100i64, -100, -100, 6, 3], [-100, -100, -100, 1, 2]], &Device::Cpu).expect("labels");
    let out = s.compute(&[("logits", logits.as_tensor())], &[("input_ids", &ids()), ("labels", &labels)]).expect("compute");
    // Direct: positions 2 and 3 predict tokens 3 and 4.
    let pred = logits.as_tensor().narrow(1, 2, 2).expect("n").reshape((B * 2, V)).expect("r");
    let tgt = ids().narrow(1, 3, 2).expect("n").flatten_all().expect("f");
    let direct = candle_nn::loss::cross_entropy(&pred, &tgt).expect("ce");
    assert!(close(&out.loss, &direct) <= 1e-6, "loss {} vs {}", out.loss, direct);
    let (gp, gd) = (out.loss.backward().expect("b"), direct.backward().expect("b"));
    assert!(close(gp.get(logits.as_tensor()).expect("g"), gd.get(logits.as_tensor()).expect("g")) <= 1e-6);
    let em = out.metrics.iter().find(|m| m.name.as_str() == "exact_match").expect("exact_match");
    assert_eq!(em.count, B as f64);
    let argmax = pred.argmax(1).expect("argmax").to_vec1::<u32>().expect("v");
    let want = tgt.to_vec1::<u32>().expect("v");
    let exact = (0..B).filter(|&r| argmax[2 * r..2 * r + 2] == want[2 * r..2 * r + 2]).count();
    assert_eq!(em.sum, exact as f64);
    let err = s.compute(&[("logits", logits.as_tensor())], &[("input_ids", &ids())]).err().expect("labels are required");
    assert!(err.to_string().contains("labels"), "{err}");
}

#[test]
fn classification_head_matches_a_direct_linear_head() {
    let (mut s, _st) = stage("classification", r#"{"num_classes": 3, "pooling": "last"}"#);
    s.init(&ModelInfo { arch: "mlp".into(), hidden: 4, vocab: V, num_layers: 1, causal: true }).expect("init");
    let params = s.params();
    let (w, b) = (&params[0].var, &params[1].var);
    assert_eq!((params[0].name.as_str(), w.dims()), ("classifier.weight", [3usize, 4].as_slice()));
    let hidden = Var::from_tensor(&random(&[B, S, 4], 3)).expect("var");
    // Row 0 is padded after 3 tokens; row 1 is full.
    let mask = Tensor::new(&[[1u32, 1, 1, 0, 0], [1, 1, 1, 1, 1]], &Device::Cpu).expect("mask");
    let labels = Tensor::new(&[2i64, 0], &Device::Cpu).expect("labels");
    let out = s.compute(&[("hidden", hidden.as_tensor())], &[("input_ids", &ids()), ("attention_mask", &mask), ("class_labels", &labels)]).expect("compute");
    let pooled = Tensor::cat(&[hidden.as_tensor().narrow(0, 0, 1).expect("n").narrow(1, 2, 1).expect("n"), hidden.as_tensor().narrow(0, 1, 1).expect("n").narrow(1, 4, 1).expect("n")], 0).expect("cat").squeeze(1).expect("sq");
    let logits = pooled.matmul(&w.as_tensor().t().expect("t")).expect("mm").broadcast_add(b.as_tensor()).expect("add");
    let direct = candle_nn::loss::cross_entropy(&logits, &labels.to_dtype(DType::U32).expect("u32")).expect("ce");
    assert!(close(&out.loss, &direct) <= 1e-6, "loss {} vs {}", out.loss, direct);
    let (gp, gd) = (out.loss.backward().expect("b"), direct.backward().expect("b"));
    for v in [w, b, &hidden] {
        assert!(close(gp.get(v.as_tensor()).expect("g"), gd.get(v.as_tensor()).expect("g")) <= 1e-6);
    }
    assert!(out.metrics.iter().any(|m| m.name.as_str() == "accuracy" && m.count == B as f64));
    let bad = Tensor::new(&[5i64, 0], &Device::Cpu).expect("labels");
    let err = s.compute(&[("hidden", hidden.as_tensor())], &[("input_ids", &ids()), ("class_labels", &bad)]).err().expect("label out of range");
    assert!(!err.to_string().contains('\n') && err.to_string().contains("5"), "{err}");
}
