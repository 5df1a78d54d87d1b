//! The objective plugins against the same losses written directly in candle: the
//! causal-LM and completion losses (with padding, prompt masking and label smoothing)
//! the classification head and the distillation loss (KL to a teacher's logits mixed
//! with cross-entropy) give the same loss and gradients, and the same metrics and
//! per-example losses (which feed the loss quantiles).

mod support;

use candle_core::{DType, Device, Tensor, Var, D};
use stagecraft_core::plugin::{ObjectiveInstance, Registry};
use stagecraft_sdk::{Metric, ModelInfo};
use support::{first_party, max_abs_diff, random, scratch, state};

fn stage(name: &str, config: &str) -> (ObjectiveInstance, std::rc::Rc<stagecraft_core::plugin::HostState>) {
    let mut reg = Registry::empty(scratch(&format!("stage-{name}")));
    reg.load_file(&first_party("stages")).expect("load");
    let st = state();
    let s = reg.new_objective(name, config, &st).expect("stage");
    (s, st)
}

const B: usize = 2;
const S: usize = 5;
const V: usize = 7;

fn ids() -> Tensor {
    Tensor::new(&[[1u32, 4, 2, 6, 3], [0, 5, 5, 1, 2]], &Device::Cpu).expect("ids")
}

fn logits(seed: u64) -> Var {
    Var::from_tensor(&random(&[B, S, V], seed, 2.0)).expect("var")
}

/// A metric's contributions summed, as the host sums them (a metric given per example
/// has one entry per row).
fn metric(metrics: &[Metric], name: &str) -> Metric {
    let mine: Vec<&Metric> = metrics.iter().filter(|m| m.name.as_str() == name).collect();
    assert!(!mine.is_empty(), "no metric `{name}` in {metrics:?}");
    Metric::new(name, mine.iter().map(|m| m.sum).sum(), mine.iter().map(|m| m.count).sum())
}

/// A metric given per example: each row's score, `None` where it does not count.
fn per_example(metrics: &[Metric], name: &str) -> Vec<Option<f64>> {
    metrics.iter().filter(|m| m.name.as_str() == name).map(|m| (m.count == 1.0).then_some(m.sum)).collect()
}

/// The next-token loss written out: position `i` predicts token `i + 1`; `valid[r][i]`
/// says whether target `i + 1` of row `r` counts. Returns the scalar loss, the
/// per-row mean losses, and per row the (correct, counted) targets.
struct Direct {
    loss: Tensor,
    per_row: Vec<f32>,
    correct: Vec<f64>,
    counted: Vec<f64>,
}

fn direct_next_token(logits: &Tensor, valid: [[bool; S - 1]; B], smoothing: f64) -> Direct {
    let ids = ids().to_vec2::<u32>().expect("ids");
    let logp = candle_nn::ops::log_softmax(&logits.narrow(1, 0, S - 1).expect("n"), D::Minus1).expect("log softmax");
    let (mut terms, mut per_row, mut correct, mut counted) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 0..B {
        let (mut row, mut n, mut hits) = (Vec::new(), 0.0, 0.0);
        for i in (0..S - 1).filter(|&i| valid[r][i]) {
            let lp = logp.get(r).and_then(|t| t.get(i)).expect("position");
            let target = ids[r][i + 1] as usize;
            let nll = lp.get(target).and_then(|t| t.neg()).expect("nll");
            let uniform = lp.mean_all().and_then(|t| t.neg()).expect("uniform");
            let term = ((nll * (1.0 - smoothing)).expect("a") + (uniform * smoothing).expect("b")).expect("term");
            let best = lp.argmax(0).and_then(|t| t.to_scalar::<u32>()).expect("argmax") as usize;
            hits += f64::from(u8::from(best == target));
            n += 1.0;
            row.push(term);
        }
        let row_sum = Tensor::stack(&row, 0).and_then(|t| t.sum_all()).expect("row");
        per_row.push(row_sum.to_scalar::<f32>().expect("s") / n as f32);
        terms.push(row_sum);
        correct.push(hits);
        counted.push(n);
    }
    let total: f64 = counted.iter().sum();
    let loss = (Tensor::stack(&terms, 0).and_then(|t| t.sum_all()).expect("sum") / total).expect("mean");
    Direct { loss, per_row, correct, counted }
}

/// Loss, gradient and per-example losses of a plugin's output against the direct ones.
fn assert_same(what: &str, out: &stagecraft_core::plugin::StageLoss, direct: &Direct, logits: &Var) {
    let d = max_abs_diff(&out.loss, &direct.loss);
    assert!(d <= 1e-6, "{what}: loss {} vs {}", out.loss, direct.loss);
    let (gp, gd) = (
        stagecraft_core::kernels::backward(&out.loss).expect("backward"),
        stagecraft_core::kernels::backward(&direct.loss).expect("backward"),
    );
    let d = max_abs_diff(gp.get(logits.as_tensor()).expect("grad"), gd.get(logits.as_tensor()).expect("grad"));
    assert!(d <= 1e-6, "{what}: gradient differs by {d}");
    let per = out.per_example.as_ref().expect("per-example losses").to_vec1::<f32>().expect("[batch]");
    for (r, (got, want)) in per.iter().zip(&direct.per_row).enumerate() {
        assert!((got - want).abs() <= 1e-6, "{what}: row {r}'s loss {got} vs {want}");
    }
}

#[test]
fn causal_lm_loss_metrics_and_row_losses_equal_the_direct_ones_with_padding() {
    let (mut s, _st) = stage("causal_lm", "{}");
    let logits = logits(1);
    // Row 0 has 3 real tokens: targets 1 and 2 count (target 3 is padding).
    let mask = Tensor::new(&[[1u32, 1, 1, 0, 0], [1, 1, 1, 1, 1]], &Device::Cpu).expect("mask");
    let out = s
        .compute(&[("logits", logits.as_tensor())], &[("input_ids", &ids()), ("attention_mask", &mask)])
        .expect("compute");
    let direct = direct_next_token(logits.as_tensor(), [[true, true, false, false], [true; 4]], 0.0);
    assert_same("causal_lm", &out, &direct, &logits);
    let acc = metric(&out.metrics, "token_accuracy");
    assert_eq!((acc.sum, acc.count), (direct.correct.iter().sum(), 6.0), "token accuracy counts real targets only");
    assert!(acc.sum > 0.0 && acc.sum < acc.count, "the test logits should get some tokens right, not all: {acc:?}");
}

#[test]
fn label_smoothing_is_pytorchs() {
    let (mut s, _st) = stage("causal_lm", r#"{"label_smoothing": 0.1}"#);
    let logits = logits(4);
    let out = s.compute(&[("logits", logits.as_tensor())], &[("input_ids", &ids())]).expect("compute");
    assert_same("label smoothing", &out, &direct_next_token(logits.as_tensor(), [[true; 4]; 2], 0.1), &logits);
}

#[test]
fn completion_loss_counts_only_completion_tokens_and_reports_exact_match() {
    let (mut s, _st) = stage("completion", "{}");
    let logits = logits(2);
    // Prompt = first 3 tokens: labels -100 there. Row 1's last token is made right, so
    // its exact match hangs on one token.
    let labels = Tensor::new(&[[-100i64, -100, -100, 6, 3], [-100, -100, -100, 1, 2]], &Device::Cpu).expect("labels");
    let out =
        s.compute(&[("logits", logits.as_tensor())], &[("input_ids", &ids()), ("labels", &labels)]).expect("compute");
    let direct = direct_next_token(logits.as_tensor(), [[false, false, true, true]; 2], 0.0);
    assert_same("completion", &out, &direct, &logits);
    let acc = metric(&out.metrics, "token_accuracy");
    assert_eq!((acc.sum, acc.count), (direct.correct.iter().sum(), 4.0));
    let em = metric(&out.metrics, "exact_match");
    let exact = direct.correct.iter().zip(&direct.counted).filter(|(c, n)| c == n).count();
    assert_eq!((em.sum, em.count), (exact as f64, B as f64));

    // Logits that get row 0 entirely right and row 1 half right: exact match 1 of 2.
    let mut v = vec![0f32; B * S * V];
    for (r, i, t) in [(0, 2, 6), (0, 3, 3), (1, 2, 1), (1, 3, 0)] {
        v[(r * S + i) * V + t] = 5.0;
    }
    let set = Tensor::from_vec(v, (B, S, V), &Device::Cpu).expect("logits");
    let out = s.compute(&[("logits", &set)], &[("input_ids", &ids()), ("labels", &labels)]).expect("compute");
    let (acc, em) = (metric(&out.metrics, "token_accuracy"), metric(&out.metrics, "exact_match"));
    assert_eq!((acc.sum, acc.count, em.sum, em.count), (3.0, 4.0, 1.0, 2.0));
    // Exact match per example, in row order.
    assert_eq!(per_example(&out.metrics, "exact_match"), [Some(1.0), Some(0.0)]);

    let err = s.compute(&[("logits", logits.as_tensor())], &[("input_ids", &ids())]).expect_err("labels are required");
    assert!(err.to_string().contains("labels"), "{err}");
}

#[test]
fn classification_head_matches_a_direct_linear_head() {
    let (mut s, _st) = stage("classification", r#"{"num_classes": 3, "pooling": "last"}"#);
    s.init(&ModelInfo { arch: "mlp".into(), hidden: 4, vocab: V, num_layers: 1, causal: true }).expect("init");
    let params = s.params();
    let (w, b) = (&params[0].var, &params[1].var);
    assert_eq!((params[0].name.as_str(), w.dims()), ("classifier.weight", [3usize, 4].as_slice()));
    let hidden = Var::from_tensor(&random(&[B, S, 4], 3, 1.0)).expect("var");
    // Row 0 is padded after 3 tokens; row 1 is full.
    let mask = Tensor::new(&[[1u32, 1, 1, 0, 0], [1, 1, 1, 1, 1]], &Device::Cpu).expect("mask");
    let labels = Tensor::new(&[2i64, 0], &Device::Cpu).expect("labels");
    let out = s
        .compute(
            &[("hidden", hidden.as_tensor())],
            &[("input_ids", &ids()), ("attention_mask", &mask), ("class_labels", &labels)],
        )
        .expect("compute");
    let last = |row: usize, pos: usize| hidden.as_tensor().get(row).and_then(|t| t.get(pos)).expect("position");
    let pooled = Tensor::stack(&[last(0, 2), last(1, 4)], 0).expect("pooled");
    let logits =
        pooled.matmul(&w.as_tensor().t().expect("t")).and_then(|l| l.broadcast_add(b.as_tensor())).expect("head");
    let direct = candle_nn::loss::cross_entropy(&logits, &labels.to_dtype(DType::U32).expect("u32")).expect("ce");
    assert!(max_abs_diff(&out.loss, &direct) <= 1e-6, "loss {} vs {}", out.loss, direct);
    let (gp, gd) = (
        stagecraft_core::kernels::backward(&out.loss).expect("b"),
        stagecraft_core::kernels::backward(&direct).expect("b"),
    );
    for v in [w, b, &hidden] {
        assert!(max_abs_diff(gp.get(v.as_tensor()).expect("g"), gd.get(v.as_tensor()).expect("g")) <= 1e-6);
    }
    // Per-row cross-entropy and accuracy from the direct logits.
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1).and_then(|t| t.to_vec2::<f32>()).expect("log p");
    let per = out.per_example.as_ref().expect("per-example").to_vec1::<f32>().expect("[batch]");
    let predicted = logits.argmax(1).and_then(|t| t.to_vec1::<u32>()).expect("argmax");
    for (r, label) in [2usize, 0].into_iter().enumerate() {
        assert!((per[r] + logp[r][label]).abs() <= 1e-6, "row {r}: {} vs {}", per[r], -logp[r][label]);
    }
    let right = predicted.iter().zip([2u32, 0]).filter(|(p, l)| **p == *l).count();
    let acc = metric(&out.metrics, "accuracy");
    assert_eq!((acc.sum, acc.count), (right as f64, B as f64));
    let each: Vec<Option<f64>> =
        predicted.iter().zip([2u32, 0]).map(|(p, l)| Some(f64::from(u8::from(*p == l)))).collect();
    assert_eq!(per_example(&out.metrics, "accuracy"), each);

    let bad = Tensor::new(&[5i64, 0], &Device::Cpu).expect("labels");
    let err = s
        .compute(&[("hidden", hidden.as_tensor())], &[("input_ids", &ids()), ("class_labels", &bad)])
        .expect_err("label out of range");
    assert!(!err.to_string().contains('\n') && err.to_string().contains("has 5 at row 0"), "{err}");
}

/// `distill` against the same loss written out: while training,
/// `alpha·T²·KL(p_T(teacher) ‖ p_T(student)) + (1 − alpha)·CE` on positions with a
/// target; when evaluating, the cross-entropy alone; the KL and agreement metrics over
/// the same positions.
#[test]
fn distill_loss_gradient_and_metrics_equal_the_direct_ones() {
    let (t, alpha) = (2.0, 0.3);
    let (mut s, st) = stage("distill", &format!(r#"{{"temperature": {t}, "alpha": {alpha}}}"#));
    let (student, teacher) = (logits(5), random(&[B, S, V], 6, 2.0));
    let mask = Tensor::new(&[[1u32, 1, 1, 0, 0], [1, 1, 1, 1, 1]], &Device::Cpu).expect("mask");
    let valid = [[true, true, false, false], [true; 4]];
    let batch = [("input_ids", &ids()), ("attention_mask", &mask)];
    let outputs = [("logits", student.as_tensor()), ("teacher_logits", &teacher)];
    let out = s.compute(&outputs, &batch).expect("compute");

    let ce = direct_next_token(student.as_tensor(), valid, 0.0);
    let scaled = |x: &Tensor| {
        candle_nn::ops::log_softmax(&(x.narrow(1, 0, S - 1).expect("rows") / t).expect("scale"), D::Minus1)
            .expect("log softmax")
    };
    let (log_s, log_t) = (scaled(student.as_tensor()), scaled(&teacher));
    let row_kl =
        (log_t.exp().expect("p") * (&log_t - &log_s).expect("diff")).expect("terms").sum(D::Minus1).expect("kl");
    let weights: Vec<f32> = valid.iter().flatten().map(|&v| f32::from(u8::from(v))).collect();
    let weights = Tensor::from_vec(weights, (B, S - 1), &Device::Cpu).expect("weights");
    let kl = ((row_kl * &weights).expect("masked").sum_all().expect("sum") / 6.0).expect("mean");
    let direct =
        ((&kl * (alpha * t * t)).expect("kl term") + (&ce.loss * (1.0 - alpha)).expect("ce term")).expect("mix");
    let d = max_abs_diff(&out.loss, &direct);
    assert!(d <= 1e-6, "distill loss {} vs {}", out.loss, direct);
    let (gp, gd) = (
        stagecraft_core::kernels::backward(&out.loss).expect("backward"),
        stagecraft_core::kernels::backward(&direct).expect("backward"),
    );
    let d = max_abs_diff(gp.get(student.as_tensor()).expect("grad"), gd.get(student.as_tensor()).expect("grad"));
    assert!(d <= 1e-6, "distill gradient differs by {d}");
    let got = metric(&out.metrics, "kl");
    assert_eq!(got.count, 6.0, "KL counts the target positions only");
    assert!((got.sum / got.count - f64::from(kl.to_scalar::<f32>().expect("kl"))).abs() <= 1e-6, "{got:?}");
    let agreement = metric(&out.metrics, "agreement");
    let (ps, pt) = (log_s.argmax(D::Minus1).expect("s"), log_t.argmax(D::Minus1).expect("t"));
    let same = ps.eq(&pt).expect("eq").to_dtype(DType::F32).expect("f32");
    let want = (same * &weights).expect("masked").sum_all().and_then(|t| t.to_scalar::<f32>()).expect("agreed");
    assert_eq!(agreement.sum, f64::from(want));

    // Evaluating: the task loss alone (a distilled stage's score is its own loss).
    st.set_training(false);
    let eval = s.compute(&outputs, &batch).expect("compute");
    assert!(max_abs_diff(&eval.loss, &ce.loss) <= 1e-6, "eval loss {} vs {}", eval.loss, ce.loss);
}
