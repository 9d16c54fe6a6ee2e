#!/usr/bin/env bash
# One command for a short GPU session (about 15 minutes of device time in all, so this runs once):
#   bash scripts/gpu_check.sh 2>&1 | tee gpu_check.log
# 1. which Python, torch and CUDA it finds; stops with one line (exit 3) when no CUDA GPU is usable;
# 2. the tests marked `cuda` (pytest -m cuda; none yet is reported, not a failure);
# 3. benchmarks/bench_train.py --device cuda at d_in 768, d_sae 24576, batch 4096 (acts/s, % of bf16 peak),
#    then our steps once more as Trainer.train runs them from a store (batch from pinned host memory,
#    the trainer's two per-step host syncs);
# 4. benchmarks/bench_harvest.py --device cuda, GPT-2-small-shaped random model, 256 x 128 tokens a batch
#    (tokens/s, % of bf16 peak).
# Each step has its own timeout (90 + 180 + 45 + 135 s at most), so the whole stays under ~8 minutes.
# The interpreter: $PYTHON, else the first of .venv-peers/bin/python, python3, .venv/bin/python whose
# torch sees a CUDA GPU. Nothing is fetched when one is found: attnsae runs from this checkout
# (PYTHONPATH). The peers (SAELens, TransformerLens) run where that Python has them; wheels left in .whl/
# (see benchmarks/README.md) are installed offline into a temporary folder first.
#   bash scripts/gpu_check.sh --cpu-dry-run   the same steps on the CPU at --quick sizes (checks this script)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
T0=$SECONDS
say() { echo "gpu_check: $*"; }
DEV=cuda
SIZE=()
case "${1:-}" in
  "") ;;
  --cpu-dry-run) DEV=cpu; SIZE=(--quick) ;;
  *) echo "usage: bash scripts/gpu_check.sh [--cpu-dry-run]" >&2; exit 2 ;;
esac

# ---- 1. Python, torch, CUDA
probe() {  # prints one line about torch and CUDA; exit 0 only when a CUDA GPU is usable
  "$1" - <<'PY' 2>&1 | tail -n 1
import sys
try:
    import torch
except Exception as e:
    print(f"no torch ({type(e).__name__}: {e})"); sys.exit(4)
n = torch.cuda.device_count() if torch.cuda.is_available() else 0
gpus = ", ".join(torch.cuda.get_device_name(i) for i in range(n))
why = "" if n else ("; built without CUDA" if torch.version.cuda is None else "; no GPU visible to it")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {n} GPU(s){': ' + gpus if n else ''}{why}")
sys.exit(0 if n else 3)
PY
}
CANDIDATES=()
if [ -n "${PYTHON:-}" ]; then CANDIDATES=("$PYTHON"); else
  for c in .venv-peers/bin/python python3 .venv/bin/python; do
    if [ -x "$c" ] || command -v "$c" >/dev/null 2>&1; then CANDIDATES+=("$c"); fi
  done
fi
PY=""
ANY_TORCH=0
for c in ${CANDIDATES[@]+"${CANDIDATES[@]}"}; do
  line="$(probe "$c")"; rc=$?
  say "$c: $line"
  [ "$rc" != 4 ] && ANY_TORCH=1
  if [ "$rc" = 0 ] || { [ "$DEV" = cpu ] && [ "$rc" = 3 ]; }; then PY="$c"; break; fi
done
GPU_SEEN=""
if command -v nvidia-smi >/dev/null 2>&1; then
  GPU_SEEN="$(timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null | head -n 1)"
  [ -n "$GPU_SEEN" ] && say "nvidia-smi: $GPU_SEEN"
fi
if [ -z "$PY" ] && [ -n "$GPU_SEEN" ] && [ "$ANY_TORCH" = 0 ] && [ ${#CANDIDATES[@]} -gt 0 ]; then
  # a GPU but no torch at all: PyPI's torch 2.13.0 for Linux x86-64 is the CUDA build
  say "no torch anywhere: pip install torch==2.13.0 into ${CANDIDATES[0]} (at most 300 s)"
  timeout 300 "${CANDIDATES[0]}" -m pip install -q torch==2.13.0 || say "pip install torch==2.13.0 failed"
  line="$(probe "${CANDIDATES[0]}")" && PY="${CANDIDATES[0]}"
  say "${CANDIDATES[0]}: $line"
fi
if [ -z "$PY" ]; then
  say "no CUDA: none of ${CANDIDATES[*]:-python3} has a torch that sees a CUDA GPU${GPU_SEEN:+ (nvidia-smi sees one: install a CUDA build of torch, e.g. pip install torch==2.13.0 from PyPI)}; nothing run"
  exit 3
fi
if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
  SITE="$(mktemp -d /tmp/gpu_check_site.XXXXXX)"
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl; then
    export PYTHONPATH="$PYTHONPATH:$SITE"; say "installed $(ls .whl/*.whl | wc -l) wheel(s) from .whl/ into $SITE"
  else
    say "could not install the wheels in .whl/: going on without them"
  fi
fi
"$PY" - <<'PY' || { say "attnsae does not import with $PY (above): nothing run"; exit 3; }
import importlib.util, sys, torch
import attnsae.models, attnsae.sae  # noqa: F401 (what the benchmarks need)
have = {m: importlib.util.find_spec(m) is not None for m in ("transformers", "pytest", "sae_lens", "transformer_lens")}
print(f"gpu_check: python {sys.version.split()[0]} at {sys.executable}; torch {torch.__version__} (CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}); " + ", ".join(f"{m} {'yes' if ok else 'MISSING'}" for m, ok in have.items()))
PY

STATUS=()
step() {  # step NAME SECONDS command...: run under a timeout, record how it ended, never abort the script
  local name="$1" limit="$2"; shift 2
  echo; echo "== $name (timeout ${limit} s) =="
  local t=$SECONDS rc
  timeout -k 10 "$limit" "$@"; rc=$?
  local took=$((SECONDS - t)) verdict
  case "$rc" in
    0) verdict="ok" ;;
    124|137) verdict="TIMED OUT after ${limit} s" ;;
    *) verdict="failed (exit $rc)" ;;
  esac
  if [ "$name" = "pytest -m cuda" ] && [ "$rc" = 5 ]; then verdict="no tests marked cuda (pytest exit 5)"; fi
  STATUS+=("$name: $verdict, ${took} s")
}

# ---- 2. the CUDA tests
if "$PY" -c "import pytest" >/dev/null 2>&1; then
  step "pytest -m cuda" 90 "$PY" -m pytest -q -m cuda tests -p no:cacheprovider --tb=short -rfE \
    -W ignore::pytest.PytestUnknownMarkWarning
else
  STATUS+=("pytest -m cuda: SKIPPED, pytest is not installed for $PY")
fi

# ---- 3. training step
step "bench_train --device $DEV" 180 "$PY" benchmarks/bench_train.py --device "$DEV" --d-in 768 --d-sae 24576 --B 4096 \
  ${SIZE[@]+"${SIZE[@]}"}
step "bench_train, as the Trainer runs it" 45 "$PY" benchmarks/bench_train.py --device "$DEV" --d-in 768 --d-sae 24576 \
  --B 4096 --impls ours-sparse-l1 ours-sparse-topk --dtypes bfloat16 --states warm --batch-from host --trainer-syncs \
  ${SIZE[@]+"${SIZE[@]}"}

# ---- 4. harvest forward
step "bench_harvest --device $DEV" 135 "$PY" benchmarks/bench_harvest.py --device "$DEV" --batch 256 --ctx 128 \
  ${SIZE[@]+"${SIZE[@]}"}

# ---- 5. many SAEs from one stream vs one at a time
step "bench_many --device $DEV" 90 "$PY" benchmarks/bench_many.py --device "$DEV" ${SIZE[@]+"${SIZE[@]}"}

echo; echo "== summary ($((SECONDS - T0)) s in all) =="
FAILED=0
for s in "${STATUS[@]}"; do
  echo "  $s"
  case "$s" in *": ok,"*|*"no tests marked cuda"*) ;; *) FAILED=1 ;; esac
done
exit $FAILED
