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
