# moray: one-command set-up, run and test on a fresh Debian 12 machine (as root).
#
#   make run    install what the agent needs, build the BPF objects, start the agent
#               with its defaults (events as JSON lines on stdout, metrics on :9464)
#   make test   the same set-up, then the whole test suite (integration tests need root)
#   make bench  the benchmarks (figures printed, never asserted)
#   make dist   the wheel with the prebuilt CO-RE objects (dist/moray-*.whl; target hosts
#               need python3 and libbpf1, no clang: docs/install.md)
#   make deb    the Debian packages moray (venv), moray-agent, moray-server (dist/*.deb)
#   make images the OCI images agent, server, gateway from those debs (dist/images: an OCI
#               layout and `docker load` archives; packaging/images/build)

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# build: clang llvm libbpf-dev bpftool; runtime: libbpf1; tests: runc busybox-static docker.io
# scanner tests: docker-registry (OCI distribution API), golang-go (Go build info),
# db5.3-util (rpm Berkeley DB); control plane: postgresql (the PostgreSQL store tests);
# benchmarks: gcc (C load generators); the qemu kernel matrix: qemu-system-x86, zstd; the
# systemd guest (tests/kernels/run-systemd-guest): mmdebstrap; images: umoci skopeo; the
# console's browser tests (tests/browser): chromium chromium-driver
APT_PKGS := clang llvm libbpf-dev libbpf1 bpftool runc busybox-static docker.io iproute2 \
            docker-registry golang-go db5.3-util gcc postgresql qemu-system-x86 zstd mmdebstrap \
            umoci skopeo chromium chromium-driver

.PHONY: all deps venv bpf install run test test-unit bench lint dist deb images clean

all: install

deps: .stamps/apt

.stamps/apt: Makefile  # re-checked when the package list changes
	@missing=$$(for p in $(APT_PKGS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; }; \
	fi
	@mkdir -p .stamps && touch $@

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

venv: $(BIN)/python

bpf: deps
	$(MAKE) -C bpf

.stamps/pip: pyproject.toml setup.py agent/events/_fast.c | $(BIN)/python  # the editable install builds moray.agent._fast
	$(BIN)/pip install -q -e '.[test,scanner,otlp]'
	@mkdir -p .stamps && touch $@

# The AWS Lambda runtime interface emulator for the NanoEnforcer's tests and benchmark
# (tests/integration/test_nano_lambda.py, bench/nano.py): its binary ships inside the
# aws-sam-cli wheel (samcli/local/rapid/); only that file is taken, the wheel itself is not
# installed (its dependencies would clash with ours)
RIE_WHEEL := aws-sam-cli==1.170.0
.stamps/rie: | $(BIN)/python
	rm -rf .stamps/rie.d && mkdir -p .stamps/rie.d
	$(BIN)/pip download -q --no-deps -d .stamps/rie.d '$(RIE_WHEEL)'
	$(BIN)/python -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
	  open(sys.argv[2], 'wb').write(z.read('samcli/local/rapid/aws-lambda-rie-x86_64'))" \
	  .stamps/rie.d/*.whl $(BIN)/aws-lambda-rie
	chmod 755 $(BIN)/aws-lambda-rie
	rm -rf .stamps/rie.d && touch $@

install: deps bpf .stamps/pip .stamps/rie

# moray's main job on this host: the embedded control plane (moray-server, SQLite under
# /var/lib/moray/local, loopback) and the agent enrolled in it, with the default rules and
# the default runtime policy (packaging/etc/policies/default.yaml, monitor mode)
run: install
	BIN=$(BIN) packaging/run-local

test: install
	$(BIN)/python -m pytest -q tests

test-unit: install
	$(BIN)/python -m pytest -q tests/unit

bench: install
	$(BIN)/python bench/run.py

lint: install  # ruff: the code, tests and benchmarks; mypy --strict: the moray packages
	$(BIN)/ruff check moray agent api controlplane tests bench
	$(BIN)/mypy

# the BPF objects are built once here (setup.py's build hook runs make -C bpf); the
# venv's setuptools builds the wheel (no build isolation: nothing fetched)
dist: deps bpf | $(BIN)/python
	rm -rf build dist/moray-*.whl
	$(BIN)/pip wheel -q --no-deps --no-build-isolation -w dist .
	@ls -l dist/moray-*.whl

# dh-virtualenv builds /opt/venvs/moray from a clean copy of the tree (tracked and new
# files, not the developer's .venv or build output), packaging/debian as debian/
DEB_PKGS := debhelper dh-virtualenv python3-venv python3-dev
DEB_STAGE := build/deb/moray-0.1.0
deb: deps
	@missing=$$(for p in $(DEB_PKGS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get install -y -q $$missing; fi
	rm -rf build/deb && mkdir -p $(DEB_STAGE) dist
	git ls-files -z --cached --others --exclude-standard | \
	  tar --null --ignore-failed-read --no-recursion -cf - -T - | tar -C $(DEB_STAGE) -xf -
	cp -r packaging/debian $(DEB_STAGE)/debian
	cp packaging/systemd/moray-agent.service $(DEB_STAGE)/debian/moray-agent.moray-agent.service
	cp packaging/systemd/moray-server.service $(DEB_STAGE)/debian/moray-server.moray-server.service
	cp packaging/systemd/moray-gateway.service $(DEB_STAGE)/debian/moray-server.moray-gateway.service
	cd $(DEB_STAGE) && dpkg-buildpackage -us -uc -b
	mv build/deb/*.deb dist/
	@ls -l dist/*.deb

# the images from the debs of `make deb` (run it first) and Debian's packages, offline
# but for Debian's mirror: mmdebstrap, umoci, skopeo (docs/install-kubernetes.md, Images)
images: deps
	packaging/images/build dist dist/images

clean:
	$(MAKE) -C bpf clean
	rm -rf $(VENV) .stamps build dist
