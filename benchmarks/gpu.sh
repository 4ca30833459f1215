#!/usr/bin/env bash
# The device run: one call on a fresh copy of the tree, on a machine with no network.
#
#   bash benchmarks/gpu.sh [--out FILE] [--budget S] [any benchmarks/gpu_bench.py option]
#   bash benchmarks/gpu.sh --tiny      # CPU, tiny models, about a minute (what CI runs)
#
# 1. installs the carried wheels (.whl/, fetched here by `python benchmarks/device_wheels.py`)
#    offline into a target folder: --no-index --no-deps, so torch is never reinstalled;
# 2. puts that folder and the project on PYTHONPATH (no `pip install -e .`: it would try to
#    fetch the pinned torch);
# 3. imports every module the run needs before touching CUDA (benchmarks/device_preflight.py),
#    one line naming what is missing;
# 4. runs benchmarks/gpu_bench.py under a hard time limit of its budget + 60 s: the JSON (default
#    benchmarks/gpu.json) is rewritten after each section, so a cut-short run keeps what it
#    measured. The default budget (300 s) leaves a rerun's worth of a 15-minute device lease.
#
# Environment: PYTHON (default python3), RAYDEFENSE_WHEELS (default <repo>/.whl),
# RAYDEFENSE_SITE (default /tmp/raydefense-site).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
py="${PYTHON:-python3}"
wheels="${RAYDEFENSE_WHEELS:-$root/.whl}"
site="${RAYDEFENSE_SITE:-/tmp/raydefense-site}"
out="$here/gpu.json"
budget=""
tiny=0
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --budget) budget="$2"; shift 2 ;;
    --tiny) tiny=1; args+=("$1"); shift ;;
    *) args+=("$1"); shift ;;
  esac
done
[[ -n "$budget" ]] || budget=$([[ $tiny == 1 ]] && echo 120 || echo 300)

if compgen -G "$wheels/*.whl" > /dev/null; then
  if ! log=$("$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --disable-pip-version-check --target "$site" "$wheels"/*.whl 2>&1); then
    echo "gpu.sh: installing the carried wheels from $wheels failed: $(echo "$log" | grep -m1 -i error || echo "$log" | tail -1)" >&2
    exit 4
  fi
fi
export PYTHONPATH="$site:$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
"$py" "$here/device_preflight.py" --wheels "$wheels" || exit $?
if [[ $tiny == 0 ]] && ! "$py" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu.sh: no CUDA device here; run with --tiny for the CPU smoke mode" >&2
  exit 2
fi
limit=$("$py" -c "print(int(float('$budget')) + 60)")
exec timeout "$limit" "$py" "$here/gpu_bench.py" --out "$out" --budget "$budget" ${args[@]+"${args[@]}"}
