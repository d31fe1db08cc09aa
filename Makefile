# kerasrpc developer commands. `make serve` and `make test` set everything up.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
TOOLS := .tools
BUF := $(TOOLS)/node_modules/.bin/buf
PROTOS := $(wildcard proto/kerasrpc/v1/*.proto)
# Strict editable installs link each module: re-install when modules come or go.
PACKAGE_DIRS := $(shell find service client proto/kerasrpc -type d -not -name __pycache__ 2>/dev/null)

.PHONY: install serve test lint format typecheck proto proto-check buf-lint \
	dockerfile-lint bench clean

## install: create the virtual environment and install kerasrpc with its tools
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(PACKAGE_DIRS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]' --config-settings editable_mode=strict
	touch $@

$(BUF):
	npm install --silent --no-save --no-audit --no-fund --prefix $(TOOLS) @bufbuild/buf@1

## serve: set everything up and start the service on 127.0.0.1:50051
serve: install
	$(BIN)/kerasrpc serve

## proto: regenerate the Python stubs from proto/
proto: install
	$(PY) -m grpc_tools.protoc -I proto \
		--python_out=proto --grpc_python_out=proto \
		--mypy_out=proto --mypy_grpc_out=proto \
		--plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy \
		--plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc \
		$(PROTOS)

## proto-check: fail when the committed stubs differ from freshly generated ones
proto-check: install
	@tmp=$$(mktemp -d); cp -r proto "$$tmp/"; \
	$(PY) -m grpc_tools.protoc -I "$$tmp/proto" \
		--python_out="$$tmp/proto" --grpc_python_out="$$tmp/proto" \
		--mypy_out="$$tmp/proto" --mypy_grpc_out="$$tmp/proto" \
		--plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy \
		--plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc \
		$$(cd "$$tmp" && ls proto/kerasrpc/v1/*.proto | sed "s|^|$$tmp/|") >/dev/null 2>&1 \
	&& diff -r proto "$$tmp/proto" && echo "generated stubs are up to date"; \
	rc=$$?; rm -rf "$$tmp"; exit $$rc

buf-lint: $(BUF)
	$(BUF) lint

dockerfile-lint: install
	$(BIN)/hadolint Dockerfile

## lint: ruff (lint and format), buf and hadolint
lint: install buf-lint dockerfile-lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## typecheck: mypy --strict on service/ and client/
typecheck: install
	$(BIN)/mypy

## test: every check and the whole default test suite
test: install proto-check lint typecheck
	$(BIN)/python -m pytest

## bench: the benchmarks under bench/ (minutes; not part of the tests)
bench: install
	$(BIN)/python -m bench.run_all

clean:
	rm -rf build *.egg-info $(VENV)/.installed
