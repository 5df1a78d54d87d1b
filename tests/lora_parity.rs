//! LoRA through the `.so` plugin against the same LoRA written directly in candle:
//! outputs and gradients must be bit-identical (the plugin's ops are the same candle
//! ops, in the same order: on this host, the fused `add_low_rank` op), they agree with
//! the op-by-op composition that older hosts run up to float rounding, the update
//! Llama's fused decoder blocks compute from LoRA's declaration (SDK 1.4) agrees with
//! its hook, and a model trained with nothing but plugins (LoRA, AdamW, causal LM)
//! must learn.

mod support;

use candle_core::{Device, Tensor, Var};
use stagecraft_core::model::{Adapters, MlpLm, MlpLmConfig, Model};
use stagecraft_core::plugin::Registry;
use stagecraft_core::train::{Batch, Trainer};
use support::{bits, first_party, scratch, state};

const CFG: MlpLmConfig = MlpLmConfig { vocab: 64, hidden: 32, intermediate: 48, layers: 2 };
const R: usize = 4;
const ALPHA: f64 = 8.0;

fn registry() -> Registry {
    let mut reg = Registry::empty(scratch("lora-parity"));
    for lib in ["lora", "optimizers", "stages"] {
        reg.load_file(&first_party(lib)).expect("first-party plugin loads");
    }
    reg
}

/// `‖a - b‖ / ‖b‖`.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let norm = |t: &Tensor| t.sqr().and_then(|t| t.sum_all()).and_then(|t| t.to_scalar::<f32>()).expect("norm").sqrt();
    norm(&(a - b).expect("difference")) / norm(b)
}

fn random(shape: &[usize], seed: u64) -> Tensor {
    support::random(shape, seed, 0.3)
}

fn ids() -> Tensor {
    Tensor::new(&[[1u32, 5, 9, 3, 60, 12], [7, 2, 2, 30, 41, 0]], &Device::Cpu).expect("ids")
}

/// How the direct forward adds a site's low-rank update.
#[derive(Clone, Copy)]
enum Update {
    /// The host kernel behind SDK 1.3's `add_low_rank`, which the plugin calls here.
    Fused,
    /// Two products, the scale and the sum: the plugin's path on older hosts.
    OpByOp,
}

/// The MlpLm forward with LoRA on up/down projections, written directly in candle.
fn direct_forward(model: &MlpLm, lora: &[(Var, Var)], ids: &Tensor, update: Update) -> Tensor {
    let w: std::collections::HashMap<String, Tensor> =
        model.weights().into_iter().map(|(n, w)| (n, w.var().as_tensor().detach())).collect();
    let scale = ALPHA / R as f64;
    let lin = |x: &Tensor, name: &str, ab: Option<&(Var, Var)>| -> Tensor {
        let y = x.broadcast_matmul(&w[&format!("{name}.weight")].t().expect("t")).expect("mm");
        match ab {
            None => y,
            Some((a, b)) if matches!(update, Update::Fused) => {
                stagecraft_core::kernels::linear::add_low_rank(&y, x, a, b, scale).expect("low-rank update")
            }
            Some((a, b)) => {
                let d = x
                    .broadcast_matmul(&a.as_tensor().t().expect("t"))
                    .expect("mm")
                    .broadcast_matmul(&b.as_tensor().t().expect("t"))
                    .expect("mm");
                (y + d.affine(scale, 0.0).expect("scale")).expect("add")
            }
        }
    };
    let (b, s) = ids.dims2().expect("dims");
    let mut x = w["model.embed_tokens.weight"]
        .index_select(&ids.flatten_all().expect("flat"), 0)
        .expect("emb")
        .reshape((b, s, CFG.hidden))
        .expect("reshape");
    for l in 0..CFG.layers {
        let h = lin(&x, &format!("model.layers.{l}.mlp.up_proj"), Some(&lora[2 * l])).gelu_erf().expect("gelu");
        let h = lin(&h, &format!("model.layers.{l}.mlp.down_proj"), Some(&lora[2 * l + 1]));
        x = (x + h).expect("residual");
    }
    lin(&x, "lm_head", None)
}

#[test]
fn lora_through_the_plugin_matches_direct_candle_in_outputs_and_gradients() {
    let reg = registry();
    let st = state();
    let model = MlpLm::new(CFG, 3, &Device::Cpu).expect("model");
    for (_, w) in model.weights() {
        w.set_trainable(false);
    }
    let cfg = format!(r#"{{"targets": ["up_proj", "down_proj"], "r": {R}, "alpha": {ALPHA}}}"#);
    let mut adapters = Adapters::none(model.sites().len());
    adapters.attach(reg.new_method("lora", &cfg, &st).expect("lora instance"), model.sites()).expect("attach");

    // B starts at zero (so the adapter starts as a no-op); give it values so that the
    // comparison covers the whole path.
    let params = adapters.methods()[0].params();
    assert_eq!(params.len(), 2 * 2 * CFG.layers, "A and B at 4 sites");
    for (i, p) in params.iter().enumerate() {
        if p.name.ends_with("lora_B.weight") {
            p.var.set(&random(p.var.dims(), 100 + i as u64)).expect("set B");
        }
    }
    // The same values as direct vars, in site order (A, B) per site.
    let direct: Vec<(Var, Var)> = params
        .chunks(2)
        .map(|ab| {
            assert!(
                ab[0].name.ends_with("lora_A.weight") && ab[1].name.ends_with("lora_B.weight"),
                "{} {}",
                ab[0].name,
                ab[1].name
            );
            (
                Var::from_tensor(&ab[0].var.as_tensor().copy().expect("copy")).expect("var"),
                Var::from_tensor(&ab[1].var.as_tensor().copy().expect("copy")).expect("var"),
            )
        })
        .collect();

    let probe = random(&[2, 6, CFG.vocab], 7);
    let via_plugin = model.forward(&ids(), None, &adapters).expect("forward").logits.expect("logits");
    let via_candle = direct_forward(&model, &direct, &ids(), Update::Fused);
    let op_by_op = direct_forward(&model, &direct, &ids(), Update::OpByOp);
    // The same ops in the same order: the same bits.
    assert_eq!(bits(&via_plugin), bits(&via_candle), "outputs differ");
    assert!(rel_err(&via_plugin, &op_by_op) <= 1e-6, "outputs: {}", rel_err(&via_plugin, &op_by_op));

    let g_plugin = stagecraft_core::kernels::backward(&(via_plugin * &probe).expect("mul").sum_all().expect("sum"))
        .expect("backward");
    let g_candle = stagecraft_core::kernels::backward(&(via_candle * &probe).expect("mul").sum_all().expect("sum"))
        .expect("backward");
    let g_op_by_op = stagecraft_core::kernels::backward(&(op_by_op * &probe).expect("mul").sum_all().expect("sum"))
        .expect("backward");
    for (p, (a, b)) in params.chunks(2).zip(&direct) {
        for (pv, dv) in [(&p[0].var, a), (&p[1].var, b)] {
            let gp = g_plugin.get(pv.as_tensor()).expect("plugin param has a gradient");
            let gc = g_candle.get(dv.as_tensor()).expect("direct param has a gradient");
            assert_eq!(bits(gp), bits(gc), "gradients differ");
            let go = g_op_by_op.get(dv.as_tensor()).expect("op-by-op param has a gradient");
            assert!(rel_err(gp, go) <= 1e-5, "gradients vs op by op: {}", rel_err(gp, go));
            assert!(
                gp.abs().expect("abs").sum_all().expect("sum").to_scalar::<f32>().expect("s") > 0.0,
                "zero gradient"
            );
        }
    }
    // Frozen base weights get no gradient at all.
    for (name, w) in model.weights() {
        assert!(g_plugin.get(w.var().as_tensor()).is_none(), "{name} is frozen but got a gradient");
    }
}

#[test]
fn a_model_trains_with_nothing_but_plugins() {
    let reg = registry();
    let st = state();
    let model = MlpLm::new(CFG, 5, &Device::Cpu).expect("model");
    for (_, w) in model.weights() {
        w.set_trainable(false);
    }
    st.register_model(&model);
    let mut adapters = Adapters::none(model.sites().len());
    let lora = reg
        .new_method("lora", r#"{"targets": ["up_proj", "down_proj", "lm_head"], "r": 8, "alpha": 16}"#, &st)
        .expect("lora");
    adapters.attach(lora, model.sites()).expect("attach");
    let stage = reg.new_objective("causal_lm", "{}", &st).expect("stage");
    let opt = reg.new_optimizer("adamw", r#"{"lr": 0.01, "weight_decay": 0.0}"#, &st).expect("adamw");
    let mut trainer = Trainer::new(st.clone(), Box::new(model), adapters, stage, opt).expect("trainer");

    // A repeating sequence: each token predicts the next.
    let seq: Vec<u32> = (0..2 * 16).map(|i| (i * 7 % 23) as u32).collect();
    let batch = Batch::tokens(Tensor::from_vec(seq, (2, 16), &Device::Cpu).expect("ids"));
    let mut losses = Vec::new();
    for _ in 0..20 {
        losses.push(trainer.train_step(&batch, 0.03).expect("step").loss);
    }
    let falls = losses.windows(2).filter(|w| w[1] < w[0]).count();
    assert!(losses[19] < 0.5 * losses[0] && falls >= 14, "loss did not fall: {losses:?}");
    assert_eq!(st.table.borrow().live_temps(), 0, "temporaries leaked past the step");
}

/// An MlpLm (frozen) with one `lora` instance of `config` attached.
fn with_lora(cfg: MlpLmConfig, config: &str) -> (MlpLm, Adapters, std::rc::Rc<stagecraft_core::plugin::HostState>) {
    let reg = registry();
    let st = state();
    let model = MlpLm::new(cfg, 3, &Device::Cpu).expect("model");
    for (_, w) in model.weights() {
        w.set_trainable(false);
    }
    st.register_model(&model);
    let mut adapters = Adapters::none(model.sites().len());
    adapters.attach(reg.new_method("lora", config, &st).expect("lora instance"), model.sites()).expect("attach");
    (model, adapters, st)
}

/// Gives every B factor random values, so the adapter is not a no-op.
fn perturb_b(adapters: &Adapters) {
    for (i, p) in adapters.methods()[0].params().iter().enumerate() {
        if p.name.ends_with("lora_B.weight") {
            p.var.set(&random(p.var.dims(), 200 + i as u64)).expect("set B");
        }
    }
}

#[test]
fn merge_adds_the_scaled_product_and_unmerge_takes_it_out() {
    let (model, adapters, _st) =
        with_lora(CFG, &format!(r#"{{"targets": ["up_proj", "down_proj"], "r": {R}, "alpha": {ALPHA}}}"#));
    perturb_b(&adapters);
    let lora = &adapters.methods()[0];
    let params = lora.params();
    let weights: std::collections::HashMap<String, Tensor> =
        model.weights().into_iter().map(|(n, w)| (n, w.var().as_tensor().detach())).collect();
    for ab in params.chunks(2) {
        let site = ab[0]
            .name
            .find("model.")
            .and_then(|at| ab[0].name[at..].strip_suffix(".lora_A.weight"))
            .unwrap_or_else(|| panic!("{} is not an A factor", ab[0].name));
        let w = &weights[&format!("{site}.weight")];
        let index = model.sites().index(site).expect("site");
        let merged = lora.merge(index, w).expect("merge");
        let update = ab[1]
            .var
            .as_tensor()
            .matmul(ab[0].var.as_tensor())
            .and_then(|d| d.affine(ALPHA / R as f64, 0.0))
            .expect("B·A");
        let want = (w + &update).expect("W + s·B·A");
        assert_eq!(bits(&merged), bits(&want), "{site}: merged weight is W + (alpha/r)·B·A");
        let back = lora.unmerge(index, &merged).expect("unmerge");
        let d = support::max_abs_diff(&back, w);
        assert!(d <= 1e-6 * support::max_abs(w), "{site}: unmerge leaves {d} of the update");
    }
}

#[test]
fn a_dora_merge_cannot_be_undone_and_says_why() {
    let (model, adapters, _st) = with_lora(CFG, r#"{"targets": ["up_proj"], "r": 4, "use_dora": true}"#);
    let index = model.sites().index("model.layers.0.mlp.up_proj").expect("site");
    let w = model
        .weights()
        .into_iter()
        .find(|(n, _)| n == "model.layers.0.mlp.up_proj.weight")
        .expect("weight")
        .1
        .var()
        .as_tensor()
        .detach();
    let merged = adapters.methods()[0].merge(index, &w).expect("DoRA merges");
    let err = support::one_line(&adapters.methods()[0].unmerge(index, &merged).expect_err("DoRA cannot unmerge"));
    assert!(err.contains("cannot be undone") && err.contains("model.layers.0.mlp.up_proj"), "{err}");
}

/// (mean, variance, largest |x|) of a tensor's values.
fn moments(t: &Tensor) -> (f64, f64, f64) {
    let v: Vec<f64> =
        t.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("values").into_iter().map(f64::from).collect();
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var, v.iter().fold(0.0, |m, x| m.max(x.abs())))
}

#[test]
fn lora_starts_as_peft_does_a_kaiming_or_gaussian_and_b_zero() {
    // Sites wide enough (A: [16, 512]) that the sample moments are within a few percent.
    let wide = MlpLmConfig { vocab: 64, hidden: 512, intermediate: 512, layers: 1 };
    for (init, r) in [("kaiming", 16usize), ("gaussian", 16)] {
        let (_, adapters, _st) =
            with_lora(wide, &format!(r#"{{"targets": ["up_proj", "down_proj"], "r": {r}, "init": "{init}"}}"#));
        let params = adapters.methods()[0].params();
        let mut seen = Vec::new();
        for p in params.iter() {
            let t = p.var.as_tensor();
            if p.name.ends_with("lora_B.weight") {
                assert!(bits(t).iter().all(|&b| b == 0), "{}: B starts at zero", p.name);
                continue;
            }
            let (mean, var, largest) = moments(t);
            let fan_in = t.dims()[1] as f64;
            if init == "kaiming" {
                // PEFT: kaiming_uniform_(A, a=√5) = U(-1/√fan_in, 1/√fan_in), variance bound²/3.
                let bound = 1.0 / fan_in.sqrt();
                assert!(largest <= bound && largest > 0.99 * bound, "{}: |A| reaches {largest}, bound {bound}", p.name);
                assert!(
                    (var / (bound * bound / 3.0) - 1.0).abs() < 0.05,
                    "{}: variance {var}, want {}",
                    p.name,
                    bound * bound / 3.0
                );
            } else {
                // PEFT's "gaussian": normal_(A, std = 1/r).
                let want = 1.0 / (r * r) as f64;
                assert!((var / want - 1.0).abs() < 0.06, "{}: variance {var}, want {want}", p.name);
            }
            assert!(mean.abs() < 4.0 * (var / t.elem_count() as f64).sqrt(), "{}: mean {mean}", p.name);
            seen.push(bits(t));
        }
        assert_eq!(seen.len(), 2);
        assert_ne!(seen[0][..16], seen[1][..16], "each site draws its own A");
    }
}

#[test]
fn lora_dropout_applies_in_training_and_is_off_in_evaluation() {
    let config =
        |p: f64| format!(r#"{{"targets": ["up_proj", "down_proj"], "r": {R}, "alpha": {ALPHA}, "dropout": {p}}}"#);
    let (model, dropped, st) = with_lora(CFG, &config(0.5));
    let (_, plain, plain_st) = with_lora(CFG, &config(0.0));
    perturb_b(&dropped);
    perturb_b(&plain);
    for (a, b) in dropped.methods()[0].params().iter().zip(plain.methods()[0].params().iter()) {
        assert_eq!(bits(a.var.as_tensor()), bits(b.var.as_tensor()), "both instances start alike");
    }
    let logits = |a: &Adapters| bits(&model.forward(&ids(), None, a).expect("forward").logits.expect("logits"));
    st.set_training(false);
    plain_st.set_training(false);
    assert_eq!(logits(&dropped), logits(&plain), "evaluation ignores the adapter's dropout");
    st.set_training(true);
    assert_ne!(logits(&dropped), logits(&plain), "training applies it");
}

/// What the plugin runs on hosts older than SDK 1.3 (`low_rank_delta`, added to `y`)
/// gives the values of this host's `add_low_rank`, through the same op table.
#[test]
fn the_op_by_op_update_of_older_hosts_matches_add_low_rank() {
    use stagecraft_core::plugin::{host_for, InstanceStore};
    use stagecraft_sdk::Host;
    let st = state();
    let obj = host_for(&st, &std::rc::Rc::new(InstanceStore::default()), "lora");
    let host = Host::new(&obj);
    let (rows, i, o, r) = (2 * 7, 40, 24, 4);
    let t = |shape: &[usize], seed: u64| {
        let v = random(shape, seed).flatten_all().expect("flat").to_vec1::<f32>().expect("values");
        host.from_f32(&v, shape).expect("tensor")
    };
    let (x, a, b, y) = (t(&[2, 7, i], 1), t(&[r, i], 2), t(&[o, r], 3), t(&[2, 7, o], 4));
    let scale = 0.37;
    let fused = host.add_low_rank(&y, &x, &a, &b, scale).expect("add_low_rank");
    let delta = stagecraft_lora::lora::low_rank_delta(&x, &a, &b, scale).expect("op by op");
    let op_by_op = y.add(&delta).expect("add");
    let values = |t: &stagecraft_sdk::Tensor<'_>| t.to_vec_f32().expect("values");
    let (f, c) = (values(&fused), values(&op_by_op));
    assert_eq!(f.len(), rows * o);
    let worst = f.iter().zip(&c).map(|(f, c)| (f - c).abs() / c.abs().max(1.0)).fold(0f32, f32::max);
    assert!(worst <= 1e-6, "largest difference {worst}");
    assert!(host.add_low_rank(&y, &x, &b, &a, scale).is_err(), "factors swapped");
}

/// On Llama, LoRA declares its update (SDK 1.4's `low_rank`) and the decoder blocks
/// compute it inside their fused ops; configured with dropout it declares nothing and
/// the host calls its hook at every site. In evaluation, where dropout is off, the two
/// are the same function: the outputs and every factor's gradient agree up to float
/// rounding.
#[test]
fn llama_blocks_computing_lora_updates_match_its_hooks() {
    let reg = registry();
    let st = state();
    let model = stagecraft_core::model::Llama::load(
        &support::fixture("llama-tiny", "base"),
        candle_core::DType::F32,
        &Device::Cpu,
    )
    .expect("llama-tiny");
    for (_, w) in model.weights() {
        w.set_trainable(false);
    }
    st.register_model(&model);
    let targets = r#""targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]"#;
    let attach = |dropout: f64| {
        let cfg = format!(r#"{{{targets}, "r": {R}, "alpha": {ALPHA}, "dropout": {dropout}}}"#);
        let mut adapters = Adapters::none(model.sites().len());
        adapters.attach(reg.new_method("lora", &cfg, &st).expect("lora instance"), model.sites()).expect("attach");
        adapters
    };
    let (declared, hooked) = (attach(0.0), attach(0.1));
    let q_site = model.sites().index("model.layers.0.self_attn.q_proj").expect("site");
    assert_eq!(declared.low_rank(q_site).expect("declared").map(|u| u.len()), Some(1), "no declaration");
    assert!(hooked.low_rank(q_site).expect("not declared").is_none(), "declared with dropout");
    let (pd, ph) = (declared.methods()[0].params(), hooked.methods()[0].params());
    for (i, (d, h)) in pd.iter().zip(&ph).enumerate() {
        assert_eq!(d.name, h.name);
        let value = random(d.var.dims(), 300 + i as u64);
        d.var.set(&value).expect("set");
        h.var.set(&value).expect("set");
    }

    st.set_training(false);
    let ids = Tensor::new(&[[1u32, 5, 9, 3, 60, 12, 7, 2], [7, 2, 2, 30, 41, 0, 0, 0]], &Device::Cpu).expect("ids");
    let mask = Tensor::new(&[[1f32; 8], [1., 1., 1., 1., 1., 1., 0., 0.]], &Device::Cpu).expect("mask");
    let logits = |a: &Adapters| model.forward(&ids, Some(&mask), a).expect("forward").logits.expect("logits");
    let (fused, hooks) = (logits(&declared), logits(&hooked));
    assert!(rel_err(&fused, &hooks) <= 1e-5, "logits: {}", rel_err(&fused, &hooks));
    let probe = random(fused.dims(), 9);
    let grads = |y: Tensor| {
        stagecraft_core::kernels::backward(&(y * &probe).expect("mul").sum_all().expect("sum")).expect("backward")
    };
    let (gf, gh) = (grads(fused), grads(hooks));
    for (d, h) in pd.iter().zip(&ph) {
        let (a, b) = (gf.get(d.var.as_tensor()).expect("fused grad"), gh.get(h.var.as_tensor()).expect("hook grad"));
        assert!(rel_err(a, b) <= 1e-5, "{}: {}", d.name, rel_err(a, b));
    }
}
