#!/usr/bin/env bash
# Benchmarks against the peers (TransformerLens, SAELens), in their own venv so the peers never
# touch .venv:   bash benchmarks/run.sh [--quick] [--device auto|cpu|cuda[:N]]     (make bench)
#   .venv-bench: torch==2.13.0 first (any other torch pulls GBs of CUDA), then the peers at versions
#   that pip resolves without touching torch, then attnsae itself (editable).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) ARGS+=(--quick) ;;
    --device) [ $# -ge 2 ] || { echo "run.sh: --device needs a value" >&2; exit 2; }; ARGS+=(--device "$2"); shift ;;
    --device=*) ARGS+=(--device "${1#--device=}") ;;
    *) echo "usage: bash benchmarks/run.sh [--quick] [--device auto|cpu|cuda[:N]]" >&2; exit 2 ;;
  esac
  shift
done
VENV="$ROOT/.venv-bench"
TORCH=2.13.0
SL=sae_lens==6.54.12           # newest; it needs transformer-lens<4. pip install --dry-run of both
TL=transformer_lens==3.9.0     # resolves without touching torch 2.13.0
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
has() { "$VENV/bin/python" -c "$1" >/dev/null 2>&1; }

has "import torch; assert torch.__version__.startswith('$TORCH')" || pip install "torch==$TORCH"
has "from importlib.metadata import version as v; assert v('transformer_lens') == '${TL#*==}' and v('sae_lens') == '${SL#*==}'" \
  || pip install "$TL" "$SL"
(cd / && has "import attnsae") || pip install -e "$ROOT"   # from /: the checkout itself is no install
"$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('$TORCH'), f'torch became {torch.__version__}'"

for lib in /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4; do
  if [ -e "$lib" ]; then export LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}"; break; fi
done

echo "== harvest: hook_z tokens/s, attnsae vs TransformerLens =="
"$VENV/bin/python" benchmarks/bench_harvest.py ${ARGS[@]+"${ARGS[@]}"}
echo
echo "== SAE training step: acts/s, attnsae (dense, sparse) vs SAELens =="
"$VENV/bin/python" benchmarks/bench_train.py ${ARGS[@]+"${ARGS[@]}"}
echo
echo "== many SAEs from one stream vs one at a time =="
"$VENV/bin/python" benchmarks/bench_many.py ${ARGS[@]+"${ARGS[@]}"}
