# Shoal — build, run, test, bench.
#   make build   bin/shoal, version stamped from git describe
#   make run     the whole stack on this host with ./shoal.yaml
#   make test    install what the suite needs (apt-get) and run it with -race,
#                then lint-ansible and test-deploy
#   make lint-ansible  ansible-lint (production profile), playbooks' --syntax-check
#   make test-deploy   deploy with ansible/ onto Debian containers and check it
#   make bench   pipeline vs bare fasthttp, queue vs its peer
SHELL   := /bin/bash
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/shoal-dev/shoal/internal/cli.version=$(VERSION)
GO      ?= go
RUN_DIR ?= $(CURDIR)/run

# Debian packages the suite needs: `make test` installs the missing ones.
TEST_DEBS := redis-server python3-zmq python3-msgpack ansible ansible-lint debootstrap openssh-client
RUN_DEBS  := redis-server

.PHONY: all build run test test-go lint-ansible test-deploy vet deps-test deps-run bench fuzz clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/shoal ./cmd/shoal

# deps-%: install the listed Debian packages that are missing.
define install_debs
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing \
	    || { echo "cannot install:$$missing" >&2; exit 1; }; \
	fi
endef

deps-test:
	$(call install_debs,$(TEST_DEBS))

deps-run:
	$(call install_debs,$(RUN_DEBS))

vet:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	$(GO) vet ./...

# The Go suite first; then the deployment's lint and its test on containers.
test: deps-test vet test-go
	@$(MAKE) --no-print-directory lint-ansible
	@$(MAKE) --no-print-directory test-deploy

# The suite starts its own processes on loopback, on free ports; e2e tests
# use bin/shoal, built here.
# Allocation pins are build-tagged !race, so they get a pass without it
# first; the whole suite under -race runs last.
test-go: build
	$(GO) test -count=1 -run 'Alloc' ./...
	SHOAL_BIN=$(CURDIR)/bin/shoal $(GO) test -race -shuffle=on -count=1 -timeout 25m ./...

# ansible-lint (Debian's 6.13) with the production profile, the playbooks'
# syntax with each inventory, and docs/deploy.md against the roles'
# argument specs.
ANSIBLE_PLAYBOOKS := site.yml upgrade.yml rollback.yml
lint-ansible:
	cd ansible && ansible-lint --profile production
	@cd ansible && for inv in single multi; do for pb in $(ANSIBLE_PLAYBOOKS); do \
	  echo "ansible-playbook --syntax-check -i inventories/$$inv $$pb"; \
	  ansible-playbook --syntax-check -i inventories/$$inv --vault-password-file vault-password.example $$pb >/dev/null || exit 1; \
	done; done
	@if [ -f ansible/tools/check-docs.py ]; then echo "/usr/bin/python3 ansible/tools/check-docs.py"; /usr/bin/python3 ansible/tools/check-docs.py; fi

# The deploy test (ansible/deploytest, build tag deploy): a Debian bookworm
# image (debootstrap, docker import), containers on their own network, the
# playbooks over ssh. Needs root, a Docker engine, debootstrap and ansible.
# Everything it makes is labelled shoal-deploytest=<run>; cleanup.sh removes
# it again should go test be killed before its own cleanup.
test-deploy: build
	@run=mk$$$$-$$RANDOM; \
	trap 'sh ansible/deploytest/cleanup.sh '$$run EXIT; trap 'exit 130' INT TERM HUP; \
	echo "deploy test run $$run"; \
	SHOAL_DEPLOYTEST_RUN=$$run SHOAL_BIN=$(CURDIR)/bin/shoal GO=$(GO) \
	  $(GO) test -tags deploy -race -count=1 -v -timeout 40m ./ansible/deploytest

run: deps-run build
	@RUN_DIR=$(RUN_DIR) ./scripts/run.sh

bench: build
	$(GO) run ./bench -shoal $(CURDIR)/bin/shoal
	SHOAL_BIN=$(CURDIR)/bin/shoal $(GO) test -run '^$$' -bench . -benchtime 200x ./supervisor/e2e
	$(GO) run ./bench/events -shoal $(CURDIR)/bin/shoal
	cd bench/queue && $(GO) run .

# Each fuzz target for a short while (CI runs the seeds as part of `make test`).
FUZZTIME ?= 20s
fuzz:
	@for pkg in ./wire ./internal/zsock ./config ./frontend ./queue; do \
	  for t in $$($(GO) test -list 'Fuzz.*' $$pkg | grep ^Fuzz); do \
	    echo "== $$pkg $$t"; $(GO) test -run='^$$' -fuzz="^$$t$$" -fuzztime=$(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

clean:
	rm -rf bin run
