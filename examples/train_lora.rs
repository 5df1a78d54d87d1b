//! Trains a tiny byte-level language model with nothing but plugins: LoRA
//! (`libstagecraft_lora.so`), AdamW (`libstagecraft_optimizers.so`) and the causal-LM
//! objective (`libstagecraft_stages.so`), loaded from the build directory. The base
//! model is frozen; only the LoRA matrices learn the embedded text's byte statistics.
//!
//! Run: `cargo build --release --workspace && cargo run --release -p stagecraft-core --example train_lora`

use candle_core::{DType, Device, Tensor};
use stagecraft_core::model::{Adapters, MlpLm, MlpLmConfig, Model};
use stagecraft_core::plugin::{HostState, Registry};
use stagecraft_core::rng::Rng;
use stagecraft_core::train::{Batch, Trainer};
use std::path::{Path, PathBuf};
use std::rc::Rc;

const TEXT: &str = "the quick brown fox jumps over the lazy dog. a stage graph trains a model in steps: \
pretrain on plain text, fine-tune on a task, then adapt to a second task with a small adapter. \
the adapter is a plugin, loaded from a shared library, and it only sees tensors through the host. ";

fn lib_dir() -> PathBuf {
    // target/release/examples/train_lora → target/release
    let exe = std::env::current_exe().expect("exe path");
    exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
}

fn batch(rng: &mut Rng, bytes: &[u8], b: usize, s: usize) -> anyhow::Result<Batch> {
    let mut ids = Vec::with_capacity(b * s);
    for _ in 0..b {
        let start = rng.below((bytes.len() - s) as u64) as usize;
        ids.extend(bytes[start..start + s].iter().map(|&x| x as u32));
    }
    Ok(Batch::tokens(Tensor::from_vec(ids, (b, s), &Device::Cpu)?))
}

fn main() -> anyhow::Result<()> {
    let dir = lib_dir();
    let mut reg = Registry::empty(std::env::temp_dir().join("stagecraft-reports"));
    for lib in ["lora", "optimizers", "stages"] {
        let path = dir.join(format!("libstagecraft_{lib}.so"));
        let l = reg
            .load_file(&path)
            .map_err(|e| anyhow::anyhow!("{e} (build the plugins with `cargo build --release --workspace`)"))?;
        println!(
            "loaded {} (sdk {}): {}",
            l.id,
            l.sdk,
            l.plugins.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
        );
    }

    let st = Rc::new(HostState::new(Device::Cpu, DType::F32, 42));
    let model = MlpLm::new(MlpLmConfig { vocab: 256, hidden: 64, intermediate: 128, layers: 2 }, 42, &Device::Cpu)?;
    for (_, w) in model.weights() {
        w.set_trainable(false);
    }
    let mut adapters = Adapters::none(model.sites().len());
    let lora =
        reg.new_method("lora", r#"{"targets": ["up_proj", "down_proj", "lm_head"], "r": 8, "alpha": 16}"#, &st)?;
    adapters.attach(lora, model.sites())?;
    let trainable: usize = adapters.methods()[0].params().iter().map(|p| p.var.elem_count()).sum();
    println!("lora parameters: {trainable} (base frozen)");
    let stage = reg.new_objective("causal_lm", "{}", &st)?;
    let opt = reg.new_optimizer("adamw", r#"{"lr": 0.01, "weight_decay": 0.0}"#, &st)?;
    let mut trainer = Trainer::new(st, Box::new(model), adapters, stage, opt)?;

    let bytes = TEXT.as_bytes();
    let mut rng = Rng::new(7);
    let eval = batch(&mut Rng::new(99), bytes, 16, 32)?;
    let (before, _) = trainer.eval_batch(&eval)?;
    let t = std::time::Instant::now();
    for step in 1..=300 {
        let out = trainer.train_step(&batch(&mut rng, bytes, 16, 32)?, 0.01)?;
        if step % 50 == 0 {
            println!("step {step:4}  train loss {:.3}", out.loss);
        }
    }
    let (after, metrics) = trainer.eval_batch(&eval)?;
    println!("eval loss {before:.3} -> {after:.3} in {:.1}s", t.elapsed().as_secs_f64());
    for m in metrics {
        println!("eval {} {:.3}", m.name, m.sum / m.count.max(1.0));
    }
    anyhow::ensure!(after < before, "training did not reduce the eval loss");
    Ok(())
}
