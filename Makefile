# kordon: run `make help` for the targets.
SHELL := /bin/bash
GO ?= go
BIN := bin/kordon
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
# Tools and e2e binaries live outside the work tree so a fresh clone stays
# clean and a reused machine pays nothing.
CACHE ?= $(shell $(GO) env GOPATH)/kordon-cache
STATICCHECK_VERSION := v0.8.2
STATICCHECK := $(CACHE)/staticcheck-$(STATICCHECK_VERSION)/staticcheck
GOTEST_FLAGS ?= -race -count=1 -timeout 30m

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build bin/kordon
	$(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/kordon

.PHONY: generate
generate: deps ## Regenerate the Go code of the .proto files (protoc + the plugins pinned as tools in go.mod)
	./hack/protoc.sh

.PHONY: deps
deps: ## Install the test tools (apt packages) if missing
	@./hack/install-deps.sh

.PHONY: test
test: deps e2e-bins ## Run every test, e2e included (installs what it needs)
	KORDON_E2E_REQUIRED=1 KORDON_NETNS_REQUIRED=1 KORDON_E2E_BIN=$(E2E_BIN) $(GO) test $(GOTEST_FLAGS) ./...

E2E_BIN := $(CACHE)/e2e-bin/k8s-v1.34.4-etcd-v3.6.16

.PHONY: e2e-bins
e2e-bins: ## Build kube-apiserver and etcd from the Go module proxy into the cache (once)
	KORDON_E2E_BIN=$(E2E_BIN) ./hack/e2e-bins.sh >/dev/null

.PHONY: e2e
e2e: e2e-bins ## Run only the end-to-end tests against a real kube-apiserver
	KORDON_E2E_REQUIRED=1 KORDON_E2E_BIN=$(E2E_BIN) $(GO) test -count=1 -v ./e2e

.PHONY: bench
bench: ## Run the DNS benchmark against CoreDNS and unbound, and the xDS benchmark
	./bench/dns/run.sh
	$(GO) run ./bench/xds

.PHONY: lint
lint: $(STATICCHECK) ## gofmt, go vet, staticcheck (pinned) and go mod tidy -diff
	$(GO) mod tidy -diff
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...

$(STATICCHECK):
	GOBIN=$(dir $@) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

.PHONY: demo
demo: build ## Run kordon dev on the examples: DNS allowed/blocked, an exfiltration alert
	./hack/demo.sh

.PHONY: demo-egress
demo-egress: build ## (root) The backdoored-Redis story in network namespaces: direct-IP egress blocked, or let through and alerted
	./hack/demo-egress.sh

.PHONY: fuzz
fuzz: ## Run each fuzz target for 20s
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime 20s $$pkg || exit 1; \
	  done; \
	done

.PHONY: clean
clean: ## Remove build output
	rm -rf bin
