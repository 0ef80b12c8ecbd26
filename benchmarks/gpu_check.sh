#!/usr/bin/env bash
# The GPU check: training steps, sliding-window extraction (bf16 vs fp32) and the whole-brain
# ridge (GPU vs CPU) with base-size random-init wav2vec2 and Whisper-base, one table, under
# 8 minutes on one GPU. Run from anywhere on a machine with a CUDA GPU:
#
#   bash benchmarks/gpu_check.sh [--steps 50 ...]      (flags: python benchmarks/gpu_check.py -h)
#
# Needs a stock CUDA PyTorch environment (torch, transformers, numpy, scipy, h5py, tqdm);
# soundfile and soxr, which data_utils imports, are installed from benchmarks/wheels/ when they
# are missing (fill it where there is network: pip download soundfile soxr cffi pycparser -d
# benchmarks/wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import soundfile, soxr" 2>/dev/null; then
    if [ ! -d benchmarks/wheels ]; then
        echo "gpu_check: $PYTHON lacks soundfile/soxr and benchmarks/wheels/ is missing; run" \
             "pip download soundfile soxr cffi pycparser -d benchmarks/wheels where there is" \
             "network, or set PYTHON to an environment that has them" >&2
        exit 1
    fi
    "$PYTHON" -m pip install --quiet --no-index --find-links benchmarks/wheels soundfile soxr
fi
exec timeout 480 "$PYTHON" benchmarks/gpu_check.py "$@"
