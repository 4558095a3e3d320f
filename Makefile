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
GHZ := $(TOOLS)/ghz
GHZ_VERSION ?= v0.120.0
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
FHIR_VALIDATOR_DIR := tools/fhir-validator
FHIR_VALIDATOR := $(FHIR_VALIDATOR_DIR)/target/apcv-fhir-validator-1.jar

.PHONY: build dev proto demo test test-fast test-rust test-python lint lint-proto fmt tools clean \
	system-deps bench loadtest fhir-validator examples image image-deps image-base image-test helm \
	fuzz soak audit

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

# The package as users get it: its runtime dependencies and the native core in release mode.
# Enough for `make demo`; the dev and load toolchain comes with `make dev`.
build: proto
	$(VENV)/bin/maturin develop --release

# Profile-guided optimisation's inputs and outputs (the rule is below `dev`).
RUST_HOST := $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p')
RUST_LLVM_MAJOR := $(shell rustc -vV 2>/dev/null | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
LLVM_PROFDATA := llvm-profdata-$(RUST_LLVM_MAJOR)
PGO_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)/pgo
PGO_PROFILE := $(PGO_DIR)/merged.profdata
PGO_TRAINING_SCANS ?= 10000
RUST_SRC := Cargo.toml Cargo.lock $(shell find rust/apcv-core rust/apcv-py \
	\( -path '*/fuzz' -o -path '*/tests' \) -prune -o \( -name '*.rs' -o -name Cargo.toml \) -print)

# Builds the native core into the venv with the dev, load (locust), scan and tracing
# (OpenTelemetry) extras. By default (PROFILE=release: what `make test` and `make bench` use) a
# release build guided by a profile of the service's own work (below); `make dev PROFILE=plain`
# is the release build without it (one build instead of two and a training run, for iterating
# on the Rust side), `make dev PROFILE=debug` a debug build, several times faster to build, for
# iterating on the Python side (the core is slower).
# Only from the command line: an unrelated PROFILE in the environment is ignored.
ifneq ($(origin PROFILE),command line)
PROFILE := release
endif
DEV_EXTRAS := --extras dev,load,scan,tracing
dev: proto $(if $(filter release,$(PROFILE)),$(PGO_PROFILE))
	@case "$(PROFILE)" in release|plain|debug) ;; *) echo "PROFILE must be release, plain or debug"; exit 2;; esac
ifeq ($(PROFILE),release)
	@# The profile's path names its content: a new profile changes RUSTFLAGS, which cargo
	@# fingerprints, so every crate is built again from it (cargo does not read the file).
	profile=$(PGO_DIR)/use-$$(sha256sum $(PGO_PROFILE) | cut -c1-16).profdata; \
	[ -f $$profile ] || { rm -f $(PGO_DIR)/use-*.profdata; cp $(PGO_PROFILE) $$profile; }; \
	RUSTFLAGS="-Cprofile-use=$$profile" APCV_NATIVE_BUILD=profile-guided \
		$(VENV)/bin/maturin develop --release --target $(RUST_HOST) $(DEV_EXTRAS)
else
	$(VENV)/bin/maturin develop $(if $(filter plain,$(PROFILE)),--release) $(DEV_EXTRAS)
endif

# Profile-guided optimisation of the native core (docs/benchmarks.md "The profile-guided
# build"). The core is built once instrumented (apart, in $(PGO_DIR)/build), then serves
# `make loadtest`'s realistic mix (loadtest/run.py: a corpus of valid and rejected scans, QR and
# NFC, a real server on loopback answering locust's Verify and VerifyStream users, every answer
# checked); each process that loaded the module adds its counts to $(PGO_DIR)/raw on exit, and
# llvm-profdata of rustc's own LLVM version (Debian's llvm-N: system-deps) merges them for the
# release build. Made again when the Rust code, the protos or the training change. `--target`
# keeps RUSTFLAGS off build scripts and proc-macros, which the service never runs.
$(PGO_PROFILE): $(RUST_SRC) $(PROTO_SRC) loadtest/run.py loadtest/locustfile.py \
		loadtest/corpus_feed.py loadtest/grpc_user.py | proto system-deps
	@command -v $(LLVM_PROFDATA) >/dev/null || { echo "$(LLVM_PROFDATA) is missing (rustc's LLVM" \
		"is $(RUST_LLVM_MAJOR)): run 'sudo apt-get install -y llvm-$(RUST_LLVM_MAJOR)', or build" \
		"without the profile: make dev PROFILE=plain"; exit 1; }
	rm -rf $(PGO_DIR)/raw $(PGO_DIR)/training
	RUSTFLAGS="-Cprofile-generate=$(PGO_DIR)/raw" APCV_NATIVE_BUILD=instrumented \
		$(VENV)/bin/maturin develop --release --target $(RUST_HOST) \
		--target-dir $(PGO_DIR)/build $(DEV_EXTRAS)
	$(PY) loadtest/run.py --out $(PGO_DIR)/training --count $(PGO_TRAINING_SCANS) --run-time 120s
	$(LLVM_PROFDATA) merge --output $@ $(PGO_DIR)/raw

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

# ghz: the gRPC load generator of make bench and of loadtest/p99_probe.py's test (the same pin
# as loadtest/bench.py's GHZ_VERSION, which installs it when missing).
$(GHZ):
	mkdir -p $(TOOLS)
	GOBIN=$(TOOLS) go install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION)

tools: $(GRPCURL) $(BUF) $(PROTOC_GEN_GO) $(PROTOC_GEN_GO_GRPC) $(GHZ)

# helm: the chart's lint, rendering and unit tests (tests/test_helm_chart.py).
HELM := $(TOOLS)/helm
HELM_VERSION ?= v3.22.0

$(HELM):
	mkdir -p $(TOOLS)
	GOBIN=$(TOOLS) go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

helm: $(HELM)

# System packages the tests need, from Debian: redis-server (tests/test_replay_redis.py starts a
# real one on loopback), protobuf-compiler-grpc-java-plugin (grpc-java's protoc plugin, for
# the Java client example's stubs) and llvm-N for llvm-profdata-N, N the major version of
# rustc's LLVM (`make dev`'s profile-guided build). Installed only when missing; needs root (CI
# runs as root).
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v tinyproxy >/dev/null || missing="$$missing tinyproxy"; \
	command -v grpc_java_plugin >/dev/null || missing="$$missing protobuf-compiler-grpc-java-plugin"; \
	command -v $(LLVM_PROFDATA) >/dev/null || missing="$$missing llvm-$(RUST_LLVM_MAJOR)"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "missing:$$missing: run 'sudo apt-get update && sudo apt-get install -y$$missing'" \
			"(without redis-server the Redis replay-store tests are skipped, and fail under" \
			"CI=true, as the list-proxy test does without tinyproxy; without the plugin the Java client example does not build; without" \
			"llvm-profdata, make dev PROFILE=plain builds the core without its profile)"; \
		exit 0; \
	fi; \
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing

# The official HAPI FHIR validator as a small Java checker (docs/fhir.md "Validation"), used by
# tests/test_fhir.py. Built once, again only when its pom or sources change; Maven keeps the
# downloaded jars in ~/.m2, so a rebuild is quick. Needs Java 17 and Maven (Debian's `maven`).
$(FHIR_VALIDATOR): $(FHIR_VALIDATOR_DIR)/pom.xml $(shell find $(FHIR_VALIDATOR_DIR)/src -name '*.java')
	@command -v mvn >/dev/null || { echo "mvn is missing: apt-get install -y maven (Java 17 too)"; exit 1; }
	cd $(FHIR_VALIDATOR_DIR) && mvn -B -q package
	touch $@

fhir-validator: $(FHIR_VALIDATOR)

# The Go and Java clients of docs/integration.md, built from protos/ as an integrator would;
# tests/test_client_docs.py runs them against a real server. Each is built again only when
# its sources or the proto change: the Go module cache, the Go build cache and ~/.m2 keep the
# downloads, and the outputs stay in the git-ignored examples/go/{gen,bin} and
# examples/java/target.
GO_EXAMPLE := examples/go/bin/verify-example
JAVA_EXAMPLE_DIR := examples/java
JAVA_EXAMPLE := $(JAVA_EXAMPLE_DIR)/target/apcv-verify-example-1.jar

# buf.gen.yaml as committed: the proto's go_package resolves in examples/go's module.
$(GO_EXAMPLE): examples/go/main.go examples/go/go.mod examples/go/go.sum buf.gen.yaml $(PROTO_SRC) \
		| $(BUF) $(PROTOC_GEN_GO) $(PROTOC_GEN_GO_GRPC)
	rm -rf examples/go/gen
	$(BUF) generate --output examples/go
	cd examples/go && go vet ./... && go build -o bin/verify-example .

# protoc comes from Maven Central through the pom (protobuf-maven-plugin), grpc-java's protoc
# plugin from Debian (system-deps: order-only, so installing it does not force a rebuild).
$(JAVA_EXAMPLE): $(JAVA_EXAMPLE_DIR)/pom.xml $(shell find $(JAVA_EXAMPLE_DIR)/src -name '*.java') \
		$(PROTO_SRC) | system-deps
	@command -v mvn >/dev/null || { echo "mvn is missing: apt-get install -y maven (Java 17 too)"; exit 1; }
	@command -v grpc_java_plugin >/dev/null || { echo "grpc_java_plugin is missing:" \
		"apt-get install -y protobuf-compiler-grpc-java-plugin"; exit 1; }
	cd $(JAVA_EXAMPLE_DIR) && mvn -B -q package
	touch $@

examples: $(GO_EXAMPLE) $(JAVA_EXAMPLE)

demo: build $(GRPCURL)
	$(VENV)/bin/apcv-verify demo

test-rust:
	cargo test --workspace

test-python: dev tools helm system-deps fhir-validator examples
	$(PY) -m pytest

test: test-rust test-python

# The Python suite without the tests marked slow (over about 3 s each: real server processes,
# refresh and shutdown timings; pyproject.toml registers the marker). `make test` runs them all.
test-fast: dev tools helm system-deps fhir-validator examples
	$(PY) -m pytest -m "not slow and not image"

# The core first (loadtest/core_bench.py: crypto floor, core from Python, the plain-Python peer,
# scale, with a matplotlib plot), then ghz side by side on loopback: Verify with 1 and 2 workers,
# VerifyBatch(100) vs Verify, Redis vs memory (loadtest/bench.py; installs the pinned ghz into
# .tools/bin). Then the service against its core (loadtest/service_bench.py: server CPU per
# presentation for Verify, VerifyBatch, VerifyStream, the core and a bare grpc.aio echo server,
# ghz for Verify's p99 at half its maximum rate, ghz on CPUs apart from the server's, the echo
# server's p99 beside; 5 rounds: the stream and batch ratios sit within a few µs per
# presentation of their 1.2 line, less than 3 rounds' medians resolve). Each writes
# docs/benchmarks.md, the core and the service into their own sections, each with a PNG plot
# beside it in docs/.
bench: dev system-deps
	$(PY) loadtest/core_bench.py --write docs/benchmarks.md --plot docs/benchmarks-scale.png
	$(PY) loadtest/bench.py
	$(PY) loadtest/service_bench.py --rounds 5 --write docs/benchmarks.md --plot docs/benchmarks-service.png

# Fuzzing (docs/reliability.md "Fuzzing"). `make test` already runs every target briefly: the
# core's four as bounded property tests on stable (rust/apcv-core/tests/fuzz_targets.rs), the
# servicer's with a short atheris run (tests/test_fuzz.py). `make fuzz` runs each for
# FUZZ_SECONDS under libFuzzer: the core's with cargo-fuzz, which needs a nightly toolchain
# (cargo-fuzz itself comes from crates.io, pinned, into .tools/bin), the servicer's with atheris.
# New inputs go to target/fuzz-corpus, never into the committed seeds; a crash stops the run
# with its input in rust/apcv-core/fuzz/artifacts/<target>/ or target/fuzz-corpus/artifacts/.
FUZZ_SECONDS ?= 60
CARGO_FUZZ_VERSION ?= 0.13.2
CARGO_FUZZ := $(TOOLS)/cargo-fuzz
FUZZ_TARGETS := qr_nfc cose_cwt status_list trust_list
FUZZ_WORK := $(CURDIR)/target/fuzz-corpus

fuzz: dev
	@set -e; \
	if rustup run nightly rustc --version >/dev/null 2>&1; then \
		[ -x $(CARGO_FUZZ) ] || cargo install --locked cargo-fuzz@$(CARGO_FUZZ_VERSION) --root $(CURDIR)/.tools; \
		for t in $(FUZZ_TARGETS); do \
			mkdir -p $(FUZZ_WORK)/$$t; \
			(cd rust/apcv-core && cargo +nightly fuzz run -O $$t $(FUZZ_WORK)/$$t fuzz/corpus/$$t \
				$$([ -d fuzz/regressions/$$t ] && echo fuzz/regressions/$$t) \
				-- -max_total_time=$(FUZZ_SECONDS)); \
		done; \
	else \
		echo "make fuzz: no nightly Rust toolchain, which cargo-fuzz needs ('rustup toolchain install"; \
		echo "nightly' where static.rust-lang.org is reachable): the core's targets are skipped here."; \
		echo "make test runs them on stable as bounded property tests (docs/reliability.md)."; \
	fi
	mkdir -p $(FUZZ_WORK)/servicer $(FUZZ_WORK)/artifacts
	$(PY) -m tests.fuzz_servicer -max_total_time=$(FUZZ_SECONDS) \
		-artifact_prefix=$(FUZZ_WORK)/artifacts/ $(FUZZ_WORK)/servicer tests/fuzz-corpus/servicer

# The soak (docs/reliability.md "Soak"; not in CI: ten minutes): a real server on loopback at 70%
# of its measured capacity, RSS, errors, p99, its CPU and the host's steal over time into
# docs/soak.png and the results into docs/reliability.md. `make test` runs loadtest/soak.py
# --quick (tests/test_soak.py).
SOAK_SECONDS ?= 600
# The answer store's bound for the soak: full within its first minutes, so that what follows
# shows whether the resident size is flat (the default bound, 1,000,000 answers, ≈ 150 MB, takes
# longer than the soak to fill at the rates of a 2-core machine).
SOAK_ANSWERS ?= 100000
soak: dev
	$(PY) loadtest/soak.py --seconds $(SOAK_SECONDS) --answer-max-entries $(SOAK_ANSWERS) \
		--write docs/reliability.md --plot docs/soak.png

# Dependency audit (docs/security.md "Dependency audit"): the Python environment against PyPI's
# advisories (pip-audit asks PyPI's JSON API), and Cargo.lock against the RustSec advisory
# database (cargo-audit, pinned, from crates.io into .tools/bin; it fetches the database from
# GitHub, so it needs that network access, or AUDIT_DB pointing at a local copy of the database).
CARGO_AUDIT_VERSION ?= 0.22.1
CARGO_AUDIT := $(TOOLS)/cargo-audit
AUDIT_DB ?=
$(CARGO_AUDIT):
	cargo install --locked cargo-audit@$(CARGO_AUDIT_VERSION) --root $(CURDIR)/.tools

audit: dev $(CARGO_AUDIT)
	$(VENV)/bin/pip-audit --strict --vulnerability-service pypi --skip-editable
	$(CARGO_AUDIT) audit $(if $(AUDIT_DB),--db $(AUDIT_DB) --no-fetch)

# A longer load test than the short one of `make test` (docs/operations.md "Load test"): a
# corpus of LOADTEST_COUNT scans, a real server on loopback, locust headless for LOADTEST_TIME
# with LOADTEST_USERS users (hospital systems on Verify, edge readers on VerifyStream), every
# answer checked against the corpus; CSV and HTML reports in LOADTEST_OUT.
LOADTEST_OUT ?= .loadtest
LOADTEST_COUNT ?= 20000
LOADTEST_USERS ?= 16
LOADTEST_TIME ?= 60s
loadtest: dev
	$(PY) loadtest/run.py --out $(LOADTEST_OUT) --count $(LOADTEST_COUNT) \
		--users $(LOADTEST_USERS) --run-time $(LOADTEST_TIME)

# The public contract: buf's STANDARD lint rules, and no breaking change against v1.
lint-proto: $(BUF)
	$(BUF) lint
	$(BUF) breaking --against $(PROTO_BASELINE)

lint: dev lint-proto
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(VENV)/bin/ruff check python tests loadtest
	$(VENV)/bin/ruff format --check python tests loadtest
	$(VENV)/bin/mypy python/apcv_verify tests loadtest
	$(PY) -m mypy.stubtest apcv_verify._native
	@unformatted=$$(gofmt -l examples/go/main.go loadtest/goecho/main.go); \
		if [ -n "$$unformatted" ]; then echo "gofmt would change: $$unformatted"; exit 1; fi

fmt:
	cargo fmt --all
	$(VENV)/bin/ruff format python tests loadtest
	gofmt -w examples/go/main.go loadtest/goecho/main.go

# The OCI image (Containerfile; docs/deploy.md "Image"). No container registry is reachable,
# so both base images are made from Debian bookworm's packages with mmdebstrap and imported
# with buildah; `buildah bud --isolation chroot` then builds the wheel (maturin + zig,
# manylinux_2_28) and the slim runtime. Needs root (CI runs as root).
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
IMAGE ?= localhost/apcv-verify:$(VERSION)
# The base tarballs; delete them (or the folder) to refresh the bases with Debian's updates.
IMAGE_DIR ?= .image
DEBIAN_SUITE := bookworm
DEBIAN_MIRRORS := "deb http://deb.debian.org/debian $(DEBIAN_SUITE) main" \
	"deb http://deb.debian.org/debian $(DEBIAN_SUITE)-updates main" \
	"deb http://deb.debian.org/debian-security $(DEBIAN_SUITE)-security main"
# Documentation, manual pages and translations are not needed in a container; merged /usr is
# made by mmdebstrap's hook instead of the usrmerge package (which would pull in perl).
MMDEBSTRAP := mmdebstrap --variant=minbase --format=tar --aptopt='Acquire::Retries "3"' \
	--aptopt='APT::Install-Recommends "false"' --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
	--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
	--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
	--dpkgopt='path-exclude=/usr/share/info/*'
BUILDAH := buildah
# The build host's CA bundle, mounted over the build stages' own while they fetch from PyPI and
# crates.io (behind a TLS-inspecting proxy only the host trusts its CA); never in the image.
BUILD_CA_BUNDLE ?= /etc/ssl/certs/ca-certificates.crt
BUD := $(BUILDAH) bud --isolation chroot --layers \
	$(if $(wildcard $(BUILD_CA_BUNDLE)),--volume $(BUILD_CA_BUNDLE):/etc/ssl/certs/ca-certificates.crt:ro)

image-deps:
	@if command -v mmdebstrap >/dev/null && command -v buildah >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "mmdebstrap and buildah are missing: run 'sudo apt-get install -y mmdebstrap buildah'"; \
		exit 1; \
	fi; \
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
		mmdebstrap buildah

$(IMAGE_DIR)/runtime.tar:
	mkdir -p $(IMAGE_DIR)
	$(MMDEBSTRAP) --include=python3,ca-certificates $(DEBIAN_SUITE) $@.tmp $(DEBIAN_MIRRORS)
	mv $@.tmp $@

# The build base: Debian's newer Rust for stable releases (rustc-web), and rust-web-llvm, which
# brings the LLVM of that rustc (llvm-profdata, for the profile-guided build). The tarball is
# made again when this list changes (build.packages holds the list it was made from).
BUILD_BASE_PACKAGES := python3,python3-venv,ca-certificates,rustc-web,cargo-web,rust-web-llvm
$(IMAGE_DIR)/build.packages: FORCE
	@mkdir -p $(IMAGE_DIR)
	@echo '$(BUILD_BASE_PACKAGES)' | cmp -s - $@ || echo '$(BUILD_BASE_PACKAGES)' > $@

$(IMAGE_DIR)/build.tar: $(IMAGE_DIR)/build.packages
	$(MMDEBSTRAP) --include=$(BUILD_BASE_PACKAGES) $(DEBIAN_SUITE) $@.tmp $(DEBIAN_MIRRORS)
	mv $@.tmp $@

FORCE:

# One base image per tarball, imported again when the tarball is newer than its last import
# or the image is missing from buildah's storage.
image-base: image-deps $(IMAGE_DIR)/runtime.tar $(IMAGE_DIR)/build.tar
	@set -e; for kind in runtime build; do \
		name=localhost/apcv-verify-$$([ $$kind = build ] && echo build-base || echo base):$(DEBIAN_SUITE); \
		tar=$(IMAGE_DIR)/$$kind.tar; stamp=$(IMAGE_DIR)/$$kind.imported; \
		if [ $$stamp -nt $$tar ] && $(BUILDAH) inspect --type image $$name >/dev/null 2>&1; then \
			continue; \
		fi; \
		echo "importing $$tar as $$name"; \
		ctr=$$($(BUILDAH) from scratch); \
		$(BUILDAH) add $$ctr $$tar /; \
		$(BUILDAH) config --env PATH=/usr/local/bin:/usr/bin:/bin --cmd /bin/sh $$ctr; \
		$(BUILDAH) commit --quiet --rm $$ctr $$name; \
		touch $$stamp; \
	done

# The image, and the wheel its first stage built copied to dist/ (its tag is tested).
image: proto image-base
	$(BUD) --build-arg VERSION=$(VERSION) -f Containerfile -t $(IMAGE) .
	$(BUD) --target wheel -f Containerfile -t $(IMAGE)-wheel .
	rm -rf dist && mkdir -p dist
	ctr=$$($(BUILDAH) from $(IMAGE)-wheel) && \
	mnt=$$($(BUILDAH) mount $$ctr) && cp $$mnt/dist/*.whl dist/ && \
	$(BUILDAH) umount $$ctr && $(BUILDAH) rm $$ctr
	$(BUILDAH) images --format '{{.Name}}:{{.Tag}} {{.Size}}' $(IMAGE)

# The image's smoke test (tests/test_image.py): slow, so apart from `make test`; .ci/run
# runs it after `make test`.
image-test: dev image
	APCV_IMAGE=$(IMAGE) $(PY) -m pytest -m image tests/test_image.py

clean:
	rm -rf $(VENV) target $(PROTO_OUT) .tools $(FHIR_VALIDATOR_DIR)/target $(IMAGE_DIR) dist \
		examples/go/gen examples/go/bin $(JAVA_EXAMPLE_DIR)/target
