# streamwatch: `make run` (build, then Redis with the module and the demo in the
# foreground) and `make test` (the whole suite against real Redis and Valkey servers).
SHELL := /bin/bash
PORT ?= 6379
REDIS_SERVER ?= redis-server
MODULE := target/release/libstreamwatch.so

.PHONY: deps build run test bench soak fuzz lint clean

deps:
	@scripts/deps.sh

build: deps
	cargo build --release

run: build
	@port=$(PORT); \
	if (exec 3<>/dev/tcp/127.0.0.1/$$port) 2>/dev/null; then \
	  echo "port $$port is in use (a system redis-server?); using $$((port+1)) instead"; port=$$((port+1)); fi; \
	dir=$$(mktemp -d /tmp/streamwatch-run.XXXXXX); \
	echo "streamwatch demo: redis-server on port $$port, data in $$dir"; \
	echo "try:  redis-cli -p $$port HSET cams cam1 rtsp://10.0.0.1/live cam2 rtsp://10.0.0.2/live"; \
	echo "      redis-cli -p $$port STREAMWATCH.JOBS"; \
	echo "      redis-cli -p $$port XADD thumbnails '*' url https://example.com/a.jpg"; \
	exec $(REDIS_SERVER) --port $$port --dir $$dir --save "" --appendonly no \
	  --loadmodule $(CURDIR)/$(MODULE) config $(CURDIR)/examples/demo.toml

# The whole suite twice: against Redis (redis-server on PATH, or REDIS_SERVER) and
# against Valkey (fetched by `make deps`, or VALKEY_SERVER).
VALKEY_SERVER ?= $(CURDIR)/.deps/valkey/valkey-server

# The module built with panic paths, for the test that proves no panic reaches Redis.
PANIC_MODULE := $(CURDIR)/target/panic-test/release/libstreamwatch.so
export STREAMWATCH_PANIC_MODULE := $(PANIC_MODULE)

test: build
	cargo build --release --lib --features panic-test --target-dir target/panic-test
	@echo "== the Python pool client (clients/python)"
	python3 -m unittest discover -s clients/python
	@echo "== tests against $$($(REDIS_SERVER) --version | cut -d' ' -f1-3)"
	REDIS_SERVER=$(REDIS_SERVER) cargo test --release -- --test-threads=2
	@echo "== tests against $$($(VALKEY_SERVER) --version | cut -d' ' -f1-3)"
	REDIS_SERVER=$(VALKEY_SERVER) cargo test --release -- --test-threads=2

lint:
	cargo fmt --check
	cargo clippy --release --all-targets -- -D warnings

clean:
	cargo clean

# Side by side with the peer and the limit (see bench/main.rs); prints the table and
# writes bench/results.json and bench/latency.png. redis-py (the stream peer) comes
# from `make deps`.
# The worker is linked statically (its own target dir, so other builds keep theirs):
# the dynamic loader alone took ~0.4 ms of every start, which hid the module's own cost.
bench: build
	cargo build --release --examples
	cargo rustc --release --example stamp --target-dir target/stamp -- -C target-feature=+crt-static
	REDIS_SERVER=$(REDIS_SERVER) cargo bench --bench bench

# The randomized soak at full size (make test runs 1,500 operations of it), and its
# variant that SIGKILLs the helper (10,000 operations); the seed is printed, and
# SOAK_SEED=<seed> replays a run.
soak: build
	SOAK_OPS=$${SOAK_OPS:-100000} SOAK_KILL_OPS=$${SOAK_KILL_OPS:-10000} REDIS_SERVER=$(REDIS_SERVER) cargo test --release --test soak -- --nocapture

# The fuzz targets of fuzz/ (command arguments, the config file, placeholder
# substitution, key patterns), FUZZ_RUNS executions each from the seeds in
# fuzz/corpus/<target>/.
# Needs nightly Rust; installs cargo-fuzz if missing. What a run discovers goes to
# fuzz/target/corpus/<target>/ (not checked in), a crash to fuzz/artifacts/<target>/:
# fix it, then keep the input in fuzz/regressions/<target>/, which `make test` replays.
FUZZ_RUNS ?= 1000000
FUZZ_TARGETS ?= commands config template glob
fuzz:
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@for t in $(FUZZ_TARGETS); do \
	  echo "== fuzz $$t: $(FUZZ_RUNS) runs"; \
	  mkdir -p fuzz/target/corpus/$$t; \
	  cargo +nightly fuzz run $$t fuzz/target/corpus/$$t fuzz/corpus/$$t -- -runs=$(FUZZ_RUNS) || exit 1; \
	done
