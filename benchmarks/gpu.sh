#!/usr/bin/env bash
# plmkit on a CUDA machine, unattended, in under 8 minutes (one GPU such as an H200; all GPUs present
# are used for the DDP / FSDP2 check):
#   1. plmkit installed over the machine's own PyTorch with `pip install -e . --no-deps` (into
#      $PYTHON when that is a virtualenv, as the GPU image's python3 is, else into a virtualenv
#      made with --system-site-packages), so no other torch is ever pulled; PLMKIT_GPU_ONLINE=1
#      also installs the test extras with torch pinned to the installed version; PLMKIT_GPU_INSTALL=0
#      installs nothing (run with PYTHONPATH=src);
#   2. correctness: the GPU computes what the CPU computes (benchmarks/gpu_check.py: fp32 losses and
#      gradients equal, bf16 close, the training loop eager and compiled, fused AdamW, SDPA flash);
#   3. DDP and FSDP2 under torchrun over every GPU against one process (with 2+ GPUs);
#   4. the benchmark tables on the GPU, plmkit vs transformers in bf16 with MFU against the measured
#      bf16 matmul peak, plmkit eager and with its blocks compiled: training (bert-base, GPT-2 124M),
#      inference (bert-base), generation (GPT-2 124M, fp32 and bf16 weights).
#
#   bash benchmarks/gpu.sh                      # everything, on cuda
#   bash benchmarks/gpu.sh --dry-run            # print the commands only
#   bash benchmarks/gpu.sh --device cpu --smoke # the same steps, tiny and on the CPU (what the tests run)
#
# Each step has its own time limit; a failed step is reported and the next one runs. Logs go to
# runs/gpu/ (or $PLMKIT_GPU_LOGS); the exit code is the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
SMOKE=0
DRY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) DEVICE="${2:?--device needs a value}"; shift ;;
    --device=*) DEVICE="${1#--device=}" ;;
    --smoke) SMOKE=1 ;;
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

PYTHON=${PYTHON:-python3}
VENV=${PLMKIT_GPU_VENV:-.venv-gpu}
LOGS=${PLMKIT_GPU_LOGS:-runs/gpu}
mkdir -p "$LOGS"
START=$SECONDS
BUDGET=${PLMKIT_GPU_BUDGET:-465}  # seconds for everything: each step's limit is cut to what is left
FAILED=()

run() {  # run NAME SECONDS COMMAND...: one step with its own time limit (within the budget), logged
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - (SECONDS - START)))
  if ((left < limit)); then limit=$left; fi
  echo
  echo "=== $name (limit ${limit}s): $*"
  if [[ $DRY == 1 ]]; then return 0; fi
  if ((limit < 20)); then echo "=== $name: skipped, the time budget is spent"; FAILED+=("$name"); return 0; fi
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - t0)) s (total $((SECONDS - START)) s)"
  if [[ $rc != 0 ]]; then FAILED+=("$name"); fi
}

# ---- 1. environment: the machine's torch, plmkit on top -------------------------------------
PY=$PYTHON
if [[ $DRY == 0 && "${PLMKIT_GPU_INSTALL:-1}" == 1 ]]; then
  # A python that is a virtualenv already (the GPU image's python3 is one) takes plmkit directly; a
  # system python gets a virtualenv that sees its packages. Either way no dependency is resolved.
  if ! "$PY" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
    if [[ ! -x "$VENV/bin/python" ]]; then
      "$PY" -m venv --system-site-packages "$VENV" || { echo "gpu.sh: cannot create $VENV" >&2; exit 1; }
    fi
    PY="$VENV/bin/python"
  fi
  "$PY" -m pip install --quiet --no-deps --no-build-isolation -e . \
    || { echo "gpu.sh: pip install -e . failed" >&2; exit 1; }
  if [[ "${PLMKIT_GPU_ONLINE:-0}" == 1 ]]; then
    "$PY" -c 'import torch; print("torch==" + torch.__version__.split("+")[0])' > "$LOGS/constraints.txt"
    "$PY" -m pip install --quiet -e '.[test]' -c "$LOGS/constraints.txt" || echo "gpu.sh: test extras not installed"
  fi
fi
if [[ $DRY == 0 ]]; then
  "$PY" - <<'EOF'
import importlib.util, torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, devices: "
      + (", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "none"))
missing = [m for m in ("plmkit", "transformers", "tokenizers", "safetensors", "yaml", "tqdm", "numpy")
           if importlib.util.find_spec(m) is None]
print("missing modules: " + (", ".join(missing) if missing else "none"))
EOF
  if [[ $DEVICE == cuda ]] && command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  fi
fi
export PYTHONUNBUFFERED=1

GPUS=1
if [[ $DRY == 0 && $DEVICE == cuda ]]; then GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())'); fi

# ---- 2-3. correctness ------------------------------------------------------------------------
if [[ $SMOKE == 1 ]]; then
  run check 120 "$PY" benchmarks/gpu_check.py --device "$DEVICE" --smoke --json "$LOGS/check.json"
else
  run check 90 "$PY" benchmarks/gpu_check.py --device "$DEVICE" --json "$LOGS/check.json"
  if [[ $GPUS -ge 2 ]]; then
    run distributed 75 "$PY" benchmarks/gpu_check.py --device "$DEVICE" --distributed --json "$LOGS/distributed.json"
  else
    echo; echo "=== distributed: skipped ($GPUS GPU; DDP / FSDP2 need 2+, tests/distributed runs them on CPU)"
  fi
fi

# ---- 4. benchmark tables ---------------------------------------------------------------------
if [[ $SMOKE == 1 ]]; then  # the same scripts, tiny
  run train 240 "$PY" benchmarks/bench_train.py --device "$DEVICE" --models bert-mini --shapes full \
    --precision bf16 --variants default --quick --batch 2 --length 32 --json "$LOGS/train.json"
  run infer 120 "$PY" benchmarks/bench_infer.py --device "$DEVICE" --models bert-mini --shapes full \
    --precision bf16 --quick --json "$LOGS/infer.json"
else
  run train 190 "$PY" benchmarks/bench_train.py --device "$DEVICE" --models bert-base,gpt2 --shapes full,real \
    --precision bf16 --variants default,compile --quick --batch 32 --length 512 --json "$LOGS/train.json"
  run infer 45 "$PY" benchmarks/bench_infer.py --device "$DEVICE" --models bert-base --precision bf16 --quick \
    --json "$LOGS/infer.json"
  run generate 60 "$PY" benchmarks/bench_generate.py --device "$DEVICE" --weights fp32,bf16 --batch 1,8 \
    --modes greedy --rounds 2 --json "$LOGS/generate.json"
fi

echo
echo "gpu.sh: $((SECONDS - START)) s; logs in $LOGS/" \
  "$( ((${#FAILED[@]})) && echo "; FAILED: ${FAILED[*]}" || echo "; every step passed")"
exit ${#FAILED[@]}
