#!/usr/bin/env bash
# Runs on the GPU machine (see models/README.md): trains the tokenizer and both models, checks rill against
# transformers on the exported weights, and packs everything into $OUT in pieces small enough to come back.
#   carried: .device/rill-tiny (corpus.jsonl.gz or .xz from build_corpus.py), .device/bin (rill + its shared
#   libraries)
#   args: extra arguments for train.py (e.g. --steps 20 for a dry run)
set -uo pipefail
cd "$(dirname "$0")/../.."
work=/tmp/rill-tiny-run
rm -rf "$work" && mkdir -p "$work"
export PYTHONUNBUFFERED=1 LD_LIBRARY_PATH="$PWD/.device/bin/lib:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$work/device.txt"
python3 -c "import torch, transformers, tokenizers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'tokenizers', tokenizers.__version__)" | tee -a "$work/device.txt"
corpus=$(ls .device/rill-tiny/corpus.jsonl.* | head -1)
python3 tools/rill_tiny/train.py --corpus "$corpus" --out "$work" "$@" 2>&1 | tee "$work/train.log"
for m in rill-tiny rill-tiny-draft; do
  python3 tools/rill_tiny/check_rill.py .device/bin/rill "$work/$m" "$work/$m-reference.safetensors" 2>&1 | tee -a "$work/check.jsonl"
done
.device/bin/rill generate --model "$work/rill-tiny" --prompt "Once upon a time" -n 80 --temperature 0 2>&1 | tee "$work/rill-sample.txt"
tar -C "$work" -cf "$work.tar" --exclude='*.tar' .
split -b 15M -d "$work.tar" "$OUT/rill-tiny.tar.part"
cp "$work/report.json" "$OUT/" 2>/dev/null
ls -la "$OUT"
