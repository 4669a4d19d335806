# bootvault: build, demo and tests. `make demo` and `make test` work on a
# fresh Debian 12 machine: `deps` installs what is missing, idempotently.

SHELL := /bin/bash
CARGO ?= cargo
MUSL := x86_64-unknown-linux-musl
INIT := target/$(MUSL)/init/init
BIN := target/release/bootvault
APT_PACKAGES := qemu-system-x86 cpio fdisk gzip
export BOOTVAULT_BIN := $(CURDIR)/$(BIN)
export BOOTVAULT_INIT := $(CURDIR)/$(INIT)

.PHONY: all deps build init kernel demo test unit test-qemu fmt clippy size clean

all: build

# Debian packages and the musl target, only when missing.
deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@rustup target list --installed | grep -qx $(MUSL) || rustup target add $(MUSL)

build: deps init
	$(CARGO) build --release -p bootvault-builder -p bootvault-qemu-tests

# The PID 1: static musl binary, size-tuned profile.
init: deps
	$(CARGO) build --profile init --target $(MUSL) -p bootvault-init
	@echo "init: $$(stat -c %s $(INIT)) bytes ($(INIT))"

kernel: build
	$(BIN) kernel fetch

demo: build kernel
	target/release/demo

unit: deps
	$(CARGO) test --workspace --exclude bootvault-qemu-tests

test-qemu: build kernel
	$(CARGO) test --release -p bootvault-qemu-tests -- --test-threads=1 --nocapture

test: unit test-qemu

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --workspace --all-targets

size: init
	@ls -l $(INIT)

clean:
	$(CARGO) clean
