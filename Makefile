# The two entry points of a fresh machine:
#   make demo   builds everything (apt packages, guest kernel from source,
#               guest-init, initramfs, root image, sbxrun) and runs an example
#   make test   the same builds, then the whole test suite on real VMs
CARGO ?= cargo

.PHONY: demo test assets build lint

assets:
	./guest/assets.sh

build:
	$(CARGO) build --release --bin sbxrun

demo: assets build
	./target/release/sbxrun doctor
	./target/release/sbxrun exec -- uname -a

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test: assets lint
	$(CARGO) test --workspace
