#!/usr/bin/env bash
# Run here, before the GPU measurements: downloads into .whl/ the wheels that a GPU machine's image lacks,
# at the versions installed in .venv here, built for that machine's Python (PYVER, default 3.12).
#
# The image already holds torch, torchvision, transformers, peft, accelerate, safetensors, timm,
# scikit-image, tensorboard, rich, pillow and numpy (.library/device/KINDS.md). What `pip install .` adds to
# it (pip install --dry-run --report on a copy of the image's package set, 2026-11-23) is the list below.
# The wheels travel with `carry: [".whl"]`; bench/gpu_bench.sh installs them there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${PYVER:-3.12}
VENV_PY=${VENV_PY:-.venv/bin/python}
NAMES=(diffusers importlib_metadata lazy-importer open_clip_torch ftfy wcwidth pydantic pydantic_core annotated-types
       typing-inspection watchdog google-crc32c optuna alembic sqlalchemy mako colorlog)
mkdir -p .whl
grep -qs '^/.whl/$' .git/info/exclude 2>/dev/null || grep -qs '^\.whl/$' .gitignore || echo /.whl/ >> .git/info/exclude
rm -f .whl/*.whl
for name in "${NAMES[@]}"; do
  version=$("$VENV_PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$name==$version"
done
ls .whl
du -sh .whl
