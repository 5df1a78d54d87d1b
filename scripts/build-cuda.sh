#!/usr/bin/env bash
# Builds stagecraft with candle's CUDA backend on a machine without a GPU, and puts
# what a GPU machine needs into one folder (default dist/cuda):
#
#   stagecraft                  the CUDA binary (stripped)
#   plugins/*.so                the first-party plugin libraries
#   tests/gpu                   the GPU test binary (deps layout: tests/deps/gpu)
#   gpu-check.sh                the check to run on the GPU machine
#   torch_gpu_anchor.py         PyTorch + PEFT on the same workloads
#   BUILD                       what was built, from which commit, with which toolkit
#
# and the same folder as one archive, dist/cuda.tar.xz (about 20 MB; the folder is
# about 75 MB, most of it the kernels inside both binaries), to carry to the GPU machine.
#
# The CUDA toolkit comes from NVIDIA's PyPI wheels (no system install, no GPU, no
# driver): they unpack into one site-packages/nvidia/cu13 folder laid out as a toolkit.
# The linker needs unversioned `libX.so` names, which the wheels lack, and libcuda
# (the driver's library), which no wheel has: a stub with the driver API's symbols,
# every function returning an error, stands in for it at link time only and is never
# shipped. The GPU machine's own driver provides the real one.
#
# Idempotent: the toolkit and the stub are made once under target/cuda-toolkit; cargo
# rebuilds only what changed (a first build takes about 20 minutes on 2 cores, the
# kernels alone 8; a rebuild after a code change about one).
#
# Environment: CUDA_COMPUTE_CAP (default 90: H100/H200), STAGECRAFT_CUDA_DIST (the
# output folder), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$ROOT/target/cuda-toolkit
DIST=${STAGECRAFT_CUDA_DIST:-$ROOT/dist/cuda}
CAP=${CUDA_COMPUTE_CAP:-90}
PYTHON=${PYTHON:-python3}
TARGET=$ROOT/target/cuda

# 1. The toolkit from PyPI (versions that work together).
WHEELS=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.1.0.3
  nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88
)
if [ ! -f "$WORK/wheels.done" ]; then
  echo "== installing the CUDA 13.0 toolkit wheels into $WORK/venv"
  "$PYTHON" -m venv "$WORK/venv"
  "$WORK/venv/bin/pip" install -q --disable-pip-version-check "${WHEELS[@]}"
  touch "$WORK/wheels.done"
fi
SITE=$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
CUDA=$SITE/nvidia/cu13
[ -x "$CUDA/bin/nvcc" ] || { echo "no nvcc in $CUDA/bin: the nvidia-cuda-nvcc wheel did not install as expected" >&2; exit 1; }

# 2. Link names, and the link-time stub of libcuda.
mkdir -p "$WORK/lib"
for f in "$CUDA"/lib/lib*.so.*; do
  name=$(basename "$f")
  ln -sf "$f" "$WORK/lib/${name%%.so.*}.so"
done
if [ ! -f "$WORK/lib/libcuda.so.1" ]; then
  echo "== making the link-time libcuda stub"
  cargo fetch --quiet
  CUDARC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | tail -1)
  {
    echo "/* Link-time stand-in for the NVIDIA driver's libcuda: never shipped, never run. */"
    grep -o 'fn cu[A-Z][A-Za-z0-9_]*' "$CUDARC/src/driver/sys/mod.rs" | sort -u | sed 's/^fn \(.*\)$/int \1(void) { return 999; }/'
  } > "$WORK/cuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$WORK/lib/libcuda.so.1" "$WORK/cuda_stub.c"
  ln -sf libcuda.so.1 "$WORK/lib/libcuda.so"
fi

# 3. Build: the binary, the plugins, and the GPU test binary.
export PATH=$CUDA/bin:$PATH
export CUDA_ROOT=$CUDA CUDA_PATH=$CUDA CUDA_HOME=$CUDA CUDA_TOOLKIT_ROOT_DIR=$CUDA
export CUDA_COMPUTE_CAP=$CAP
# candle-kernels' quantized kernels are 32 MB of sm_90a code uncompressed.
export NVCC_APPEND_FLAGS="--compress-mode=size"
export LIBRARY_PATH=$WORK/lib${LIBRARY_PATH:+:$LIBRARY_PATH}
export RUSTFLAGS="-L native=$WORK/lib ${RUSTFLAGS:-}"
# candle's kernel build does not notice a change of NVCC_APPEND_FLAGS: start the kernels
# afresh when it differs from the last build's.
if [ "$(cat "$TARGET/nvcc-flags" 2>/dev/null)" != "$NVCC_APPEND_FLAGS cap $CAP" ]; then
  rm -rf "$TARGET"/release/build/candle-kernels-*
  mkdir -p "$TARGET"
  echo "$NVCC_APPEND_FLAGS cap $CAP" > "$TARGET/nvcc-flags"
fi
echo "== building with CUDA (compute capability $CAP)"
cargo build --release --workspace --features stagecraft-core/cuda --target-dir "$TARGET"
GPU_TEST=$(cargo test --release -p stagecraft-core --features cuda --test gpu --no-run --target-dir "$TARGET" --message-format=json 2>/dev/null \
  | "$PYTHON" -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "gpu" and m.get("executable"):
        print(m["executable"])')
[ -n "$GPU_TEST" ] || { echo "the GPU test binary was not built" >&2; exit 1; }

# 4. The folder for the GPU machine.
echo "== assembling $DIST"
rm -rf "$DIST"
mkdir -p "$DIST/plugins" "$DIST/tests/deps"
cp "$TARGET/release/stagecraft" "$DIST/stagecraft"
strip "$DIST/stagecraft"
for lib in lora ia3 prompt_tuning bottleneck optimizers stages; do
  cp "$TARGET/release/libstagecraft_$lib.so" "$DIST/plugins/"
  # The test binary finds the plugins next to its profile directory, as under target/.
  ln -sf "../plugins/libstagecraft_$lib.so" "$DIST/tests/libstagecraft_$lib.so"
done
cp "$GPU_TEST" "$DIST/tests/deps/gpu"
strip "$DIST/tests/deps/gpu"
cp scripts/gpu-check.sh "$DIST/gpu-check.sh"
cp benches/torch_gpu_anchor.py "$DIST/torch_gpu_anchor.py"
{
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "compute capability $CAP"
  echo "toolkit ${WHEELS[*]}"
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ)"
} > "$DIST/BUILD"
echo "== packing $DIST.tar.xz"
XZ_OPT=-T0 tar -C "$(dirname "$DIST")" -cJf "$DIST.tar.xz" "$(basename "$DIST")"
du -sh "$DIST" "$DIST/stagecraft" "$DIST/tests/deps/gpu" "$DIST.tar.xz"
echo "== done: carry $DIST.tar.xz to the GPU machine, unpack it next to the repository's files and run gpu-check.sh from the repository root"
