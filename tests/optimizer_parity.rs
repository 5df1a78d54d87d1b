//! The optimizer plugins against PyTorch: ten-step trajectories of torch.optim.AdamW,
//! torch.optim.SGD (momentum with dampening; Nesterov) and lion-pytorch's Lion, made by
//! `tests/fixtures/make_optimizer_references.py`. The runs exercise what a stage does to
//! an optimizer: a learning rate that changes every step (a schedule), a parameter
//! exempt from weight decay (biases and norms) and one with a scaled learning rate.
//! The host's fused `adamw_step` op, which the AdamW plugin uses, is also checked against
//! the plugin's op-by-op update (what it runs on hosts older than SDK 1.2), to the bit.

mod support;

use candle_core::{Tensor, Var};
use stagecraft_core::plugin::{host_for, Entry, InstanceStore, Registry, TrainParam};
use stagecraft_sdk::{AdamWStep, Host, Init, SdkVersion};
use std::collections::HashMap;
use std::rc::Rc;
use support::{first_party, fixture, fixture_tensors, max_abs_diff, one_line, scratch, state};

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

/// `n` pseudo-random values in about `[-scale/2, scale/2)`, with exact and signed zeros
/// and tiny values among them.
fn noise(n: usize, seed: u32, scale: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            match i % 101 {
                0 => 0.0,
                1 => -0.0,
                2 => 1e-30,
                _ => (x as f32 / u32::MAX as f32 - 0.5) * scale,
            }
        })
        .collect()
}

fn bit_vec(t: &stagecraft_sdk::Tensor<'_>) -> Vec<u32> {
    t.to_vec_f32().expect("values").iter().map(|x| x.to_bits()).collect()
}

#[test]
fn adamw_fused_op_matches_the_op_by_op_update_to_the_bit() {
    use stagecraft_optimizers::adamw::update_op_by_op;
    let st = state();
    let obj = host_for(&st, &Rc::new(InstanceStore::default()), "adamw");
    let host = Host::new(&obj);
    assert!(host.sdk_version() >= SdkVersion::new(1, 2, 0), "this host has adamw_step");
    // More than one parallel chunk of the fused kernel, and not a multiple of one.
    let shape = [67, 301];
    let n = shape[0] * shape[1];
    // Two copies of a parameter and its state: one updated by the fused op, one op by op.
    let twins = |name: &str, data: &[f32]| {
        let a = host.new_buffer(&format!("fused.{name}"), &shape, Init::ZEROS).expect("buffer");
        let b = host.new_buffer(&format!("ops.{name}"), &shape, Init::ZEROS).expect("buffer");
        let x = host.from_f32(data, &shape).expect("data");
        host.assign(&a, &x).expect("assign");
        host.assign(&b, &x).expect("assign");
        (a, b)
    };
    let (p, p_ops) = twins("p", &noise(n, 1, 2.0));
    let (m, m_ops) = twins("m", &noise(n, 2, 0.1));
    let v_init: Vec<f32> = noise(n, 3, 0.01).iter().map(|x| x.abs()).collect();
    let (v, v_ops) = twins("v", &v_init);
    let start = bit_vec(&p);
    // A schedule, weight decay scaled by a decay multiplier other than 1, two beta pairs.
    for step in 1..=6u64 {
        let betas = if step % 2 == 0 { (0.9, 0.999) } else { (0.8, 0.95) };
        let hp = AdamWStep {
            lr: 3e-3 * (1.0 - step as f64 / 10.0),
            beta1: betas.0,
            beta2: betas.1,
            eps: 1e-8,
            weight_decay: 0.1 * 0.37,
            step,
        };
        let g = host.from_f32(&noise(n, 10 + step as u32, 1.0), &shape).expect("grad");
        host.adamw_step(&p, &g, &m, &v, hp).expect("fused step");
        update_op_by_op(&p_ops, &g, &m_ops, &v_ops, hp).expect("op-by-op step");
        for (what, a, b) in [("param", &p, &p_ops), ("exp_avg", &m, &m_ops), ("exp_avg_sq", &v, &v_ops)] {
            let (a, b) = (bit_vec(a), bit_vec(b));
            let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
            assert_eq!(differ, 0, "step {step}: {differ} of {n} {what} elements differ");
        }
        st.end_step();
    }
    assert_ne!(bit_vec(&p), start, "the parameter moved");
}

#[test]
fn adamw_fused_op_refuses_what_it_may_not_write_and_mismatched_shapes() {
    let st = state();
    let obj = host_for(&st, &Rc::new(InstanceStore::default()), "adamw");
    let host = Host::new(&obj);
    let other_obj = host_for(&st, &Rc::new(InstanceStore::default()), "other");
    let other = Host::new(&other_obj);
    let hp = AdamWStep { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, step: 1 };
    let p = host.new_param("w", &[2, 3], Init::ONES).expect("param");
    let m = host.new_buffer("exp_avg.w", &[2, 3], Init::ZEROS).expect("buffer");
    let v = host.new_buffer("exp_avg_sq.w", &[2, 3], Init::ZEROS).expect("buffer");
    let g = host.full(&[2, 3], 1.0, stagecraft_sdk::DType::F32).expect("grad");
    let foreign = other.new_param("w", &[2, 3], Init::ONES).expect("another instance's param");
    let temp = host.full(&[2, 3], 1.0, stagecraft_sdk::DType::F32).expect("temporary");
    let untouched = |what: &str| {
        assert_eq!(p.to_vec_f32().expect("p"), [1.0; 6], "{what}: param written");
        assert_eq!(foreign.to_vec_f32().expect("foreign"), [1.0; 6], "{what}: foreign param written");
        assert_eq!(m.to_vec_f32().expect("m"), [0.0; 6], "{what}: exp_avg written");
        assert_eq!(v.to_vec_f32().expect("v"), [0.0; 6], "{what}: exp_avg_sq written");
    };

    // Another instance's parameter, a temporary, a foreign tensor as state.
    for (what, dst, state) in [("param", foreign, m), ("param", temp, m), ("exp_avg", p, foreign)] {
        let msg = one_line(&host.adamw_step(&dst, &g, &state, &v, hp).expect_err("refused"));
        assert!(
            msg.starts_with("op `adamw_step`: plugin `adamw` may only update its own parameters and buffers")
                && msg.contains(&format!("not {what} ")),
            "{msg}"
        );
        untouched(what);
    }
    // A gradient of another shape.
    let g3 = host.full(&[3, 2], 1.0, stagecraft_sdk::DType::F32).expect("grad");
    let msg = one_line(&host.adamw_step(&p, &g3, &m, &v, hp).expect_err("shape"));
    assert!(
        msg == "op `adamw_step`: shapes differ: param [2, 3], grad [3, 2], exp_avg [2, 3], exp_avg_sq [2, 3]",
        "{msg}"
    );
    untouched("shape");
    // One buffer as both moments.
    let msg = one_line(&host.adamw_step(&p, &g, &m, &m, hp).expect_err("aliased"));
    assert!(msg.contains("op `adamw_step`: exp_avg and exp_avg_sq share memory"), "{msg}");
    untouched("aliased");
    // The same call with the right tensors works.
    host.adamw_step(&p, &g, &m, &v, hp).expect("step");
    assert!(p.to_vec_f32().expect("p").iter().all(|&x| (x - 0.9).abs() < 1e-6));
}
