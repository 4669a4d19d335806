# bootvault: build, demo and tests. `make demo` and `make test` work on a
# fresh Debian 12 machine: `deps` installs what is missing, idempotently.

SHELL := /bin/bash
CARGO ?= cargo
MUSL := x86_64-unknown-linux-musl
MUSL32 := i686-unknown-linux-musl
INIT := target/$(MUSL)/init/init
INIT32 := target/$(MUSL32)/init/init
BIN := target/release/bootvault
APT_PACKAGES := qemu-system-x86 binutils cpio fdisk gzip e2fsprogs dosfstools mtools \
  musl-tools xorriso isolinux syslinux syslinux-common systemd-boot-efi ovmf ntfs-3g exfatprogs xfsprogs btrfs-progs cryptsetup-bin exfat-fuse \
  make bc bison flex libelf-dev xz-utils musl-dev:i386 chromium chromium-driver postgresql
export BOOTVAULT_BIN := $(CURDIR)/$(BIN)
export BOOTVAULT_INIT := $(CURDIR)/$(INIT)
export BOOTVAULT_INIT_I686 := $(CURDIR)/$(INIT32)

.PHONY: all deps build init init-i686 kernel kernels garage demo test unit test-qemu bench fuzz fmt clippy size clean

all: build

# $(call apt_ensure,PACKAGES): installs the Debian packages that are missing
# (one apt-get update first), and nothing when all are there.
define apt_ensure
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
endef

# Debian packages and the musl targets, only when missing. 32-bit PCs' init
# compiles its C against musl's i386 package: dpkg learns the architecture
# first (the apt-get update that follows is apt_ensure's).
deps:
	@dpkg --print-foreign-architectures | grep -qx i386 || $$( [ "$$(id -u)" = 0 ] || echo sudo ) dpkg --add-architecture i386
	$(call apt_ensure,$(APT_PACKAGES))
	@rustup target list --installed | grep -qx $(MUSL) || rustup target add $(MUSL)
	@rustup target list --installed | grep -qx $(MUSL32) || rustup target add $(MUSL32)

build: deps init init-i686
	$(CARGO) build --release -p bootvault-builder -p bootvault-qemu-tests

# The PID 1: static musl binary, size-tuned profile.
init: deps
	$(CARGO) build --profile init --target $(MUSL) -p bootvault-init
	@# Unwind tables serve only backtraces a panic=abort PID 1 never prints
	@# (-217 KB); objcopy leaves an already stripped file as it is.
	objcopy --remove-section=.eh_frame --remove-section=.eh_frame_hdr --remove-section=.gcc_except_table $(INIT)
	@echo "init: $$(stat -c %s $(INIT)) bytes ($(INIT))"

# The init for 32-bit PCs (Pentium Pro and later; --arch i686).
init-i686: deps
	$(CARGO) build --profile init --target $(MUSL32) -p bootvault-init
	objcopy --remove-section=.eh_frame --remove-section=.eh_frame_hdr --remove-section=.gcc_except_table $(INIT32)
	@echo "init (i686): $$(stat -c %s $(INIT32)) bytes ($(INIT32))"

kernel: build
	$(BIN) kernel fetch

# Our own kernels (kernel-config/*.config), built once into ~/.cache/bootvault:
# about 6, 5 and 4 minutes on 2 cores the first time, nothing afterwards.
kernels: build
	$(BIN) kernel build --config pc --arch x86_64
	$(BIN) kernel build --config pc --arch i686
	$(BIN) kernel build --config floppy --arch i686

demo: build kernel
	target/release/demo

# Garage, the S3 store the S3 chunk store's tests start (server/src/testenv_s3.rs),
# built once into ~/.cache/bootvault/garage: about 18 minutes on 2 cores the
# first time, nothing afterwards.
GARAGE := $(HOME)/.cache/bootvault/garage/bin/garage
garage:
	@[ -x $(GARAGE) ] || $(CARGO) install garage --version 2.5.0 --locked --root $(HOME)/.cache/bootvault/garage

unit: deps garage
	$(CARGO) test --workspace --exclude bootvault-qemu-tests

test-qemu: build kernel kernels garage
	$(CARGO) test --release -p bootvault-qemu-tests -- --test-threads=1 --nocapture

test: unit test-qemu

# Measurements (not tests): boot times and smallest RAM, the smallest RAM for a backup and a
# restore with each kernel (stock, ours, ours for i686) and their sizes, backup against gzip/pigz/partclone,
# imaging of real-looking disks (an installed Linux system; FAT+ext4+NTFS full of deleted
# files, built once as root into ~/.cache/bootvault/bench) against partclone|pigz and
# dd|zstd (and a local store next to the server), the same under QEMU through an exFAT USB
# drive against the network, TLS and encryption on and off (host and QEMU), the chunk
# codecs on those disks' contents,
# boot media against grub-mkrescue, restore passwords, one server against two on
# PostgreSQL and Garage with 1 to 16 PCs at once (and the S3 requests per chunk); last,
# the soak (20 PCs backing up and restoring for SOAK_SECONDS while gc loops and the
# server is killed every 30 s; it fails `make bench` if any backup listed complete does
# not restore). See BENCHMARKS.md.
SOAK_SECONDS ?= 300
export SOAK_SECONDS
BENCH_PACKAGES := pigz partclone zstd time grub-common grub-pc-bin grub-efi-amd64-bin argon2
bench: build kernel kernels garage
	$(call apt_ensure,$(BENCH_PACKAGES))
	@mkdir -p target/bench
	target/release/bench-boot | tee target/bench/boot.md
	set -o pipefail; target/release/bench-lowmem | tee target/bench/lowmem.md
	target/release/bench-backup | tee target/bench/backup.md
	set -o pipefail; target/release/bench-imaging | tee target/bench/imaging.md
	set -o pipefail; target/release/bench-local | tee target/bench/local.md
	set -o pipefail; target/release/bench-transport | tee target/bench/transport.md
	set -o pipefail; target/release/bench-web | tee target/bench/web.md
	$(CARGO) run --release -q -p bootvault-engine --example codec_bench -- --runs 3 --max-mib 400 \
	  $(HOME)/.cache/bootvault/bench/linux/part1.img | tee target/bench/codec-linux.md
	$(CARGO) run --release -q -p bootvault-engine --example codec_bench -- --runs 3 --max-mib 400 \
	  $(HOME)/.cache/bootvault/bench/mixed/part3.img | tee target/bench/codec-ntfs.md
	target/release/bench-media | tee target/bench/media.md
	$(CARGO) run --release -q -p bootvault-engine --example lock_cost | tee target/bench/lock.md
	set -o pipefail; target/release/bench-scale | tee target/bench/scale.md
	set -o pipefail; target/release/bench-soak | tee target/bench/soak.md

# Coverage-guided fuzzing of every parser with libFuzzer, on stable Rust
# (cargo-fuzz's instrumentation flags, without the nightly-only sanitizer).
# Each target starts from its corpus (fuzz/corpus/T, not in git) plus the
# seeds in git (fuzz/seeds/T, if any); `FUZZ_TARGETS=fsprobe` runs one.
FUZZ_SECONDS ?= 30
FUZZ_TARGETS ?= cmdline config modules partition cpio_read image fsprobe blob lock_text client_answers job mac usedmap_ext usedmap_fat usedmap_exfat usedmap_ntfs usedmap_swap
FUZZ_FLAGS := -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks
fuzz:
	cd fuzz && RUSTFLAGS="$(FUZZ_FLAGS)" $(CARGO) build --release --target x86_64-unknown-linux-gnu
	@bash fuzz/make-seeds.sh
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/corpus/$$t fuzz/artifacts; echo "== fuzz $$t for $(FUZZ_SECONDS) s"; \
	  seeds=$$( [ -d fuzz/seeds/$$t ] && echo fuzz/seeds/$$t ); \
	  if ! fuzz/target/x86_64-unknown-linux-gnu/release/$$t fuzz/corpus/$$t $$seeds -max_total_time=$(FUZZ_SECONDS) \
	       -print_final_stats=1 -artifact_prefix=fuzz/artifacts/$$t- > fuzz/$$t.log 2>&1; then tail -30 fuzz/$$t.log; exit 1; fi; \
	  grep -E "^stat::number_of_executed_units" fuzz/$$t.log; \
	  echo "corpus: $$(ls fuzz/corpus/$$t | wc -l) inputs, $$(du -sh fuzz/corpus/$$t | cut -f1)"; \
	done

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --workspace --all-targets

size: init
	@ls -l $(INIT)

clean:
	$(CARGO) clean
