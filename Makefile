# pipe: the two commands a newcomer needs are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
ROOT := $(CURDIR)
export PATH := $(ROOT)/.venv/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1
PIPE := target/release/pipe

.PHONY: setup build demo test fmt clippy check clean-runs

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
	@tail -n 1 onnx/infer-tract.tsv
	@echo; echo "== pipe infer --backend ort data/cifar10/test"
	$(PIPE) infer --backend ort data/cifar10/test > onnx/infer-ort.tsv
	@tail -n 1 onnx/infer-ort.tsv
	@echo; echo "== tract vs ort: labels that differ (per-image lines in onnx/infer-{tract,ort}.tsv)"
	@diff <(cut -f1,2 onnx/infer-tract.tsv) <(cut -f1,2 onnx/infer-ort.tsv) && echo "none: both backends agree on every image"

## test: set-up, then the whole test suite (release profile, so it reuses the release build)
test: setup
	cargo test --release

fmt:
	cargo fmt --all -- --check

clippy:
	cargo clippy --release --all-targets -- -D warnings

check: fmt clippy test
