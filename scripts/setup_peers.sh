#!/usr/bin/env bash
# The peers attnsae is checked against (SAELens, TransformerLens), in their own venv so they never
# touch .venv:   bash scripts/setup_peers.sh      (make test and make bench call it)
#   .venv-peers: torch==2.13.0 first (any other torch pulls GBs of CUDA), then the peers at versions
#   that pip resolves without touching torch, then attnsae itself (editable), pytest and SAEDashboard (no deps).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
VENV="$ROOT/.venv-peers"
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
has "import pytest" || pip install "pytest>=7"
# SAEDashboard, only for its Neuronpedia batch classes (plain Python): its own dependencies would replace torch
has "from importlib.metadata import version as v; assert v('sae-dashboard') == '0.8.0'" || pip install --no-deps sae-dashboard==0.8.0
"$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('$TORCH'), f'torch became {torch.__version__}'"
