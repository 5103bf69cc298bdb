#!/usr/bin/env bash
# The one install path of mae-hub, shared by every place that installs it:
#   make serve / make venv:                scripts/install.sh .venv -e '.[onnx]'
#   make test / CI (.ci/run), on top:      scripts/install.sh .venv -e '.[dev]'
#   the Dockerfile (from the built wheel): scripts/install.sh /opt/mae /wheels/mae_hub-*.whl
#
# It creates VENV when missing, then installs the exact torch pins first and the package
# with the same pins, so pip never swaps torch for another build while resolving. pip's own
# output stays on (the torch wheels are large: a silent minute or more looks like a hang).
#
# Environment:
#   PYTHON           interpreter that creates VENV (default: python3.11, else python3)
#   TORCH_INDEX_URL  where torch/torchvision come from, e.g. https://download.pytorch.org/whl/cpu
#                    for the small CPU-only build (default: PyPI, the CUDA build on x86_64)
#   EXTRAS           extras for the wheels given, e.g. onnx (the CPU image's onnxruntime)
#   PIP_NO_CACHE_DIR and the other PIP_* variables are honoured as usual.
set -euo pipefail

# Exact pins for CI, containers and fresh machines; the package itself asks only for a range.
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)

if [[ $# -lt 2 ]]; then
  echo "usage: $0 VENV PACKAGE_SPEC..." >&2
  echo "  e.g. $0 .venv -e '.[dev]'   or   $0 /opt/mae dist/mae_hub-0.1.0-py3-none-any.whl" >&2
  exit 2
fi
venv=$1
shift

if [[ ! -x "$venv/bin/python" ]]; then
  python=${PYTHON:-$(command -v python3.11 || command -v python3)}
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install --quiet --upgrade pip
if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
  echo "install.sh: ${TORCH_PINS[*]} from $TORCH_INDEX_URL into $venv"
  "${pip[@]}" install --index-url "$TORCH_INDEX_URL" "${TORCH_PINS[@]}"
else
  echo "install.sh: ${TORCH_PINS[*]} into $venv (on x86_64 Linux the CUDA build, several GB;"
  echo "  TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu installs the CPU-only build)"
  "${pip[@]}" install "${TORCH_PINS[@]}"
fi
specs=()
for spec in "$@"; do
  [[ -n "${EXTRAS:-}" && "$spec" == *.whl ]] && spec="$spec[$EXTRAS]"
  specs+=("$spec")
done
echo "install.sh: ${specs[*]} into $venv"
"${pip[@]}" install "${specs[@]}" "${TORCH_PINS[@]}"
echo "installed into $venv: $("$venv/bin/python" -c 'import importlib.metadata as m, torch; print("mae-hub", m.version("mae-hub"), "torch", torch.__version__)')"
