//! The AdamW optimizer plugin against candle-nn's AdamW on the same parameters and
//! gradients: the updates must agree.

mod support;

use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use stagecraft_core::plugin::{Entry, Registry, TrainParam};
use support::{first_party, scratch, state};

fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut r = stagecraft_core::rng::Rng::new(seed);
    let n: usize = shape.iter().product();
    Tensor::from_vec((0..n).map(|_| r.normal() as f32).collect::<Vec<_>>(), shape, &Device::Cpu).expect("tensor")
}

#[test]
fn adamw_plugin_updates_equal_candle_nn_adamw() {
    let mut reg = Registry::empty(scratch("adamw"));
    reg.load_file(&first_party("optimizers")).expect("load");
    let st = state();
    let (lr, wd) = (0.01, 0.1);
    let shapes: [&[usize]; 2] = [&[4, 3], &[5]];

    let ours: Vec<Var> = shapes.iter().enumerate().map(|(i, s)| Var::from_tensor(&random(s, i as u64)).expect("var")).collect();
    let theirs: Vec<Var> = ours.iter().map(|v| Var::from_tensor(&v.as_tensor().copy().expect("copy")).expect("var")).collect();
    let params: Vec<TrainParam> = ours
        .iter()
        .enumerate()
        .map(|(i, v)| TrainParam {
            name: format!("p{i}"),
            var: v.clone(),
            handle: st.table.borrow_mut().insert(Entry::Param(v.clone())),
            lr_mul: 1.0,
            decay_mul: 1.0,
        })
        .collect();
    let mut opt = reg.new_optimizer("adamw", &format!(r#"{{"lr": {lr}, "weight_decay": {wd}}}"#), &st).expect("adamw");
    opt.init(&params).expect("init");
    let mut reference = AdamW::new(theirs.clone(), ParamsAdamW { lr, weight_decay: wd, ..Default::default() }).expect("candle adamw");

    for step in 1..=10u64 {
        let targets: Vec<Tensor> = shapes.iter().enumerate().map(|(i, s)| random(s, 1000 * step + i as u64)).collect();
        // loss = Σ (p - t)² : the gradient depends on the current parameters.
        let loss = |vs: &[Var]| -> Tensor {
            vs.iter().zip(&targets).map(|(v, t)| (v.as_tensor() - t).expect("sub").sqr().expect("sqr").sum_all().expect("sum")).reduce(|a, b| (a + b).expect("add")).expect("loss")
        };
        let g = loss(&ours).backward().expect("backward");
        let grads: Vec<Option<Tensor>> = ours.iter().map(|v| g.get(v.as_tensor()).cloned()).collect();
        opt.step(&params, &grads, lr, step).expect("plugin step");
        st.end_step();
        reference.backward_step(&loss(&theirs)).expect("candle step");
        for (a, b) in ours.iter().zip(&theirs) {
            let d = (a.as_tensor() - b.as_tensor()).expect("sub").abs().expect("abs").flatten_all().expect("f").max(0).expect("max").to_scalar::<f32>().expect("s");
            assert!(d <= 1e-6, "step {step}: parameters differ by {d}");
        }
    }
    assert_eq!(opt.buffers().len(), 4, "exp_avg and exp_avg_sq for two parameters");
}

/// Runs an optimizer plugin and a reference update written directly in candle on the
/// same parameters and gradients for 10 steps; returns the largest difference seen.
fn against_reference(name: &str, config: &str, lr: f64, mut reference: impl FnMut(&[Var], &[Tensor], u64)) -> f32 {
    let mut reg = Registry::empty(scratch(&format!("opt-{name}")));
    reg.load_file(&first_party("optimizers")).expect("load");
    let st = state();
    let shapes: [&[usize]; 3] = [&[4, 3], &[5], &[2, 2, 2]];
    let ours: Vec<Var> = shapes.iter().enumerate().map(|(i, s)| Var::from_tensor(&random(s, 50 + i as u64)).expect("var")).collect();
    let theirs: Vec<Var> = ours.iter().map(|v| Var::from_tensor(&v.as_tensor().copy().expect("copy")).expect("var")).collect();
    let params: Vec<TrainParam> = ours
        .iter()
        .enumerate()
        // The last parameter is excluded from weight decay.
        .map(|(i, v)| TrainParam { name: format!("p{i}"), var: v.clone(), handle: st.table.borrow_mut().insert(Entry::Param(v.clone())), lr_mul: 1.0, decay_mul: if i == 2 { 0.0 } else { 1.0 } })
        .collect();
    let mut opt = reg.new_optimizer(name, config, &st).expect("optimizer");
    opt.init(&params).expect("init");
    let mut worst = 0f32;
    for step in 1..=10u64 {
        let targets: Vec<Tensor> = shapes.iter().enumerate().map(|(i, s)| random(s, 7000 * step + i as u64)).collect();
        let grads: Vec<Tensor> = ours.iter().zip(&targets).map(|(v, t)| (v.as_tensor() - t).expect("sub").affine(2.0, 0.0).expect("grad")).collect();
        opt.step(&params, &grads.iter().cloned().map(Some).collect::<Vec<_>>(), lr, step).expect("plugin step");
        st.end_step();
        let their_grads: Vec<Tensor> = theirs.iter().zip(&targets).map(|(v, t)| (v.as_tensor() - t).expect("sub").affine(2.0, 0.0).expect("grad")).collect();
        reference(&theirs, &their_grads, step);
        for (a, b) in ours.iter().zip(&theirs) {
            let d = (a.as_tensor() - b.as_tensor()).expect("sub").abs().expect("abs").flatten_all().expect("f").max(0).expect("max").to_scalar::<f32>().expect("s");
            worst = worst.max(d);
        }
    }
    worst
}

fn sgd_case(dampening: f64, nesterov: bool) -> f32 {
    let (lr, mom, wd) = (0.05, 0.9, 0.01);
    let mut bufs: Vec<Option<Tensor>> = vec![None, None, None];
    let config = format!(r#"{{"lr": {lr}, "momentum": {mom}, "dampening": {dampening}, "nesterov": {nesterov}, "weight_decay": {wd}}}"#);
    // torch.optim.SGD, written out.
    against_reference("sgd", &config, lr, |ps, gs, _| {
        for (i, (p, g)) in ps.iter().zip(gs).enumerate() {
            let decay = if i == 2 { 0.0 } else { wd };
            let g = (g + p.as_tensor().affine(decay, 0.0).expect("wd")).expect("add");
            let buf = match &bufs[i] {
                None => g.clone(),
                Some(b) => (b.affine(mom, 0.0).expect("m") + g.affine(1.0 - dampening, 0.0).expect("d")).expect("add"),
            };
            let step = if nesterov { (&g + buf.affine(mom, 0.0).expect("n")).expect("nesterov") } else { buf.clone() };
            bufs[i] = Some(buf);
            p.set(&(p.as_tensor() - step.affine(lr, 0.0).expect("lr")).expect("sub")).expect("set");
        }
    })
}

#[test]
fn sgd_momentum_with_dampening_matches_the_same_math_in_candle() {
    let d = sgd_case(0.1, false);
    assert!(d <= 1e-6, "sgd differs by {d}");
}

#[test]
fn sgd_nesterov_momentum_matches_the_same_math_in_candle() {
    let d = sgd_case(0.0, true);
    assert!(d <= 1e-6, "sgd differs by {d}");
}

#[test]
fn lion_matches_the_same_math_in_candle() {
    let (lr, b1, b2, wd) = (0.01, 0.9, 0.99, 0.1);
    let mut ms: Vec<Option<Tensor>> = vec![None, None, None];
    let d = against_reference("lion", &format!(r#"{{"lr": {lr}, "betas": [{b1}, {b2}], "weight_decay": {wd}}}"#), lr, |ps, gs, _| {
        for (i, (p, g)) in ps.iter().zip(gs).enumerate() {
            let decay = if i == 2 { 0.0 } else { wd };
            let m = ms[i].clone().unwrap_or_else(|| g.zeros_like().expect("zeros"));
            let update = (m.affine(b1, 0.0).expect("m") + g.affine(1.0 - b1, 0.0).expect("g")).expect("interp").sign().expect("sign");
            let next = (p.as_tensor().affine(1.0 - lr * decay, 0.0).expect("decay") - update.affine(lr, 0.0).expect("lr")).expect("sub");
            p.set(&next).expect("set");
            ms[i] = Some((m.affine(b2, 0.0).expect("m2") + g.affine(1.0 - b2, 0.0).expect("g2")).expect("m"));
        }
    });
    assert!(d <= 1e-6, "lion differs by {d}");
}
