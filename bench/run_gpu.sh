#!/usr/bin/env bash
# Every GPU measurement of BENCHMARKS.md in one call (about 6-8 minutes on an H100, data generation included):
# the training iteration at the paper's sizes, evaluation of the real ResNet-101 at the original's sizes, compute_iou,
# and a whole run's snapshots in one call against one call each.
# Results (JSON) go to ${OUT:-bench/results}; the tables go to stdout. Usage, from the repository root:
#     bash bench/run_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/results}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python bench/bench_train.py --device cuda --json "$out/train_cuda.json"
python bench/bench_evaluate.py --gpu 0 --resnet-layers 3,4,23,3 --num-images 100 --batch-sizes 1,4 --repeat 1 \
    --json "$out/evaluate_cuda.json"
python bench/bench_compute_iou.py --num-images 100 --workers 1,4,8 --repeat 2 --json "$out/compute_iou_gpuhost.json"
python bench/bench_evaluate_run.py --gpu 0 --resnet-layers 3,4,23,3 --num-snapshots 3 --num-images 20 \
    --json "$out/evaluate_run_cuda.json"
