#!/usr/bin/env bash
# What a lent GPU machine, which has no network, lacks for bench/gpu.sh; both git-ignored,
# both to name in the device call's carry:
#
# - .whl/: the service's web stack as wheels. The device image (Python 3.12) holds torch,
#   timm, transformers, scikit-image, pytest and httpx, but not FastAPI, Starlette,
#   pydantic (+ pydantic-settings), uvicorn with httptools, python-multipart, orjson,
#   fastapi-offline or braceexpand. Downloaded at the versions this checkout's venv runs,
#   with everything they need (about 5 MB), as CPython 3.12 manylinux x86_64 wheels;
#   gpu.sh installs them.
# - shared/data/cifar10.tar.gz: the archive the gpu-marked tests take real JPEGs from
#   (19 MB), copied from ../shared/data, which does not travel.
#
#   bash bench/device-prep.sh              # here, where pip reaches PyPI
#   # device calls, carry [".whl", "shared"]: see bench/gpu.sh's header (GPU_STEPS,
#   # GPU_ARCHIVE="$OUT/gpu-1.tgz", PYTHON=python3)
#
# DEVICE_PYTHON_VERSION (default 3.12) names another Python for the device.
set -euo pipefail
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-.venv/bin/python}
DEST=.whl
WANT=(fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv annotated-types
  typing-inspection uvicorn httptools python-multipart orjson fastapi-offline braceexpand)

specs=()
for name in "${WANT[@]}"; do
  version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name") || {
    echo "device-prep: $name is not installed for $PY (make dev first)" >&2
    exit 1
  }
  specs+=("$name==$version")
done

rm -rf "$DEST"
mkdir -p "$DEST"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"$PY" -m pip download --quiet --only-binary=:all: --implementation cp \
  --python-version "${DEVICE_PYTHON_VERSION:-3.12}" "${platforms[@]}" --dest "$DEST" "${specs[@]}" \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
count=$(find "$DEST" -name '*.whl' | wc -l)
echo "device-prep: $count wheels, $(du -sm "$DEST" | cut -f1) MB in $DEST (${specs[*]})"

archive=../shared/data/cifar10.tar.gz
if [ ! -f "$archive" ]; then
  echo "device-prep: $archive not found (the gpu-marked tests read it)" >&2
  exit 1
fi
mkdir -p shared/data
install -m 644 "$archive" shared/data/  # the shared copy is read-only
# The device call carries at most 64 MiB: the checkout's files, the wheels and the archive.
tracked=$(git ls-files -z | du -cb --files0-from=- 2>/dev/null | tail -n 1 | cut -f1)
size=$(( (tracked + $(du -sb "$DEST" shared | cut -f1 | paste -sd+ | bc)) >> 20 ))
echo "device-prep: shared/data/cifar10.tar.gz copied; about $size MiB would travel"
if [ "$size" -ge 64 ]; then
  echo "device-prep: that is over the device call's 64 MiB" >&2
  exit 1
fi
