"""Export a stagecraft stage and load it with PEFT / transformers: same outputs?

For each finished stage given, this script
1. exports it with `stagecraft export --format peft` (and `--format merged` where the
   stage's adapters merge),
2. runs `stagecraft forward --adapter RUN_DIR:STAGE` on random token ids,
3. loads the PEFT directory with `PeftModel.from_pretrained` on the exported base
   (and the merged directory with `AutoModelForCausalLM` / `AutoModel`), runs the same
   ids, and prints the largest difference of the outputs (real positions only: PEFT
   puts prompt tuning's virtual tokens in front).

It needs transformers and PEFT (the versions the fixtures name); the test suite does
not run it. Usage, from the repository root:

    python scripts/peft_roundtrip.py --stagecraft target/release/stagecraft RUN_DIR STAGE [STAGE ...]

Exit status 1 when any difference exceeds 1e-4.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForCausalLM

TOLERANCE = 1e-4


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()}")
    return out.stdout


def load_base(path):
    config = json.load(open(os.path.join(path, "config.json")))
    causal = config.get("model_type") == "llama"
    cls = AutoModelForCausalLM if causal else AutoModel
    return cls.from_pretrained(path, dtype=torch.float32).eval(), causal


def output(model, causal, ids, mask):
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    return out.logits if causal else out.last_hidden_state


def check_stage(stagecraft, run_dir, stage, work):
    ids = torch.randint(0, 200, (2, 9), dtype=torch.int64)
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    inputs = os.path.join(work, "ids.safetensors")
    save_file({"input_ids": ids, "attention_mask": mask}, inputs)
    ours_path = os.path.join(work, f"{stage}-ours.safetensors")
    run([stagecraft, "forward", "--adapter", f"{run_dir}:{stage}", "--input", inputs, "--out", ours_path])
    ours = next(iter(load_file(ours_path).values()))
    real = mask.bool().unsqueeze(-1)

    worst = 0.0
    peft_dir = os.path.join(work, f"{stage}-peft")
    try:
        run([stagecraft, "export", run_dir, "--stage", stage, "--out", peft_dir, "--format", "peft"])
    except RuntimeError as e:
        print(f"{stage}: no PEFT export ({str(e).splitlines()[-1]})")
    else:
        config = json.load(open(os.path.join(peft_dir, "adapter_config.json")))
        base, causal = load_base(config["base_model_name_or_path"])
        model = PeftModel.from_pretrained(base, peft_dir).eval()
        theirs = output(model, causal, ids, mask)
        theirs = theirs[:, theirs.shape[1] - ids.shape[1] :]
        diff = ((ours - theirs).abs() * real).max().item()
        print(f"{stage}: {config['peft_type']} export vs stagecraft: max abs diff {diff:.3e}")
        worst = diff

    merged_dir = os.path.join(work, f"{stage}-merged")
    try:
        run([stagecraft, "export", run_dir, "--stage", stage, "--out", merged_dir, "--format", "merged"])
    except RuntimeError as e:
        print(f"{stage}: no merged export ({str(e).splitlines()[-1]})")
        return worst
    merged, causal = load_base(merged_dir)
    diff = ((ours - output(merged, causal, ids, mask)).abs() * real).max().item()
    print(f"{stage}: merged export in transformers vs stagecraft: max abs diff {diff:.3e}")
    return max(worst, diff)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--stagecraft", default="target/release/stagecraft")
    parser.add_argument("run_dir")
    parser.add_argument("stages", nargs="+")
    args = parser.parse_args()
    torch.manual_seed(0)
    worst = 0.0
    with tempfile.TemporaryDirectory() as work:
        for stage in args.stages:
            worst = max(worst, check_stage(os.path.abspath(args.stagecraft), args.run_dir, stage, work))
    print(f"largest difference: {worst:.3e} (tolerance {TOLERANCE:.0e})")
    sys.exit(0 if worst <= TOLERANCE else 1)


if __name__ == "__main__":
    main()
