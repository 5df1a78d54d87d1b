//! The CUDA backend, on a machine with a GPU (built with `--features cuda`, carried by
//! `scripts/build-cuda.sh`, run by `gpu-check.sh`; without the feature this file is
//! empty):
//! - the fixtures' outputs on the GPU match transformers / PEFT: within 1e-4 in fp32,
//!   and within [`BF16_TOLERANCE`] of the largest reference value in bf16;
//! - LoRA's gradients through the plugin on the GPU match the CPU's;
//! - a pipeline trains on the GPU, writes checkpoints from device memory and resumes
//!   onto it;
//! - greedy generation on the GPU gives transformers' tokens, as the CPU does.
#![cfg(feature = "cuda")]

mod support;

use candle_core::{DType, Device, Tensor};
use stagecraft_core::adapter::load_peft;
use stagecraft_core::checkpoint;
use stagecraft_core::config::PipelineConfig;
use stagecraft_core::device::Precision;
use stagecraft_core::generate::{generate, Sampling};
use stagecraft_core::model::{load_model, Adapters, MlpLm, MlpLmConfig, Model};
use stagecraft_core::pipeline::Pipeline;
use stagecraft_core::plugin::{HostState, Registry};
use std::rc::Rc;
use support::{fixture, fixture_tensors, max_abs, max_abs_diff, scratch};

/// bf16 outputs may differ from fp32 references by this share of the largest
/// reference value (bf16 keeps 8 significant bits; errors add up over the layers).
const BF16_TOLERANCE: f32 = 0.02;

fn gpu() -> Device {
    Device::new_cuda(0).expect("a CUDA device")
}

/// The fixture model on the GPU with a PEFT adapter (or none), in `precision`.
fn on_gpu(
    model: &str,
    adapter: Option<&str>,
    precision: Precision,
) -> (Box<dyn Model>, Adapters, Rc<HostState>, Registry) {
    let device = gpu();
    let reg = Registry::with_builtins(scratch("gpu-reports")).expect("registry");
    let st = Rc::new(HostState::new(device.clone(), DType::F32, 0));
    st.set_training(false);
    let m = load_model(&fixture(model, "base"), &device).expect("model on the GPU");
    st.register_model(m.as_ref());
    let mut adapters = Adapters::none(m.sites().len());
    adapters.set_precision(precision);
    if let Some(a) = adapter {
        load_peft(&fixture(model, a), &reg, &st, m.as_ref(), &mut adapters).expect("adapter on the GPU");
    }
    (m, adapters, st, reg)
}

#[test]
fn fixture_outputs_on_the_gpu_match_transformers_and_peft() {
    let r = fixture_tensors("llama-tiny", "reference.safetensors");
    let methods = fixture_tensors("llama-tiny", "methods.safetensors");
    let ids = r["input_ids"].to_dtype(DType::U32).expect("u32").to_device(&gpu()).expect("ids");
    let cases: [(Option<&str>, &Tensor); 5] = [
        (None, &r["logits"]),
        (Some("lora"), &r["logits_lora"]),
        (Some("dora"), &methods["logits_dora"]),
        (Some("ia3"), &methods["logits_ia3"]),
        (Some("prefix"), &methods["logits_prefix"]),
    ];
    for (adapter, want) in cases {
        let (m, a, _st, _reg) = on_gpu("llama-tiny", adapter, Precision::Fp32);
        let d = max_abs_diff(&m.forward(&ids, None, &a).expect("forward").logits.expect("logits"), want);
        println!("llama {adapter:?} fp32 on the GPU: max abs diff {d:e}");
        assert!(d <= 1e-4, "llama {adapter:?}: {d}");
        let (m, a, _st, _reg) = on_gpu("llama-tiny", adapter, Precision::Bf16);
        let d = max_abs_diff(&m.forward(&ids, None, &a).expect("forward").logits.expect("logits"), want);
        println!(
            "llama {adapter:?} bf16 on the GPU: max abs diff {d:e} ({:.2}% of the largest logit)",
            100.0 * d / max_abs(want)
        );
        assert!(d <= BF16_TOLERANCE * max_abs(want), "llama {adapter:?} bf16: {d}");
    }
    let r = fixture_tensors("bert-tiny", "reference.safetensors");
    let (ids, mask) = (
        r["input_ids"].to_dtype(DType::U32).expect("u32").to_device(&gpu()).expect("ids"),
        r["attention_mask"].to_device(&gpu()).expect("mask"),
    );
    let (m, a, _st, _reg) = on_gpu("bert-tiny", None, Precision::Fp32);
    let d = max_abs_diff(&m.forward(&ids, Some(&mask), &a).expect("forward").hidden, &r["last_hidden_state"]);
    println!("bert fp32 on the GPU: max abs diff {d:e}");
    assert!(d <= 1e-4, "bert: {d}");
}

#[test]
fn lora_gradients_through_the_plugin_on_the_gpu_match_the_cpu() {
    let cfg = MlpLmConfig { vocab: 64, hidden: 32, intermediate: 48, layers: 2 };
    let grads = |device: &Device| -> Vec<Tensor> {
        let reg = Registry::with_builtins(scratch("gpu-grads")).expect("registry");
        let st = Rc::new(HostState::new(device.clone(), DType::F32, 0));
        let model = MlpLm::new(cfg, 3, device).expect("model");
        for (_, w) in model.weights() {
            w.set_trainable(false);
        }
        let mut adapters = Adapters::none(model.sites().len());
        adapters
            .attach(
                reg.new_method("lora", r#"{"targets": ["up_proj", "down_proj"], "r": 4, "alpha": 8}"#, &st)
                    .expect("lora"),
                model.sites(),
            )
            .expect("attach");
        for (i, p) in adapters.methods()[0].params().iter().enumerate() {
            let v = Tensor::arange(0u32, p.var.elem_count() as u32, &Device::Cpu)
                .expect("arange")
                .to_dtype(DType::F32)
                .expect("f32");
            let v = ((v * (0.37 + i as f64 * 0.11)).expect("scale").sin().expect("sin") * 0.3).expect("scale");
            p.var.set(&v.reshape(p.var.dims()).expect("reshape").to_device(device).expect("to device")).expect("set");
        }
        let ids = Tensor::new(&[[1u32, 5, 9, 3, 60, 12], [7, 2, 2, 30, 41, 0]], device).expect("ids");
        let logits = model.forward(&ids, None, &adapters).expect("forward").logits.expect("logits");
        let g = logits.sqr().expect("sqr").mean_all().expect("mean").backward().expect("backward");
        adapters.methods()[0]
            .params()
            .iter()
            .map(|p| g.get(p.var.as_tensor()).expect("gradient").to_device(&Device::Cpu).expect("to cpu"))
            .collect()
    };
    for (cpu, cuda) in grads(&Device::Cpu).iter().zip(grads(&gpu())) {
        let d = max_abs_diff(cpu, &cuda);
        println!("LoRA gradient, GPU vs CPU: max abs diff {d:e}");
        assert!(d <= 1e-5 * max_abs(cpu).max(1.0), "{d}");
    }
}

const PIPELINE: &str = r#"
[run]
name = "gpu"
seed = 4
device = "cuda:0"

[model]
arch = "llama"
hidden_size = 64
num_layers = 2
num_heads = 4
num_kv_heads = 2

[[stages]]
name = "pretrain"
objective = "causal_lm"
data = { train = "synthetic:arith_text?n=256&digits=1", eval = "synthetic:arith_text?n=32&digits=1&seed=1" }
optimizer = { lr = 3e-3 }
max_steps = 20
eval_every = 10
batch_size = 16
seq_len = 32
train = { dropout = 0.1 }

[[stages]]
name = "adapt"
objective = "completion"
data = { train = "synthetic:add?n=256&digits=1", eval = "synthetic:add?n=32&digits=1&seed=2", replay = { from = "pretrain", ratio = 0.25 } }
optimizer = { lr = 1e-2 }
adapters = [{ plugin = "lora", targets = ["q_proj", "v_proj"], r = 4, dropout = 0.1 }, { plugin = "prompt_tuning", num_virtual_tokens = 3 }]
max_steps = 20
eval_every = 10
batch_size = 16
seq_len = 16
gates = { retention = { stage = "pretrain", max_drop = 5.0 } }
"#;

#[test]
fn a_pipeline_trains_on_the_gpu_and_resumes_from_its_checkpoints() {
    for precision in ["fp32", "bf16"] {
        let dir = scratch(&format!("gpu-pipeline-{precision}"));
        let run_dir = dir.join("run");
        let cfg =
            PipelineConfig::from_str(PIPELINE, "gpu.toml", &[format!("run.precision={precision}")]).expect("config");
        let reg = Registry::with_builtins(dir.join("reports")).expect("registry");
        let (p, _) = Pipeline::new(cfg, reg, &run_dir, true).expect("pipeline");
        let summary = p.run().expect("run on the GPU");
        assert_eq!(summary.stages.len(), 2);
        let end = checkpoint::load(&run_dir.join("checkpoints/adapt"), &Device::Cpu).expect("checkpoint").tensors;
        std::fs::remove_dir_all(run_dir.join("checkpoints/adapt")).expect("remove the stage end");
        support::resume_pipeline(&run_dir);
        let again = checkpoint::load(&run_dir.join("checkpoints/adapt"), &Device::Cpu).expect("checkpoint").tensors;
        let (mut worst, mut identical) = (0f32, true);
        for (k, t) in &end {
            let d = max_abs_diff(t, &again[k]);
            worst = worst.max(d);
            identical &= d == 0.0;
        }
        println!(
            "{precision}: resume on the GPU vs uninterrupted: {} (max abs diff {worst:e})",
            if identical { "bit-identical" } else { "not bit-identical" }
        );
        assert!(worst <= 1e-3, "{precision}: resumed weights differ by {worst}");
    }
}

#[test]
fn greedy_generation_on_the_gpu_gives_the_cpus_tokens() {
    let tokens = |device: &Device| {
        let m = load_model(&fixture("llama-tiny", "base"), device).expect("model");
        let a = Adapters::none(m.sites().len());
        generate(m.as_ref(), &a, &[5, 17, 42], 8, &Sampling { temperature: 0.0, top_p: 1.0, seed: 0 }, None, device)
            .expect("generate")
    };
    let want: Vec<u32> = fixture_tensors("llama-tiny", "reference.safetensors")["greedy_tokens"]
        .flatten_all()
        .and_then(|t| t.to_dtype(DType::U32))
        .and_then(|t| t.to_vec1())
        .expect("tokens");
    assert_eq!([vec![5, 17, 42], tokens(&gpu())].concat(), want, "transformers' greedy tokens");
    assert_eq!(tokens(&gpu()), tokens(&Device::Cpu));
}
