#!/usr/bin/env bash
# Builds .gpu_carry/: what scripts/gpu_check.sh needs on a GPU machine that has PyTorch but
# cannot reach a package registry. Everything travels in one folder under the device tool's
# 64 MiB limit: wheels of the packages the GPU image lacks (this project runs from the working
# tree, which travels anyway, so the check always runs the code as it is now), the MiniLM
# tokenizer files without its weights (the RN50 step uses a random BERT-base stand-in), and
# the data benchmark's shards (built here: the GPU image has no pydicom-data).
#
#   bash scripts/gpu_carry.sh                        # for the GPU image's Python 3.12
#   PYTHON=.venv/bin/python bash scripts/gpu_carry.sh --python-version 3.11   # the CPU dry run here
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
PYTHON_VERSION=3.12
DEST="$REPO/.gpu_carry"
DATA_SAMPLES=640  # gpu_check's default --data-samples: the two must agree, or the shards are rebuilt there
while [ $# -gt 0 ]; do
    case "$1" in
        --python-version) PYTHON_VERSION="$2"; shift 2 ;;
        --dest) DEST="$2"; shift 2 ;;
        --data-samples) DATA_SAMPLES="$2"; shift 2 ;;
        *) echo "gpu_carry.sh: unknown argument '$1' (known: --python-version X.Y, --dest DIR, --data-samples N)" >&2; exit 2 ;;
    esac
done

# the packages the GPU image lacks, at the versions installed here (the ones the tests pass with)
PACKAGES=(open_clip_torch webdataset braceexpand ftfy wcwidth kornia kornia_rs)
pins=()
for package in "${PACKAGES[@]}"; do
    version="$("$PYTHON" -c "import importlib.metadata as m; print(m.version('$package'))")"
    pins+=("$package==$version")
done

rm -rf "$DEST/wheels" && mkdir -p "$DEST/wheels"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST/wheels" "${pins[@]}"

# the tokenizer of the RN50 stand-in and of the data benchmark: MiniLM's files without its weights
minilm="$("$PYTHON" -c "import openclip_unimlip.recipes.text_models as t; print(t.resolve_text_model('sentence-transformers/all-MiniLM-L6-v2'))")"
rm -rf "$DEST/minilm-tokenizer" && mkdir -p "$DEST/minilm-tokenizer"
for f in config.json tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt; do
    cp "$minilm/$f" "$DEST/minilm-tokenizer/"
done

# tools/ is the checkout's (not installed): found through PYTHONPATH, as --dest may be relative to here
HF_HUB_OFFLINE=1 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m tools.gpu_check --build-data-only --device cpu --out "$DEST" \
    --data-root "$DEST/data" --data-samples "$DATA_SAMPLES"
du -sh "$DEST"
