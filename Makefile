# The two entry points of a fresh machine:
#   make demo   builds everything (apt packages, guest kernel from source,
#               guest-init, initramfs, root image, sbxrun) and runs example
#               jobs end to end in real VMs, the last one in a Debian +
#               python3 container image pushed to a registry it starts on
#               127.0.0.1:5000 (left running for `sbxrun run
#               examples/python.yaml`; `scripts/local-registry.sh stop`)
#   make test   the same builds, then lint and the whole test suite on real VMs
CARGO ?= cargo
PYTHON ?= python3

.PHONY: demo test assets build lint test-deps

assets:
	./guest/assets.sh

build:
	$(CARGO) build --release --bin sbxrun

# What the build and the tests need beyond Rust: OpenSSL headers for the
# registry client, junitparser, and for container images a real registry,
# skopeo, umoci and htpasswd (scripts/test-deps.sh says which and why).
test-deps:
	PYTHON=$(PYTHON) ./scripts/test-deps.sh

demo: assets test-deps build
	./target/release/sbxrun doctor
	./target/release/sbxrun exec -- uname -a
	./target/release/sbxrun run examples/pipeline.yaml
	./scripts/local-registry.sh start
	./scripts/local-registry.sh push "$$(./guest/image/build-python-oci.sh)" library/python:3.11
	./target/release/sbxrun run examples/python.yaml

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test: assets test-deps lint
	$(CARGO) test --workspace
