#!/usr/bin/env bash
# The GPU path on a machine with one NVIDIA GPU (run on a lent H200; see bench/RESULTS.md, "GPU"):
# fine-tune with Ray Train + DeepSpeed ZeRO-3 in bf16 over NCCL, score a snapshot through Ray Data
# with a GPU inference actor, then bench/bench_gpu.py (end-to-end vs raw, MFU vs the GPU's peak).
#
#     bash bench/gpu_check.sh BACKBONE_SOURCE RESULTS_DIR [ROWS]
#
# The backbone is BACKBONE_SOURCE's architecture and tokenizer (a folder with config.json and the
# tokenizer files, e.g. MiniLM's) with freshly initialised weights, saved as safetensors: speed and
# the code path do not depend on the weights' values, and the weights need not travel.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$1; R=$2; ROWS=${3:-200000}
PY=${PY:-python3}; W=${WORK:-/tmp/nightscore-gpu}
mkdir -p "$W" "$R"
step() { printf '\n=== %s (%s)\n' "$*" "$(date -u +%T)"; }

step "backbone: $SRC's architecture, random weights"
$PY - "$SRC" "$W/backbone" <<'PYEOF'
import sys
from transformers import AutoConfig, AutoModel, AutoTokenizer
src, dst = sys.argv[1:]
AutoModel.from_config(AutoConfig.from_pretrained(src)).save_pretrained(dst, safe_serialization=True)
AutoTokenizer.from_pretrained(src).save_pretrained(dst)
PYEOF
G=(model.backbone="$W/backbone" ray.num_cpus="$(nproc)")

step "train: Ray Train, 1 GPU worker (NCCL), DeepSpeed ZeRO-3, bf16"
$PY jobs/make_snapshots.py --out "$W/training" --date 2026-10-31 --customers 4000 --labels --seed 1
$PY jobs/train.py --train "$W/training" --out "$W/model" --storage "$W/runs" --name gpu "${G[@]}" \
    train.use_gpu=true train.num_workers=1 train.cpus_per_worker=4 train.zero_stage=3 train.precision=bf16 \
    train.epochs=2 train.micro_batch=64 model.max_length=128 2>&1 | tee "$R/train.log"

S=(score.num_actors=1 score.gpus_per_actor=1 score.cpus_per_actor=2 score.batch_size=4096 score.micro_batch=512
   score.precision=bf16)
step "score: Ray Data, 1 GPU inference actor, bf16, reason codes on"
$PY jobs/make_snapshots.py --out "$W/snapshots" --date 2026-11-02 --customers 20000 --seed 2 --corrupt-fraction 0.01
$PY jobs/score.py --input "$W/snapshots" --model "$W/model" --output "$W/scores" --date 2026-11-02 "${G[@]}" "${S[@]}" \
    2>&1 | tee "$R/score.log"
cp "$W/scores/date=2026-11-02/_manifest.json" "$R/score_manifest.json"

step "bench: $ROWS rows, end-to-end vs raw on the GPU"
PYTHONUNBUFFERED=1 $PY bench/bench_gpu.py --model "$W/model" --rows "$ROWS" --json "$R/bench_gpu.json" \
    "${G[@]}" "${S[@]}" 2>&1 | tee "$R/bench_gpu.log"
nvidia-smi > "$R/nvidia-smi.txt"
