# The single entry point: CI and the README call these targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TOOLS := $(CURDIR)/.tools/bin
GRPCURL := $(TOOLS)/grpcurl
GRPCURL_VERSION ?= v1.9.4
BUF := $(TOOLS)/buf
BUF_VERSION ?= v1.75.0
# Go code generators for buf.gen.yaml (tests/test_contract.py builds a Go client with them).
PROTOC_GEN_GO := $(TOOLS)/protoc-gen-go
PROTOC_GEN_GO_VERSION ?= v1.36.12
PROTOC_GEN_GO_GRPC := $(TOOLS)/protoc-gen-go-grpc
PROTOC_GEN_GO_GRPC_VERSION ?= v1.6.2
# The v1 contract as released (`buf build -o` of protos/ when v1 was frozen): `buf breaking`
# compares protos/ with it, so v1 only changes compatibly. Never regenerate it.
PROTO_BASELINE := protos/v1-baseline.binpb
PROTO_OUT := python/apcv_verify/_proto
PROTO_SRC := $(shell find protos -name '*.proto')
export PATH := $(TOOLS):$(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: dev proto demo test test-fast test-rust test-python lint lint-proto fmt tools clean system-deps bench

# The virtualenv and the build tools; everything else is installed by `maturin develop`.
$(VENV)/.stamp: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "maturin>=1.7,<2" "grpcio-tools>=1.66"
	touch $@

# Generated protobuf code is built here, never committed (docs/architecture.md).
$(PROTO_OUT)/.stamp: $(PROTO_SRC) $(VENV)/.stamp
	rm -rf $(PROTO_OUT) && mkdir -p $(PROTO_OUT)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$(PROTO_OUT) --pyi_out=$(PROTO_OUT) \
		--grpc_python_out=$(PROTO_OUT) $(PROTO_SRC)
	# protoc writes absolute imports ("from apcv.verify.v1 import ..."); make them package-relative.
	sed -i -E 's/^from apcv\.verify\.v1 import/from . import/' $(PROTO_OUT)/apcv/verify/v1/*_grpc.py
	for d in $(PROTO_OUT) $(PROTO_OUT)/apcv $(PROTO_OUT)/apcv/verify $(PROTO_OUT)/apcv/verify/v1; do touch $$d/__init__.py; done
	touch $@

proto: $(PROTO_OUT)/.stamp

# Builds the native core into the venv with the dev and load (locust) extras: in release mode
# (what `make test`, `make demo` and `make bench` use), or with `make dev PROFILE=debug` in debug
# mode, several times faster to build, for iterating on the Python side (the core is slower).
# Only from the command line: an unrelated PROFILE in the environment is ignored.
ifneq ($(origin PROFILE),command line)
PROFILE := release
endif
dev: proto
	@case "$(PROFILE)" in release|debug) ;; *) echo "PROFILE must be release or debug"; exit 2;; esac
	$(VENV)/bin/maturin develop $(if $(filter release,$(PROFILE)),--release) --extras dev,load

# grpcurl: the real gRPC client used by the tests and the README.
$(GRPCURL):
	mkdir -p $(TOOLS)
	GOBIN=$(TOOLS) go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)

# buf: the protobuf linter (buf.yaml: STANDARD) and breaking-change check, and `buf generate`.
$(BUF):
	mkdir -p $(TOOLS)
	GOBIN=$(TOOLS) go install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)

$(PROTOC_GEN_GO):
	mkdir -p $(TOOLS)
	GOBIN=$(TOOLS) go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)

$(PROTOC_GEN_GO_GRPC):
	mkdir -p $(TOOLS)
	GOBIN=$(TOOLS) go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

tools: $(GRPCURL) $(BUF) $(PROTOC_GEN_GO) $(PROTOC_GEN_GO_GRPC)

# System packages the tests need: redis-server (tests/test_replay_redis.py starts a real one on
# loopback). Installed only when missing; needs root (CI runs as root).
system-deps:
	@if command -v redis-server >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "redis-server is missing: run 'sudo apt-get update && sudo apt-get install -y redis-server'" \
			"(the Redis replay-store tests are skipped without it, and fail under CI=true)"; \
		exit 0; \
	fi; \
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server

demo: dev tools
	$(VENV)/bin/apcv-verify demo

test-rust:
	cargo test --workspace

test-python: dev tools system-deps
	$(PY) -m pytest

test: test-rust test-python

# The Python suite without the tests marked slow (over about 3 s each: real server processes,
# refresh and shutdown timings; pyproject.toml registers the marker). `make test` runs them all.
test-fast: dev tools system-deps
	$(PY) -m pytest -m "not slow"

# ghz side by side on loopback: Verify with 1 and 2 workers, VerifyBatch(100) vs Verify, Redis vs
# memory (loadtest/bench.py; installs the pinned ghz into .tools/bin). Writes docs/benchmarks.md.
bench: dev system-deps
	$(PY) loadtest/bench.py

# The public contract: buf's STANDARD lint rules, and no breaking change against v1.
lint-proto: $(BUF)
	$(BUF) lint
	$(BUF) breaking --against $(PROTO_BASELINE)

lint: dev lint-proto
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(VENV)/bin/ruff check python tests loadtest
	$(VENV)/bin/ruff format --check python tests loadtest
	$(VENV)/bin/mypy python/apcv_verify
	$(PY) -m mypy.stubtest apcv_verify._native

fmt:
	cargo fmt --all
	$(VENV)/bin/ruff format python tests loadtest

clean:
	rm -rf $(VENV) target $(PROTO_OUT) .tools
