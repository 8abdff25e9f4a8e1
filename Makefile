# The two entry points of a fresh machine:
#   make demo   builds everything (apt packages, guest kernel from source,
#               guest-init, initramfs, root image, sbxrun) and runs an
#               example job end to end in real VMs
#   make test   the same builds, then lint and the whole test suite on real VMs
CARGO ?= cargo
PYTHON ?= python3

.PHONY: demo test assets build lint test-deps

assets:
	./guest/assets.sh

build:
	$(CARGO) build --release --bin sbxrun

# What the tests need beyond Rust: junitparser, and for the image crate a real
# registry, skopeo, umoci and htpasswd (scripts/test-deps.sh says which and why).
test-deps:
	PYTHON=$(PYTHON) ./scripts/test-deps.sh

demo: assets build
	./target/release/sbxrun doctor
	./target/release/sbxrun exec -- uname -a
	./target/release/sbxrun run examples/pipeline.yaml

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test: assets test-deps lint
	$(CARGO) test --workspace
