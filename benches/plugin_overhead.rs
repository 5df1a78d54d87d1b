//! What the plugin boundary costs, measured in one run:
//!
//! 1. a LoRA training step (forward, loss, backward, AdamW) with LoRA, AdamW and the
//!    causal-LM loss all loaded from `.so` plugins, against the same step written
//!    directly in candle (candle-nn's AdamW and cross-entropy) — as a ratio;
//! 2. the op table's overhead per op, in ns (a call through the table minus the same
//!    candle op called directly);
//! 3. the time to load each first-party plugin library.
//!
//! Run: `cargo build --release --workspace && cargo bench -p stagecraft-core --bench plugin_overhead`

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use stagecraft_core::model::{Adapters, MlpLm, MlpLmConfig, Model};
use stagecraft_core::plugin::{host_for, HostState, InstanceStore, Registry};
use stagecraft_core::train::{Batch, Trainer};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

const CFG: MlpLmConfig = MlpLmConfig { vocab: 256, hidden: 256, intermediate: 688, layers: 4 };
const BATCH: usize = 8;
const SEQ: usize = 128;
const R: usize = 8;
const ALPHA: f64 = 16.0;
const LR: f64 = 1e-3;

fn lib_dir() -> PathBuf {
    // target/release/deps/plugin_overhead-xxxx → target/release
    let exe = std::env::current_exe().expect("exe");
    exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN timings"));
    v[v.len() / 2]
}

fn ids(seed: u64) -> Tensor {
    let mut r = stagecraft_core::rng::Rng::new(seed);
    let v: Vec<u32> = (0..BATCH * SEQ).map(|_| r.below(CFG.vocab as u64) as u32).collect();
    Tensor::from_vec(v, (BATCH, SEQ), &Device::Cpu).expect("ids")
}

/// The direct-candle step: same model weights, LoRA math inline, candle-nn loss and AdamW.
struct Direct {
    w: std::collections::HashMap<String, Tensor>,
    lora: Vec<(Var, Var)>,
    opt: AdamW,
}

impl Direct {
    fn new(model: &MlpLm) -> Self {
        let w = model.weights().into_iter().map(|(n, w)| (n, w.var().as_tensor().detach())).collect();
        let mut r = stagecraft_core::rng::Rng::new(9);
        let mut lora = Vec::new();
        for _ in 0..CFG.layers {
            for (i, o) in [(CFG.hidden, CFG.intermediate), (CFG.intermediate, CFG.hidden)] {
                let bound = 1.0 / (i as f64).sqrt();
                let a: Vec<f32> = (0..R * i).map(|_| ((r.uniform() * 2.0 - 1.0) * bound) as f32).collect();
                let a = Var::from_tensor(&Tensor::from_vec(a, (R, i), &Device::Cpu).expect("a")).expect("var");
                let b = Var::zeros((o, R), DType::F32, &Device::Cpu).expect("b");
                lora.push((a, b));
            }
        }
        let vars = lora.iter().flat_map(|(a, b)| [a.clone(), b.clone()]).collect();
        let opt = AdamW::new(vars, ParamsAdamW { lr: LR, weight_decay: 0.0, ..Default::default() }).expect("adamw");
        Direct { w, lora, opt }
    }

    fn step(&mut self, ids: &Tensor) -> f64 {
        let scale = ALPHA / R as f64;
        let lin = |x: &Tensor, name: &str, ab: Option<&(Var, Var)>| -> Tensor {
            let y = x.broadcast_matmul(&self.w[&format!("{name}.weight")].t().expect("t")).expect("mm");
            match ab {
                None => y,
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
        let mut x = self.w["model.embed_tokens.weight"]
            .index_select(&ids.flatten_all().expect("f"), 0)
            .expect("emb")
            .reshape((BATCH, SEQ, CFG.hidden))
            .expect("r");
        for l in 0..CFG.layers {
            let h =
                lin(&x, &format!("model.layers.{l}.mlp.up_proj"), Some(&self.lora[2 * l])).gelu_erf().expect("gelu");
            let h = lin(&h, &format!("model.layers.{l}.mlp.down_proj"), Some(&self.lora[2 * l + 1]));
            x = (x + h).expect("res");
        }
        let logits = lin(&x, "lm_head", None);
        let pred = logits.narrow(1, 0, SEQ - 1).expect("n").reshape((BATCH * (SEQ - 1), CFG.vocab)).expect("r");
        let tgt = ids.narrow(1, 1, SEQ - 1).expect("n").flatten_all().expect("f");
        let loss = candle_nn::loss::cross_entropy(&pred, &tgt).expect("ce");
        // The causal-LM plugin also reports token accuracy; so does this step.
        let hits = pred.argmax(1).expect("argmax").eq(&tgt).expect("eq").to_dtype(DType::F32).expect("f32");
        std::hint::black_box(
            hits.reshape((BATCH, SEQ - 1)).expect("r").sum(1).expect("sum").to_vec1::<f32>().expect("v"),
        );
        self.opt.backward_step(&loss).expect("step");
        loss.to_scalar::<f32>().expect("s") as f64
    }
}

fn plugin_trainer(reg: &Registry) -> Trainer {
    let st = Rc::new(HostState::new(Device::Cpu, DType::F32, 0));
    let model = MlpLm::new(CFG, 1, &Device::Cpu).expect("model");
    for (_, w) in model.weights() {
        w.set_trainable(false);
    }
    let mut adapters = Adapters::none(model.sites().len());
    let cfg = format!(r#"{{"targets": ["up_proj", "down_proj"], "r": {R}, "alpha": {ALPHA}}}"#);
    adapters.attach(reg.new_method("lora", &cfg, &st).expect("lora"), model.sites()).expect("attach");
    let stage = reg.new_objective("causal_lm", "{}", &st).expect("stage");
    let opt = reg.new_optimizer("adamw", &format!(r#"{{"lr": {LR}, "weight_decay": 0.0}}"#), &st).expect("adamw");
    Trainer::new(st, Box::new(model), adapters, stage, opt).expect("trainer")
}

fn main() {
    let dir = lib_dir();
    let mut reg = Registry::empty(std::env::temp_dir().join("stagecraft-reports"));
    let mut load_ms = Vec::new();
    for name in ["lora", "optimizers", "stages"] {
        let path = dir.join(format!("libstagecraft_{name}.so"));
        assert!(path.exists(), "{} missing: run `cargo build --release --workspace` first", path.display());
        let t = Instant::now();
        reg.load_file(&path).expect("load");
        load_ms.push((name, t.elapsed().as_secs_f64() * 1e3));
    }

    // 1. Training step: plugin vs direct, interleaved so both see the same machine state.
    let mut trainer = plugin_trainer(&reg);
    let mut direct = Direct::new(&MlpLm::new(CFG, 1, &Device::Cpu).expect("model"));
    let batch = Batch::tokens(ids(1));
    let steps = std::env::var("BENCH_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(20usize);
    for _ in 0..2 {
        trainer.train_step(&batch, LR).expect("warm-up");
        direct.step(&batch.input_ids);
    }
    let (mut tp, mut td) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        let t = Instant::now();
        trainer.train_step(&batch, LR).expect("plugin step");
        tp.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        direct.step(&batch.input_ids);
        td.push(t.elapsed().as_secs_f64() * 1e3);
    }
    // Paired ratios cancel slow drifts of the machine; their median is the headline.
    let ratio = median(tp.iter().zip(&td).map(|(p, d)| p / d).collect());
    let (mp, md) = (median(tp), median(td));

    // 2. Op-table overhead: the same candle op through the table and directly.
    let st = Rc::new(HostState::new(Device::Cpu, DType::F32, 0));
    let host = host_for(&st, &Rc::new(InstanceStore::default()), "bench");
    let x = Tensor::ones(4, DType::F32, &Device::Cpu).expect("x");
    let mut hx = st.temp(x.clone());
    let n = 200_000;
    let t = Instant::now();
    for i in 0..n {
        let r = host.affine(hx, 1.0, 0.0);
        assert!(r.is_ok());
        if i % 1000 == 999 {
            // Release the results, as the end of a training step does.
            st.end_step();
            hx = st.temp(x.clone());
        }
    }
    let table_ns = t.elapsed().as_secs_f64() * 1e9 / n as f64;
    let t = Instant::now();
    for _ in 0..n {
        let y = x.affine(1.0, 0.0).expect("affine");
        std::hint::black_box(y);
    }
    let direct_ns = t.elapsed().as_secs_f64() * 1e9 / n as f64;

    println!(
        "lora step, W1-sized MLP LM (hidden {}, intermediate {}, {} layers, batch {BATCH} x seq {SEQ}, r {R}):",
        CFG.hidden, CFG.intermediate, CFG.layers
    );
    println!("  through .so plugins  {mp:8.2} ms/step (median of {steps})");
    println!("  direct candle        {md:8.2} ms/step");
    println!("  ratio                {ratio:8.4} (median of paired steps; target <= 1.02)");
    println!(
        "op table: {table_ns:.1} ns/op through the table, {direct_ns:.1} ns/op direct candle, overhead {:.1} ns/op",
        table_ns - direct_ns
    );
    for (name, ms) in &load_ms {
        println!("load libstagecraft_{name}.so: {ms:.2} ms (target < 5 ms)");
    }
    println!(
        "{}",
        serde_json::json!({
            "plugin_ms_per_step": mp, "direct_ms_per_step": md, "ratio": ratio,
            "op_table_ns": table_ns, "direct_op_ns": direct_ns, "overhead_ns_per_op": table_ns - direct_ns,
            "load_ms": load_ms.iter().map(|(n, ms)| (n.to_string(), *ms)).collect::<std::collections::BTreeMap<_, _>>(),
        })
    );
}
