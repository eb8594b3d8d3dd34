#!/usr/bin/env bash
# One command for a lent GPU machine (H100/H200), at most 8 minutes in all: the benchmark and the default study on
# the GPU, writing the same files as on the CPU under ${OUT:-results}/ (bench-gpu/, default-gpu/).
#   bash scripts/gpu_check.sh            # OUT=/some/dir bash scripts/gpu_check.sh to write elsewhere
# Each step has its own time limit; the study resumes where it stopped, so a second call finishes what the first
# one's limit cut (finished runs are skipped). Nothing is downloaded at run time.
# A GPU image with its own torch but without this project's other packages: download their wheels here first
# (ultralytics, ultralytics-thop, ultralytics-platform, optuna, alembic, colorlog, mako, sqlalchemy, pycocotools,
# torch-pruning; polars is not needed) and put them on PYTHONPATH there, as in docs/usage.md "On a GPU".
# Measured: the study's first 4 runs took 80-85 s each on an H200 (results/gpu/); the bench's scaling part does not
# fit the limit there, so it is left out.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-results}"
export YOLO_OFFLINE=1 YOLO_VERBOSE=False MPLBACKEND=Agg PYTHONUNBUFFERED=1
python -c "import torch, torchvision, ultralytics" 2>/dev/null || python -m pip install -q -e . || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))" || exit 1
start=$(date +%s)
timeout 200 python -m study bench --device cuda --out "$OUT/bench-gpu" --train-images 255 --skip-scaling
echo "bench: rc $? after $(( $(date +%s) - start )) s"
timeout $(( 470 - ($(date +%s) - start) )) python -m study run --profile default --device cuda --out "$OUT/default-gpu" --no-progress
echo "study: rc $? after $(( $(date +%s) - start )) s"
ls "$OUT/bench-gpu" "$OUT/default-gpu" 2>/dev/null
