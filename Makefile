# Run `make help` for the targets.
SHELL := /bin/bash
# A recipe line fails when any command of a pipeline fails, not only the
# last: `go test ... | grep ...` (make drills) must fail with the test.
.SHELLFLAGS := -eo pipefail -c
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
# Packages with concurrency run under the race detector; manifest and
# template checks are single-threaded and run without it (faster).
RACE_PKGS := ./cmd/... ./internal/...
PLAIN_PKGS := $(shell go list ./... 2>/dev/null | grep -v -e '/internal/' -e '/cmd/')

.PHONY: help run build test test-short deps bench bench-http lint drills
help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

run: ## Run the service on its embedded defaults
	go run ./cmd/api

build: ## Build bin/api with the version stamped
	CGO_ENABLED=0 go build -trimpath -ldflags "$(LDFLAGS)" -o bin/api ./cmd/api

deps: ## Install the real programs the tests use (redis-server, nginx, promtool)
	bash scripts/ci-deps.sh

test: deps ## Run the whole test suite (installs what it needs first)
	go vet ./...
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	go test -race -count=1 -timeout 15m $(RACE_PKGS)
	@if [ -n "$(PLAIN_PKGS)" ]; then go test -count=1 -timeout 15m $(PLAIN_PKGS); fi

test-short: ## Fast subset (skips the slow drills and the gonew round trip)
	go test -short -count=1 ./...

bench: ## Go benchmarks of the middleware chain, limiter and breaker
	go test -run '^$$' -bench . -benchmem ./internal/...

bench-http: ## wrk: full chain vs bare Gin on loopback (writes figures to stdout)
	bash scripts/bench-http.sh

drills: deps ## Fault drills against the real binary, redis-server and downstream; prints figures
	go test -count=1 -v -run 'Drill|GracefulShutdown' ./cmd/api/ | grep -E '^(=== RUN|--- |\s+\w+_test.go|ok|FAIL|PASS)'
	go test -count=1 -v -run 'RedisKilled|RedisSlow|RedisScriptFlush|RedisDownAtBoot|RedisFlood|BreakerOpensProbesAndCloses|BreakerSlowDownstream|ClientIdleCloseUnderKeepAliveLoad|RetryBudgetCaps' ./internal/ratelimit/ ./internal/resilience/ | grep -E '^(=== RUN|--- |\s+\w+_test.go|ok|FAIL|PASS)'

lint: ## go vet (Linux, macOS, Windows) + gofmt
	go vet ./...
	GOOS=darwin go vet ./...
	GOOS=windows go vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
