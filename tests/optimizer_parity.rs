//! The optimizer plugins against PyTorch: ten-step trajectories of torch.optim.AdamW,
//! torch.optim.SGD (momentum with dampening; Nesterov) and lion-pytorch's Lion, made by
//! `tests/fixtures/make_optimizer_references.py`. The runs exercise what a stage does to
//! an optimizer: a learning rate that changes every step (a schedule), a parameter
//! exempt from weight decay (biases and norms) and one with a scaled learning rate.

mod support;

use candle_core::{Tensor, Var};
use stagecraft_core::plugin::{Entry, Registry, TrainParam};
use std::collections::HashMap;
use support::{first_party, fixture, fixture_tensors, max_abs_diff, scratch, state};

const STEPS: u64 = 10;

/// Runs the plugin `name` on the fixture's case `case`; returns the largest difference
/// from PyTorch's parameters over all steps.
fn trajectory(name: &str, case: &str) -> f32 {
    let want = fixture_tensors("optimizers", "trajectories.safetensors");
    let configs: HashMap<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture("optimizers", "configs.json")).expect("configs.json"))
            .expect("json");
    let config = &configs[case];
    let base_lr = config["lr"].as_f64().expect("lr");

    let mut reg = Registry::empty(scratch(&format!("opt-{case}")));
    reg.load_file(&first_party("optimizers")).expect("load");
    let st = state();
    let vars: Vec<Var> = (0..3).map(|i| Var::from_tensor(&want[&format!("init.p{i}")]).expect("var")).collect();
    // p0 and p1 as weights; p2 as a bias or norm: no decay, half the learning rate.
    let params: Vec<TrainParam> = vars
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let (lr_mul, decay_mul) = if i == 2 { (0.5, 0.0) } else { (1.0, 1.0) };
            TrainParam {
                name: format!("p{i}"),
                var: v.clone(),
                handle: st.table.borrow_mut().insert(Entry::Param(v.clone())),
                lr_mul,
                decay_mul,
            }
        })
        .collect();
    let mut opt = reg.new_optimizer(name, &config.to_string(), &st).expect("optimizer");
    opt.init(&params).expect("init");

    let mut worst = 0f32;
    for step in 1..=STEPS {
        // d/dp ||p - target||² = 2 (p - target)
        let grads: Vec<Option<Tensor>> = vars
            .iter()
            .enumerate()
            .map(|(i, v)| {
                Some(
                    (v.as_tensor() - &want[&format!("target.{step}.p{i}")])
                        .and_then(|d| d.affine(2.0, 0.0))
                        .expect("grad"),
                )
            })
            .collect();
        let lr = base_lr * (1.0 - step as f64 / 20.0);
        opt.step(&params, &grads, lr, step).expect("plugin step");
        st.end_step();
        for (i, v) in vars.iter().enumerate() {
            worst = worst.max(max_abs_diff(v.as_tensor(), &want[&format!("{case}.{step}.p{i}")]));
        }
    }
    // The trajectory moved: a plugin that ignored its inputs could not pass.
    let moved = (0..3)
        .map(|i| max_abs_diff(&want[&format!("init.p{i}")], &want[&format!("{case}.{STEPS}.p{i}")]))
        .fold(0f32, f32::max);
    assert!(moved > 0.01, "{case}: the reference barely moves ({moved})");
    worst
}

#[test]
fn adamw_follows_torch_adamw() {
    let d = trajectory("adamw", "adamw");
    assert!(d <= 1e-6, "adamw differs from torch.optim.AdamW by {d}");
}

#[test]
fn sgd_momentum_with_dampening_follows_torch_sgd() {
    let d = trajectory("sgd", "sgd_dampening");
    assert!(d <= 1e-6, "sgd differs from torch.optim.SGD by {d}");
}

#[test]
fn sgd_nesterov_momentum_follows_torch_sgd() {
    let d = trajectory("sgd", "sgd_nesterov");
    assert!(d <= 1e-6, "sgd differs from torch.optim.SGD (nesterov) by {d}");
}

#[test]
fn lion_follows_lion_pytorch() {
    let d = trajectory("lion", "lion");
    assert!(d <= 1e-6, "lion differs from lion-pytorch by {d}");
}
