#!/usr/bin/env bash
# GPU throughput of the paper-scale path in one prepared run (under 8 minutes on an H100/H200):
# training steps/s, samples/s and MFU of the 35.7M CIFAR-10 UNet at batch 128 in fp32 / bf16 /
# bf16 + torch.compile, SecMI and PIA scoring, soft-target labelling, DualMD vs single-model
# sampling, and an SD-1.5-shaped UNet fine-tuning step. Writes JSON (default
# benchmarks/gpu.json) and prints a summary.
#
#   bash benchmarks/gpu.sh [--out FILE] [any benchmarks/gpu_bench.py option]
#   bash benchmarks/gpu.sh --tiny      # CPU, a tiny UNet, seconds (what CI runs)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/gpu.json"
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
if [[ " ${args[*]-} " != *" --tiny "* ]] && ! python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu.sh: no CUDA device here; run with --tiny for the CPU smoke mode" >&2
  exit 2
fi
# Whatever happens, the run ends inside its budget.
exec timeout 480 python "$here/gpu_bench.py" --out "$out" ${args[@]+"${args[@]}"}
