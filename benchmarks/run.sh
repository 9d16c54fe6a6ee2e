#!/usr/bin/env bash
# Benchmarks against the peers (TransformerLens, SAELens), in their own venv (.venv-peers, from
# scripts/setup_peers.sh) so the peers never touch .venv:
#   bash benchmarks/run.sh [--quick] [--device auto|cpu|cuda[:N]]     (make bench)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
ARGS=()
QUICK=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) ARGS+=(--quick); QUICK=(--quick) ;;
    --device) [ $# -ge 2 ] || { echo "run.sh: --device needs a value" >&2; exit 2; }; ARGS+=(--device "$2"); shift ;;
    --device=*) ARGS+=(--device "${1#--device=}") ;;
    *) echo "usage: bash benchmarks/run.sh [--quick] [--device auto|cpu|cuda[:N]]" >&2; exit 2 ;;
  esac
  shift
done
bash scripts/setup_peers.sh
VENV="$ROOT/.venv-peers"

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
echo
echo "== scale-out under torchrun: 1 vs 2 processes (harvest, distributed modules, data parallel) =="
"$VENV/bin/python" benchmarks/bench_distributed.py ${ARGS[@]+"${ARGS[@]}"}
echo
echo "== the circuit explorer: one RDFA step with an SAE on every SmolLM2 layer; 50 concurrent clients =="
# the project's own venv: the real model comes with it (scripts/setup.sh), no peer is needed
"$ROOT/.venv/bin/python" benchmarks/bench_explorer.py ${QUICK[@]+"${QUICK[@]}"}
