#!/usr/bin/env bash
# The GPU check: run on a machine with one NVIDIA GPU, from the repository root, with
# the folder scripts/build-cuda.sh made (default dist/cuda). It needs the NVIDIA driver
# and Python with PyTorch, transformers and PEFT, whose nvidia-* wheels also provide the
# CUDA libraries stagecraft loads (cuBLAS, cuRAND, the runtime); no Rust, no network.
#
#   bash dist/cuda/gpu-check.sh [DIST]
#
# In order, each step with its own time limit (about 8 minutes in all):
#  1. the GPU test binary: fixture outputs on the GPU vs transformers/PEFT (fp32 within
#     1e-4, bf16 within 2% of the largest value), LoRA gradients GPU vs CPU, a pipeline
#     trained, checkpointed and resumed on the GPU, generation GPU vs CPU;
#  2. the default pipeline on cuda:0, held to the CPU run's targets (exact match >= 0.9
#     on addition and subtraction);
#  3. `stagecraft bench` on w2 (fp32), w350m (bf16, full) and w1b (bf16, LoRA);
#  4. PyTorch + PEFT on the same workloads (torch_gpu_anchor.py), in the same run;
#  5. a table of both, with stagecraft's tokens/s as a ratio of PyTorch's.
# Everything goes to one log: $OUT/gpu-check.log when OUT is set, else ./gpu-check.log.
set -uo pipefail
DIST=${1:-dist/cuda}
LOG=${OUT:-.}/gpu-check.log
WORK=$(mktemp -d)
exec > >(tee "$LOG") 2>&1
export PYTHONUNBUFFERED=1

# The CUDA libraries of the Python environment's nvidia wheels.
LIBS=$(python3 -c 'import glob, os, sysconfig
site = sysconfig.get_paths()["purelib"]
print(":".join(sorted({os.path.dirname(f) for f in glob.glob(site + "/nvidia/**/lib*.so*", recursive=True)})))')
export LD_LIBRARY_PATH=$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export STAGECRAFT_ROOT=$PWD
S=$DIST/stagecraft
FAILED=()
step() { echo; echo "== $1 ($(date -u +%H:%M:%S))"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
cat "$DIST/BUILD" 2>/dev/null
python3 -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)'

step "1. GPU tests"
timeout 240 "$DIST/tests/deps/gpu" --test-threads 1 --nocapture || FAILED+=("GPU tests")

step "2. the default pipeline on cuda:0"
if timeout 240 "$S" run --device cuda:0 --run-dir "$WORK/default" --quiet; then
  python3 - "$WORK/default/retention.json" <<'EOF' || FAILED+=("default pipeline targets")
import json, sys
m = json.load(open(sys.argv[1]))
ok = True
for name in ("finetune_add", "adapt_sub"):
    j = m["sets"].index(name)
    v = m["values"][-1][j]
    print(f"{name}: exact match {v:.4f} after the last stage (target >= 0.9)")
    ok &= v is not None and v >= 0.9
sys.exit(0 if ok else 1)
EOF
else
  FAILED+=("default pipeline")
fi

step "3. stagecraft bench"
: > "$WORK/ours.jsonl"
bench() {  # workload mode precision [batch]
  local extra=()
  [ -n "${4:-}" ] && extra=(--batch "$4")
  timeout 200 "$S" bench --workload "$1" --mode "$2" --precision "$3" --device cuda:0 --steps 5 "${extra[@]}" | tee -a "$WORK/ours.jsonl"
}
bench w2 full fp32 || FAILED+=("bench w2")
# The attention materializes [batch, heads, seq, seq] scores: at seq 2048 the standard
# batch may not fit; then a smaller one is measured (tokens/s compare all the same).
bench w350m full bf16 || bench w350m full bf16 2 || FAILED+=("bench w350m")
bench w1b lora bf16 || bench w1b lora bf16 1 || FAILED+=("bench w1b")

step "4. PyTorch + PEFT on the same workloads"
timeout 300 python3 "$DIST/torch_gpu_anchor.py" w2-fp32 w350m-bf16 w1b-lora | tee "$WORK/torch.jsonl" || FAILED+=("torch anchor")

step "5. side by side"
python3 - "$WORK/ours.jsonl" "$WORK/torch.jsonl" <<'EOF'
import json, sys
ours = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
torch = {j["workload"]: j for j in (json.loads(l) for l in open(sys.argv[2]) if l.startswith("{"))}
pairs = {("w2", "fp32"): "w2-fp32", ("w350m", "bf16"): "w350m-bf16", ("w1b", "bf16"): "w1b-lora"}
print(f"{'workload':<14}{'batch':>6}{'ours tok/s':>12}{'torch tok/s':>13}{'ratio':>8}{'ours MFU':>10}{'torch MFU':>11}{'ours GiB':>10}{'torch GiB':>11}")
for o in ours:
    t = torch.get(pairs.get((o["workload"], o["precision"]), ""), {})
    ratio = o["tokens_per_s"] / t["tokens_per_s"] if t else float("nan")
    gib = (o.get("peak_gpu_mib") or 0) / 1024
    print(f"{o['workload'] + ' ' + o['precision']:<14}{o['batch']:>6}{o['tokens_per_s']:>12.0f}{t.get('tokens_per_s', float('nan')):>13.0f}{ratio:>8.2f}"
          f"{(o.get('mfu') or 0):>10.3f}{t.get('mfu', float('nan')):>11.3f}{gib:>10.1f}{t.get('peak_mem_gib', float('nan')):>11.1f}")
EOF

echo
if [ ${#FAILED[@]} -eq 0 ]; then echo "== gpu check: all steps passed"; else echo "== gpu check: FAILED: ${FAILED[*]}"; exit 1; fi
