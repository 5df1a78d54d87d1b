//! DoRA, IA3 and bottleneck adapters through their `.so` plugins against the same math
//! written directly in candle, on the small MLP language model: outputs and every
//! gradient agree to 1e-6. (LoRA's twin is `lora_parity.rs`; prompt and prefix tuning
//! concatenate, and are checked against PEFT in `peft_methods.rs`.)
//!
//! DoRA's direct version spells out what PEFT does: the norm of `W + s·B·A` is a
//! constant in backward, so only the magnitude and the LoRA factors learn.

mod support;

use candle_core::{Device, Tensor, Var};
use stagecraft_core::model::{Adapters, MlpLm, MlpLmConfig, Model};
use stagecraft_core::plugin::{Owned, Registry};
use std::collections::HashMap;
use support::{first_party, max_abs_diff, scratch, state};

const CFG: MlpLmConfig = MlpLmConfig { vocab: 64, hidden: 32, intermediate: 48, layers: 2 };

fn random(shape: &[usize], seed: u64, mean: f32) -> Tensor {
    let mut r = stagecraft_core::rng::Rng::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| mean + r.normal() as f32 * 0.3).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor")
}

fn ids() -> Tensor {
    Tensor::new(&[[1u32, 5, 9, 3, 60, 12], [7, 2, 2, 30, 41, 0]], &Device::Cpu).expect("ids")
}

/// A site's modification in direct candle: `(site name, x, y) → y'` with access to the
/// direct vars by parameter name.
type Hook<'a> = dyn Fn(&str, &Tensor, Tensor) -> Tensor + 'a;

/// The MlpLm forward written directly in candle, with `pre` applied to each linear
/// site's input and `post` to its output (and to each MLP and block output).
fn direct_forward(model: &MlpLm, pre: &Hook<'_>, post: &Hook<'_>) -> Tensor {
    let w: HashMap<String, Tensor> =
        model.weights().into_iter().map(|(n, w)| (n, w.var().as_tensor().detach())).collect();
    let lin = |x: &Tensor, name: &str| -> Tensor {
        let x = pre(name, x, x.clone());
        let y = x.broadcast_matmul(&w[&format!("{name}.weight")].t().expect("t")).expect("mm");
        post(name, &x, y)
    };
    let (b, s) = ids().dims2().expect("dims");
    let mut x = w["model.embed_tokens.weight"]
        .index_select(&ids().flatten_all().expect("flat"), 0)
        .expect("emb")
        .reshape((b, s, CFG.hidden))
        .expect("reshape");
    for l in 0..CFG.layers {
        let h = lin(&x, &format!("model.layers.{l}.mlp.up_proj")).gelu_erf().expect("gelu");
        let h = lin(&h, &format!("model.layers.{l}.mlp.down_proj"));
        let y = (&x + post(&format!("model.layers.{l}.mlp"), &x, h)).expect("residual");
        x = post(&format!("model.layers.{l}"), &x, y);
    }
    lin(&x, "lm_head")
}

/// Attaches `plugin` with `config`, gives every parameter random values (around
/// `mean_of(name)`), and returns the model, its adapters and direct twins of the
/// parameters, by name.
fn setup(
    plugin: &str,
    config: &str,
    mean_of: impl Fn(&str) -> f32,
) -> (MlpLm, Adapters, Vec<Owned>, HashMap<String, Var>, Registry) {
    let mut reg = Registry::empty(scratch(&format!("grads-{plugin}")));
    reg.load_file(&first_party(plugin)).expect("plugin .so loads");
    let st = state();
    let model = MlpLm::new(CFG, 3, &Device::Cpu).expect("model");
    for (_, w) in model.weights() {
        w.set_trainable(false);
    }
    st.register_model(&model);
    let mut adapters = Adapters::none(model.sites().len());
    adapters.attach(reg.new_method(plugin, config, &st).expect("instance"), model.sites()).expect("attach");
    let params = adapters.methods()[0].params();
    let mut direct = HashMap::new();
    for (i, p) in params.iter().enumerate() {
        let v = random(p.var.dims(), 50 + i as u64, mean_of(&p.name));
        p.var.set(&v).expect("set");
        direct.insert(p.name.clone(), Var::from_tensor(&v).expect("var"));
    }
    (model, adapters, params, direct, reg)
}

/// Compares outputs and the gradient of every parameter.
fn compare(model: &MlpLm, adapters: &Adapters, params: &[Owned], direct: &HashMap<String, Var>, via_candle: Tensor) {
    let probe = random(&[2, 6, CFG.vocab], 7, 0.0);
    let via_plugin = model.forward(&ids(), None, adapters).expect("forward").logits.expect("logits");
    let d = max_abs_diff(&via_plugin, &via_candle);
    assert!(d <= 1e-6, "outputs differ by {d}");
    let g_plugin = stagecraft_core::kernels::backward(&(via_plugin * &probe).expect("mul").sum_all().expect("sum"))
        .expect("backward");
    let g_candle = stagecraft_core::kernels::backward(&(via_candle * &probe).expect("mul").sum_all().expect("sum"))
        .expect("backward");
    for p in params {
        let gp = g_plugin.get(p.var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {}", p.name));
        let gc =
            g_candle.get(direct[&p.name].as_tensor()).unwrap_or_else(|| panic!("no direct gradient for {}", p.name));
        let d = max_abs_diff(gp, gc);
        println!("{}: gradient max abs diff {d:e}", p.name);
        assert!(d <= 1e-6, "gradient of {} differs by {d}", p.name);
        assert!(
            gp.abs().expect("abs").sum_all().expect("sum").to_scalar::<f32>().expect("s") > 0.0,
            "zero gradient for {}",
            p.name
        );
    }
    for (name, w) in model.weights() {
        assert!(g_plugin.get(w.var().as_tensor()).is_none(), "{name} is frozen but got a gradient");
    }
}

#[test]
fn dora_matches_direct_candle_in_outputs_and_gradients() {
    let (r, alpha) = (4usize, 8.0f64);
    let config = format!(r#"{{"targets": ["up_proj"], "r": {r}, "alpha": {alpha}, "use_dora": true}}"#);
    let (model, adapters, params, direct, _reg) =
        setup("lora", &config, |n| if n.ends_with("magnitude_vector") { 1.0 } else { 0.0 });
    let weights: HashMap<String, Tensor> =
        model.weights().into_iter().map(|(n, w)| (n, w.var().as_tensor().detach())).collect();
    let scale = alpha / r as f64;
    let post = |name: &str, x: &Tensor, y: Tensor| -> Tensor {
        let Some(a) = direct.get(&format!("{name}.lora_A.weight")) else { return y };
        let (a, b, m) = (
            a.as_tensor(),
            direct[&format!("{name}.lora_B.weight")].as_tensor(),
            direct[&format!("{name}.lora_magnitude_vector")].as_tensor(),
        );
        let w = &weights[&format!("{name}.weight")];
        let updated = (w + b.matmul(a).expect("ba").affine(scale, 0.0).expect("s")).expect("add");
        let norm = updated.sqr().expect("sqr").sum(1).expect("sum").sqrt().expect("sqrt").detach();
        let w_dora = updated.broadcast_mul(&(m / norm).expect("div").unsqueeze(1).expect("col")).expect("scale rows");
        let _ = y;
        x.broadcast_matmul(&w_dora.t().expect("t")).expect("mm")
    };
    let via_candle = direct_forward(&model, &|_, _, x| x, &post);
    compare(&model, &adapters, &params, &direct, via_candle);
}

#[test]
fn ia3_matches_direct_candle_in_outputs_and_gradients() {
    let config = r#"{"targets": ["up_proj", "down_proj"], "feedforward": ["down_proj"]}"#;
    let (model, adapters, params, direct, _reg) = setup("ia3", config, |_| 1.0);
    let pre = |name: &str, _x: &Tensor, x: Tensor| -> Tensor {
        match direct.get(&format!("{name}.ia3_l")) {
            Some(l) if name.ends_with("down_proj") => {
                x.broadcast_mul(&l.as_tensor().flatten_all().expect("flat")).expect("scale input")
            }
            _ => x,
        }
    };
    let post = |name: &str, _x: &Tensor, y: Tensor| -> Tensor {
        match direct.get(&format!("{name}.ia3_l")) {
            Some(l) if name.ends_with("up_proj") => {
                y.broadcast_mul(&l.as_tensor().flatten_all().expect("flat")).expect("scale output")
            }
            _ => y,
        }
    };
    let via_candle = direct_forward(&model, &pre, &post);
    compare(&model, &adapters, &params, &direct, via_candle);
}

#[test]
fn bottleneck_matches_direct_candle_in_outputs_and_gradients() {
    let (model, adapters, params, direct, _reg) =
        setup("bottleneck", r#"{"variant": "pfeiffer", "reduction_factor": 4, "non_linearity": "gelu"}"#, |_| 0.0);
    let post = |name: &str, _x: &Tensor, y: Tensor| -> Tensor {
        let Some(down_w) = direct.get(&format!("{name}.adapter_down.weight")) else { return y };
        let p = |k: &str| direct[&format!("{name}.adapter_{k}")].as_tensor().clone();
        let h = y
            .broadcast_matmul(&down_w.as_tensor().t().expect("t"))
            .expect("down")
            .broadcast_add(&p("down.bias"))
            .expect("bias")
            .gelu_erf()
            .expect("gelu");
        let h = h
            .broadcast_matmul(&p("up.weight").t().expect("t"))
            .expect("up")
            .broadcast_add(&p("up.bias"))
            .expect("bias");
        (y + h).expect("residual")
    };
    let via_candle = direct_forward(&model, &|_, _, x| x, &post);
    compare(&model, &adapters, &params, &direct, via_candle);
}
