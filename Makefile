# pipe: the two commands a newcomer needs are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
ROOT := $(CURDIR)
export PATH := $(ROOT)/.venv/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1
PIPE := target/release/pipe
INFER_ONLY := target/release/pipe-infer

.PHONY: setup build infer-only demo test bench fmt clippy check

## setup: virtualenv (torch, onnxruntime), release build, ImageNet VGG16 weights, CIFAR-10 (idempotent)
setup:
	bash scripts/setup.sh

build:
	cargo build --release

## demo: the main job end to end: train (seed recipe), export ONNX, classify the 10,000 test images with tract and ort
demo: setup
	$(PIPE) train
	$(PIPE) export onnx/model.onnx
	@echo; echo "== pipe infer --backend tract data/cifar10/test"
	$(PIPE) infer --backend tract data/cifar10/test > onnx/infer-tract.tsv
	@echo; echo "== pipe infer --backend ort data/cifar10/test"
	$(PIPE) infer --backend ort data/cifar10/test > onnx/infer-ort.tsv
	@echo; echo "== tract vs ort: labels that differ (per-image lines in onnx/infer-{tract,ort}.tsv)"
	@diff <(cut -f1,2 onnx/infer-tract.tsv) <(cut -f1,2 onnx/infer-ort.tsv) && echo "none: both backends agree on every image ($$(wc -l < onnx/infer-tract.tsv) images)"

## infer-only: a pipe without libtorch (infer, inspect, export, weights import): tract + ort only
infer-only:
	cargo build --release --no-default-features --features tract,ort
	cp target/release/pipe $(INFER_ONLY)
	cargo build --release
	@if readelf -d $(INFER_ONLY) | grep -E 'torch|c10'; then echo "error: $(INFER_ONLY) links libtorch" >&2; exit 1; fi
	@echo "$(INFER_ONLY): no libtorch linked, $$(du -h $(INFER_ONLY) | cut -f1)"

## test: set-up, the libtorch-free build, then the whole test suite (release profile, reusing the release build)
test: setup infer-only
	PIPE_INFER_ONLY_BIN=$(ROOT)/$(INFER_ONLY) cargo test --release

## bench: criterion benches, the PyTorch/onnxruntime references (benches/reference/) and end-to-end
## times in one run, then one table (also target/bench/summary.json). About 10 minutes here.
BENCH_PY := $(ROOT)/.venv/bin/python
bench: setup
	rm -rf target/criterion/extract target/criterion/infer target/criterion/decode target/criterion/head target/criterion/export target/bench/*.json
	cargo build --release
	@# pipe and PyTorch alternate twice (ABAB), so that a change of load on the shared cores hits both
	for i in 1 2; do \
	  cargo bench --bench extract && \
	  cp target/criterion/extract/tch_batch128/new/estimates.json target/bench/extract_tch_$$i.json && \
	  $(BENCH_PY) benches/reference/torch_extract.py --out target/bench/reference_torch_$$i.json || exit 1; \
	done
	$(BENCH_PY) benches/reference/torch_extract.py --channels-last
	cargo bench --bench infer
	$(BENCH_PY) benches/reference/ort_infer.py
	cargo bench --bench decode
	cargo bench --bench head
	cargo bench --bench export
	$(BENCH_PY) benches/e2e.py
	$(BENCH_PY) benches/summary.py

fmt:
	cargo fmt --all -- --check

clippy:
	cargo clippy --release --all-targets -- -D warnings

check: fmt clippy test
