#!/usr/bin/env bash
# The GPU check in one run: on a machine with one CUDA GPU and this checkout, run the
# gpu-marked tests and every bench on CUDA, each step bounded in time, and write the
# figures into bench/results/gpu-*.{json,md}. About 10 minutes on an H100/H200 (the longest
# steps: the MAE-B/16 training bench with and without torch.compile, ~2 min each, the
# serving bench, ~1.5 min, the gpu-marked tests and the fine-tuning bench, ~1 min each);
# seconds on a machine without a GPU, where every GPU step says it is skipped and the
# script still ends with status 0.
#
#   bash bench/gpu.sh                       # with .venv/bin/python, or:
#   PYTHON=python3 bash bench/gpu.sh        # an environment that already has torch & co.
#
# Nothing is downloaded: the benches build random-init models; the serving bench serves
# one from a temporary folder. The machine needs torch, timm, transformers, scikit-image,
# pytest and httpx (the lent device machines have them), the service's web stack and the
# CIFAR-10 archive the tests read, which a lent machine lacks and cannot download:
# `bash bench/device-prep.sh`, where pip works, puts the wheels in .whl/ and the archive in
# shared/data/, and this script installs the wheels (into /tmp, on PYTHONPATH) when .whl/
# is here. On a lent machine, carry .whl and shared, and bring the results back in
# GPU_ARCHIVE (below). GPU_STEPS runs only the steps it names (names or shell patterns:
# tests, pretrain-b16, pretrain-b16-compile, finetune-b16, features-b16-batch{1,32,256},
# serve-b16, decode, decode-2x), to split the check over calls of at most 10 minutes each.
# GPU_ARCHIVE=FILE.tgz packs every step's output into one file as each step ends, so a
# call stopped at its limit still brings back what finished (a lent machine returns at
# most 8 files):
#   GPU_STEPS="tests pretrain*" GPU_ARCHIVE="$OUT/gpu-1.tgz" PYTHON=python3 bash bench/gpu.sh
#   GPU_STEPS="finetune* features* serve* decode*" GPU_ARCHIVE="$OUT/gpu-2.tgz" PYTHON=python3 bash bench/gpu.sh
# (about 5.5 and 4.5 minutes on an H100/H200).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-.venv/bin/python}
OUT=bench/results
mkdir -p "$OUT"
status=0

step() {  # step NAME SECONDS COMMAND... : run one bounded step, its output kept in $OUT
  local name=$1 seconds=$2 word chosen=${GPU_STEPS:+no}
  shift 2
  for word in ${GPU_STEPS:-}; do
    # shellcheck disable=SC2053  # the word is a pattern
    [[ $name == $word ]] && chosen=
  done
  if [ -n "$chosen" ]; then
    echo "-- $name: not in GPU_STEPS"
    return
  fi
  echo "== $name (at most ${seconds}s)"
  local t0=$SECONDS
  if timeout "$seconds" "$@" > "$OUT/gpu-$name.md" 2>&1; then
    tail -n 12 "$OUT/gpu-$name.md"
  else
    echo "!! $name failed or ran out of time ($?); see $OUT/gpu-$name.md"
    tail -n 20 "$OUT/gpu-$name.md"
    status=1
  fi
  echo "   ($((SECONDS - t0)) s)"
  if [ -n "${GPU_ARCHIVE:-}" ]; then  # what has finished so far, in one file
    tar czf "$GPU_ARCHIVE.part" -C "$OUT" $(cd "$OUT" && ls gpu-*) && mv "$GPU_ARCHIVE.part" "$GPU_ARCHIVE"
  fi
}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "no CUDA device here (or no torch for $PY): GPU steps skipped"
  "$PY" -c "import torch; print('torch', torch.__version__)" 2>/dev/null || echo "no torch for $PY"
  exit 0
fi
"$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(p.name, round(p.total_memory / 2**30), 'GiB, torch', torch.__version__)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || true

if compgen -G ".whl/*.whl" > /dev/null; then
  site=${TMPDIR:-/tmp}/mae-hub-site
  if "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl; then
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    echo "installed $(ls .whl/*.whl | wc -l) carried wheels into $site"
  else
    echo "!! the carried wheels in .whl/ did not install; the service steps may fail"
  fi
fi

missing=$("$PY" -c "
import importlib.util as u
names = 'fastapi uvicorn httptools pydantic_settings orjson multipart fastapi_offline braceexpand timm transformers skimage pytest httpx'
print(' '.join(n for n in names.split() if u.find_spec(n) is None))")
if [ -n "$missing" ]; then
  echo "!! missing for $PY: $missing (bash bench/device-prep.sh where pip works, carry .whl)"
  status=1
fi

# The gpu-marked tests, from the files that hold them only: collecting the whole suite
# would import test-only packages (openai, playwright, ...) a device image lacks.
mapfile -t gpu_tests < <(grep -rlE --include='test_*.py' 'mark\.gpu\b' tests | sort)
step tests 240 "$PY" -m pytest -q -m gpu -p no:cacheprovider "${gpu_tests[@]}"
# Training: MAE-B/16 at 224, bf16 autocast, against transformers' ViTMAEForPreTraining,
# interleaved; MFU against the measured bf16 matmul peak. Batch 256 fits an 80 GB card.
step pretrain-b16 240 "$PY" bench/pretrain.py --variant mae_vit_base_patch16 --batch 256 \
  --steps 10 --warmup 3 --device cuda --adamw default,fused --json "$OUT/gpu-pretrain-b16.json"
step pretrain-b16-compile 300 "$PY" bench/pretrain.py --variant mae_vit_base_patch16 \
  --batch 256 --steps 10 --warmup 3 --device cuda --compile --json "$OUT/gpu-pretrain-b16-compile.json"
# Fine-tuning: a ViT-B/16 classifier at 224, bf16 autocast, mae finetune's step against the
# official repo's (timm) and transformers' ViTForImageClassification, interleaved.
step finetune-b16 150 "$PY" bench/finetune.py --variant mae_vit_base_patch16 --classes 1000 \
  --batch 128 --steps 10 --warmup 3 --device cuda --json "$OUT/gpu-finetune-b16.json"
# Inference: ViT-B/16 features against timm and transformers at batch 1, 32 and 256.
for b in 1 32 256; do
  step "features-b16-batch$b" 120 "$PY" bench/features.py --variant mae_vit_base_patch16 \
    --batch "$b" --steps 20 --warmup 5 --device cuda --json "$OUT/gpu-features-b16-batch$b.json"
done
# Serving: a real mae serve on the GPU against the bare encoder (img/s ratio is the figure
# there); wrk when installed, else the httpx client.
step serve-b16 300 "$PY" bench/serve.py --variant mae_vit_base_patch16 --img-size 224 \
  --device cuda --concurrency 1,16,64 --rounds 3 --max-batch-images 128 \
  --json "$OUT/gpu-serve-b16.json"
# Decoding: the server's Pillow path against torchvision's batched decode_jpeg on the GPU
# (nvJPEG), photos as sent and at 2x (about 1000 px); a GPU decode setting is built only if
# this shows it ahead.
step decode 120 "$PY" bench/decode.py --device cuda --batch 1,16,64,256 --rounds 5 \
  --json "$OUT/gpu-decode.json"
step decode-2x 120 "$PY" bench/decode.py --device cuda --batch 16,64,256 --rounds 5 \
  --upscale 2 --json "$OUT/gpu-decode-2x.json"
exit $status
