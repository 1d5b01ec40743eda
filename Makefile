# pipe: the two commands a newcomer needs are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
ROOT := $(CURDIR)
export PATH := $(ROOT)/.venv/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1
PIPE := target/release/pipe
INFER_ONLY := target/release/pipe-infer
# Where make setup finds the CIFAR-10 tarballs and the ants-and-bees photos (scripts/setup.sh reads it too).
export SHARED_DATA ?= $(ROOT)/../shared/data

.PHONY: setup build infer-only demo demo-photos test bench bench-int8 results loadtest keras-venv fmt clippy check \
	need-cifar10 need-photos

## setup: virtualenv (torch, onnxruntime), release build, ImageNet VGG16 weights; CIFAR-10 and the
## ants-and-bees photos when $(SHARED_DATA) has them (idempotent; succeeds without them)
setup:
	bash scripts/setup.sh

## need-cifar10: stops at once, before the set-up, when CIFAR-10 is neither extracted nor extractable;
## $(HAVE_CIFAR10), the first line of the targets that use it: stops when it is still missing
HAVE_CIFAR10 = @[ -f data/cifar10/.complete ] || { echo "error: make $@ needs CIFAR-10, and" \
  "data/cifar10/.complete is missing; put CIFAR-10 in data/cifar10/{train,test}/<class>/ and touch" \
  "data/cifar10/.complete (docs/GUIDE.md, 'Data and weights')" >&2; exit 1; }
need-cifar10:
	@if [ ! -f data/cifar10/.complete ] && [ ! -d "$(SHARED_DATA)/cifar10-jpeg" ]; then \
	  echo "error: make $(MAKECMDGOALS) needs CIFAR-10, and data/cifar10/.complete is missing (nor is there" \
	    "$(SHARED_DATA)/cifar10-jpeg to extract it from). Put CIFAR-10 in data/cifar10/{train,test}/<class>/" \
	    "and touch data/cifar10/.complete (docs/GUIDE.md, 'Data and weights'). Your own photos need no" \
	    "CIFAR-10: see the README; cargo test --release --test readme runs its own-photos session." >&2; \
	  exit 1; \
	fi
need-photos:
	@if [ ! -f data/hymenoptera/.complete ] && [ ! -d data/hymenoptera/val ] && [ ! -d "$(SHARED_DATA)/hymenoptera" ]; then \
	  echo "error: make demo-photos needs the ants-and-bees photos in data/hymenoptera/{train,val}/<class>/" \
	    "(make setup extracts them from $(SHARED_DATA)/hymenoptera/hymenoptera.tar.gz)" >&2; \
	  exit 1; \
	fi

build:
	cargo build --release

## demo: the main job end to end: train (seed recipe), export ONNX, classify the 10,000 test images with tract and ort
demo: need-cifar10 setup
	$(HAVE_CIFAR10)
	$(PIPE) train
	$(PIPE) export onnx/model.onnx
	@echo; echo "== pipe infer --backend tract data/cifar10/test"
	$(PIPE) infer --backend tract data/cifar10/test > onnx/infer-tract.tsv
	@echo; echo "== pipe infer --backend ort data/cifar10/test"
	$(PIPE) infer --backend ort data/cifar10/test > onnx/infer-ort.tsv
	@echo; echo "== tract vs ort: labels that differ (per-image lines in onnx/infer-{tract,ort}.tsv)"
	@diff <(cut -f1,2 onnx/infer-tract.tsv) <(cut -f1,2 onnx/infer-ort.tsv) && echo "none: both backends agree on every image ($$(wc -l < onnx/infer-tract.tsv) images)"
	@echo; echo "== pipe serve: classify three images over HTTP (POST /v1/classify), then stop the server"
	@$(PIPE) serve --backend ort --port 0 --log-level warn > onnx/serve.out & pid=$$!; \
	for i in $$(seq 300); do grep -q "listening on" onnx/serve.out 2>/dev/null && break; sleep 0.1; done; \
	addr=$$(sed -n 's|.*listening on http://\([^ ]*\).*|\1|p' onnx/serve.out); cat onnx/serve.out; ok=1; \
	for f in data/cifar10/test/cat/0001.jpg data/cifar10/test/ship/0001.jpg data/cifar10/test/truck/0001.jpg; do \
	  echo "$$ curl --data-binary @$$f http://$$addr/v1/classify?top_k=2"; \
	  curl -sS --fail-with-body --data-binary @$$f "http://$$addr/v1/classify?top_k=2" || ok=0; echo; \
	done; \
	kill -TERM $$pid; wait $$pid && [ $$ok = 1 ]

## demo-photos: your own photos end to end, on the ants-and-bees photos (train/ + val/): train with
## --preset photos, export ONNX, classify the val/ photos with tract and ort, check both agree. Exit
## code 3 (some image files skipped, each named) does not stop it.
PHOTOS := data/hymenoptera
demo-photos: need-photos setup
	$(PIPE) train --data $(PHOTOS) --preset photos || [ $$? -eq 3 ]
	$(PIPE) export onnx/photos.onnx
	@echo; echo "== pipe infer --backend tract $(PHOTOS)/val"
	$(PIPE) infer --model onnx/photos.onnx --backend tract $(PHOTOS)/val > onnx/photos-tract.tsv || [ $$? -eq 3 ]
	@echo; echo "== pipe infer --backend ort $(PHOTOS)/val"
	$(PIPE) infer --model onnx/photos.onnx --backend ort $(PHOTOS)/val > onnx/photos-ort.tsv || [ $$? -eq 3 ]
	@echo; echo "== tract vs ort: labels that differ (per-image lines in onnx/photos-{tract,ort}.tsv)"
	@diff <(cut -f1,2 onnx/photos-tract.tsv) <(cut -f1,2 onnx/photos-ort.tsv) && echo "none: both backends agree on every photo ($$(wc -l < onnx/photos-tract.tsv) photos)"

## infer-only: a pipe without libtorch (infer, serve, inspect, export, weights import): tract + ort + serve
infer-only:
	cargo build --release --no-default-features --features ort,serve
	cp target/release/pipe $(INFER_ONLY)
	cargo build --release
	@if readelf -d $(INFER_ONLY) | grep '(NEEDED)' | grep -E 'torch|c10'; then echo "error: $(INFER_ONLY) links libtorch" >&2; exit 1; fi
	@echo "$(INFER_ONLY): no libtorch linked, $$(du -h $(INFER_ONLY) | cut -f1)"

## test: set-up; formatting and clippy with -D warnings (which enforces the program's no-unwrap/expect
## rule); the libtorch-free build; the whole test suite (release profile, reusing the release build); then
## the tests a plain `cargo test` ignores because they need the libtorch-free build, or a GPU where
## nvidia-smi sees one. tests/README.md says what runs where.
LIBTORCH_FREE_TEST := libtorch_free_build_links_no_libtorch_and_gives_the_same_results
test: need-cifar10 setup
	$(HAVE_CIFAR10)
	cargo fmt --all -- --check
	cargo clippy --release --all-targets -- -D warnings
	$(MAKE) infer-only
	cargo test --release
	set -o pipefail; \
	  PIPE_INFER_ONLY_BIN=$(ROOT)/$(INFER_ONLY) cargo test --release --test e2e -- --ignored --exact $(LIBTORCH_FREE_TEST) \
	  | tee target/libtorch-free-test.log && \
	  grep -q '^test result: ok. 1 passed' target/libtorch-free-test.log || \
	  { echo "error: $(LIBTORCH_FREE_TEST) did not run and pass (renamed?)" >&2; exit 1; }
	set -o pipefail; if nvidia-smi > /dev/null 2>&1; then \
	  cargo test --release -- --ignored _when_a_gpu_is_present | tee target/gpu-tests.log && \
	  grep -q '^test result: ok. [1-9][0-9]* passed' target/gpu-tests.log || \
	  { echo "error: no _when_a_gpu_is_present test ran and passed" >&2; exit 1; }; fi

## bench: criterion benches, the PyTorch/onnxruntime references (benches/reference/) and end-to-end
## times and the Keras seed job in one run, then one table (also target/bench/summary.json). On an idle
## 2-core machine about 30 minutes with AMX, about 65 without (docs/RESULTS.md), plus about 3 the first
## time to install TensorFlow.
BENCH_PY := $(ROOT)/.venv/bin/python
bench: need-cifar10 setup
	$(HAVE_CIFAR10)
	rm -rf target/criterion/extract target/criterion/infer target/criterion/decode target/criterion/head target/criterion/export target/bench/*.json
	mkdir -p target/bench
	cargo build --release
	@# pipe and PyTorch alternate twice (ABAB), so that a change of load on the shared cores hits both;
	@# the extract bench measures 32x32 at batch 128 and 224x224 at batch 32, PyTorch each in turn
	for i in 1 2; do \
	  cargo bench --bench extract && \
	  cp target/criterion/extract/tch_batch128/new/estimates.json target/bench/extract_tch_$$i.json && \
	  cp target/criterion/extract/tch_224_batch32/new/estimates.json target/bench/extract_tch224_$$i.json && \
	  $(BENCH_PY) benches/reference/torch_extract.py --out target/bench/reference_torch_$$i.json && \
	  $(BENCH_PY) benches/reference/torch_extract.py --size 224 --batch 32 \
	    --out target/bench/reference_torch224_$$i.json || exit 1; \
	done
	$(BENCH_PY) benches/reference/torch_extract.py --channels-last
	@# the same for inference: pipe's ort and tract, the onnxruntime Python loop, then pipe infer --backend
	@# ort on the 10,000 test JPEGs with the bench's model, twice (ABCABC)
	for i in 1 2; do \
	  cargo bench --bench infer && \
	  for b in ort_batch1 ort_batch256 tract_batch1 tract_batch256; do \
	    cp target/criterion/infer/$$b/new/estimates.json target/bench/infer_$${b}_$$i.json || exit 1; \
	  done && \
	  $(BENCH_PY) benches/reference/ort_infer.py --out target/bench/reference_ort_$$i.json && \
	  $(BENCH_PY) benches/e2e_infer.py --out target/bench/e2e_infer_$$i.json || exit 1; \
	done
	@# one fine-tuning epoch (2,560 images, the finetune preset's settings) in pipe, then in PyTorch, twice (ABAB)
	for i in 1 2; do \
	  cargo bench --bench finetune -- --out target/bench/finetune_pipe_$$i.json && \
	  $(BENCH_PY) benches/reference/torch_finetune.py --out target/bench/reference_finetune_$$i.json || exit 1; \
	done
	@# one photo fine-tuning epoch (the 245 ants-and-bees training photos, --preset photos --unfreeze 13
	@# --augment) in pipe, then in PyTorch, twice (ABAB)
	for i in 1 2; do \
	  cargo bench --bench finetune -- --photos --out target/bench/photo_finetune_pipe_$$i.json && \
	  $(BENCH_PY) benches/reference/torch_finetune.py --photos --out target/bench/reference_photo_finetune_$$i.json || exit 1; \
	done
	cargo bench --bench decode
	cargo bench --bench head
	cargo bench --bench export
	$(BENCH_PY) benches/e2e.py
	$(BENCH_PY) benches/int8.py --fresh
	$(MAKE) keras-venv
	$(KERAS_PY) benches/reference/keras_seed.py
	$(BENCH_PY) benches/summary.py

## bench-int8: int8 against float32 and against onnxruntime's own quantizer (benches/int8.py): trains the
## CIFAR-10 seed run, the photos preset on the ants-and-bees photos and the full-data frozen run in
## target/bench/int8/ when missing, exports each float32 and int8, quantizes the float32 file with
## onnxruntime's quantize_static on the same calibration pixels, then accuracy and speed of the three,
## and tract against ort on the float32 files; exits non-zero below the goals. Part of make bench.
bench-int8: need-cifar10 need-photos setup
	$(HAVE_CIFAR10)
	cargo build --release
	$(BENCH_PY) benches/int8.py

## results: re-runs the recipes behind the README's accuracy figures (benches/results.py: the seed recipe,
## a PIL-decoding client on the 10,000 test JPEGs, the photos preset, the full-data frozen run) and checks
## each against its floor; exits non-zero on a miss. RESULTS_ARGS passes options: --finetune (the long
## fine-tuning preset), --floor NAME=VALUE, --only NAME,... About 12 minutes; not part of make test.
results: need-cifar10 need-photos setup
	$(HAVE_CIFAR10)
	cargo build --release
	$(BENCH_PY) benches/results.py $(RESULTS_ARGS)

## loadtest: pipe serve under 64 concurrent clients (10,000 single-image binary requests) against pipe infer
## offline, same model and backend (LOADTEST_BACKEND=ort|tract), in one run; table and target/loadtest/summary-*.json.
## Uses onnx/model.onnx (make demo), else trains and exports a small model into target/loadtest/ (inference
## costs the same whatever the training).
## LOADTEST_PHOTOS=1: the same with photos: 32 concurrent clients post the ants-and-bees photos of
## data/hymenoptera/val (real photos of any size; files pipe cannot decode are left out and counted) to
## /v1/classify, one photo per request, each photo once after one warm-up request per client, against pipe infer
## on the same photos with the same model; reports errors and the throughput ratio (targets: zero errors,
## >= 0.9x). Uses onnx/photos.onnx (make demo-photos), else trains and exports a small --preset photos model
## (384 pixels) into target/loadtest/; writes target/loadtest/summary-<backend>-photos.json.
## With tensors, the same requests also go over KServe v2 gRPC (target: gRPC >= 0.97x HTTP's throughput).
## With ort, deploy/check.py then checks the measured peak memory against the manifests' memory.
LOADTEST_BACKEND ?= ort
LOADTEST_PHOTOS ?= 0
LOADTEST_MODEL ?= $(if $(filter 1,$(LOADTEST_PHOTOS)),onnx/photos.onnx,onnx/model.onnx)
loadtest: build
	@if [ "$(LOADTEST_PHOTOS)" = 1 ]; then \
	  [ -d data/hymenoptera/val ] || { echo "error: LOADTEST_PHOTOS=1 needs the ants-and-bees photos in" \
	    "data/hymenoptera/{train,val}/<class>/ (make setup extracts them from $(SHARED_DATA)/hymenoptera)" >&2; exit 1; }; \
	  fallback=target/loadtest/photos.onnx; name=loadtest-photos; \
	  train="--data $(PHOTOS) --preset photos --epochs 1 --train-limit 64 --test-limit 32"; \
	else \
	  [ -f data/cifar10/.complete ] || { echo "error: make loadtest needs CIFAR-10, and data/cifar10/.complete" \
	    "is missing (docs/GUIDE.md, 'Data and weights'); LOADTEST_PHOTOS=1 uses the ants-and-bees photos" >&2; exit 1; }; \
	  fallback=target/loadtest/model.onnx; name=loadtest; \
	  train="--train-limit 300 --test-limit 100 --epochs 1"; \
	fi; \
	model=$(LOADTEST_MODEL); \
	if [ ! -f $$model ]; then \
	  model=$$fallback; \
	  if [ ! -f $$model ]; then \
	    echo "no $(LOADTEST_MODEL): training a small model for the load test"; \
	    rm -rf target/loadtest/runs/$$name; \
	    $(PIPE) train $$train --device cpu --no-cache --runs-dir target/loadtest/runs --name $$name; \
	    rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 3 ] || exit 1; \
	    $(PIPE) export $$model --run $$name --runs-dir target/loadtest/runs --verify-images 0 || exit 1; \
	  fi; \
	fi; \
	LOADTEST_PHOTOS=$(LOADTEST_PHOTOS) LOADTEST_MODEL=$$model LOADTEST_BACKEND=$(LOADTEST_BACKEND) \
	  cargo bench --bench loadtest
	@# The server's measured peak memory against the Kubernetes manifests' (they use ort).
	@if [ "$(LOADTEST_BACKEND)" = ort ]; then \
	  python deploy/check.py deploy --measured target/loadtest/summary-ort$(if $(filter 1,$(LOADTEST_PHOTOS)),-photos,).json; \
	fi

## keras-venv: TensorFlow + Keras for the Keras seed reference (benches/reference/keras_seed.py), in its
## own virtualenv so that the project's stays free of them (about 600 MB, installed once)
KERAS_VENV := $(ROOT)/target/keras-venv
KERAS_PY := $(KERAS_VENV)/bin/python
keras-venv: $(KERAS_VENV)/.installed
$(KERAS_VENV)/.installed: benches/reference/requirements-keras.txt
	python3 -m venv $(KERAS_VENV)
	$(KERAS_VENV)/bin/pip install --quiet --upgrade pip
	$(KERAS_VENV)/bin/pip install --quiet -r benches/reference/requirements-keras.txt
	touch $@

fmt:
	cargo fmt --all -- --check

clippy:
	cargo clippy --release --all-targets -- -D warnings

## check: the same as test (which runs fmt and clippy itself)
check: test
