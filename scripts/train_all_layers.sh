#!/usr/bin/env bash
# One small TopK SAE per layer's attn.hook_z (for IOI splicing and feature families across layers).
# One harvest pass stores all layers; each layer then trains from the shared store. Re-running
# resumes: the harvest continues, `attnsae train` skips finished layers and resumes a killed one from its checkpoint.
# Usage: [MODEL=smollm2-135m] [LAYERS="18 17"] (trained first) scripts/train_all_layers.sh [OUT=runs/layers] [WINDOWS=3200] [STEPS=800]
set -euo pipefail
OUT=${1:-runs/layers}; WINDOWS=${2:-3200}; STEPS=${3:-800}; MODEL=${MODEL:-smollm2-135m}
ATTNSAE=${ATTNSAE:-attnsae}
N_LAYERS=$($ATTNSAE hooks --model "$MODEL" --layer 0 | sed -n '1s/.* \([0-9]*\) layers.*/\1/p')  # sed reads it all: no broken pipe
hooks=(); for l in $(seq 0 $((N_LAYERS - 1))); do hooks+=(--hook "blocks.$l.attn.hook_z"); done
$ATTNSAE harvest "${hooks[@]}" --model "$MODEL" --windows "$WINDOWS" --out "$OUT/store"
for l in ${LAYERS:-} $(seq 0 $((N_LAYERS - 1))); do
  $ATTNSAE train --store "$OUT/store" --hook "blocks.$l.attn.hook_z" --recipe topk --k 32 --expansion 4 \
    --steps "$STEPS" --batch-size 2048 --out "$OUT/L$l"
done
