# hostscale: build, test and run from the repository root.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

MODULES   := proto internal controller agent balancer
TOOLS_BIN := $(CURDIR)/.tools/bin
export PATH := $(TOOLS_BIN):$(PATH)
export GOBIN := $(TOOLS_BIN)

# Pinned tool versions: bump deliberately, then `make proto` and commit.
BUF_VERSION                := v1.75.0
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
GRPCURL_VERSION            := v1.9.4

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/hostscale/hostscale/internal/version.Version=$(VERSION)
GOTEST_FLAGS ?= -race -count=1 -timeout 12m

BINARIES := \
	controller/cmd/hostscale-controller \
	controller/cmd/hostscale \
	agent/cmd/hostscale-agent \
	balancer/cmd/hostscale-balancer \
	internal/cmd/hostscale-demo

.PHONY: all dev load bench-instances bench-autoscale bench-scale-to-zero bench-fleet build tools proto lint vet fmt-check gen-check test test-unit bench bench-proxy bench-proxy-tls bench-proxy-h2 soak cluster cluster-down clean

all: build

## build: every binary into bin/ (static, CGO off)
build:
	@mkdir -p bin
	@for b in $(BINARIES); do \
		mod=$${b%%/*}; name=$$(basename $$b); \
		echo "go build $$name"; \
		(cd $$mod && CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o $(CURDIR)/bin/$$name ./$${b#*/}); \
	done

## tools: buf, the protoc plugins and grpcurl at pinned versions, into .tools/bin
tools: $(TOOLS_BIN)/buf $(TOOLS_BIN)/protoc-gen-go $(TOOLS_BIN)/protoc-gen-go-grpc $(TOOLS_BIN)/grpcurl

$(TOOLS_BIN)/buf:
	go install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(TOOLS_BIN)/protoc-gen-go:
	go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(TOOLS_BIN)/protoc-gen-go-grpc:
	go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
$(TOOLS_BIN)/grpcurl:
	go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)

## proto: regenerate the Go code from proto/ (commit the result)
proto: tools
	buf generate

## lint: buf lint, generated code up to date, gofmt, go vet on every module
lint: tools gen-check fmt-check vet
	buf lint

gen-check: tools
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	buf generate -o $$tmp; \
	if ! diff -r -x '*.proto' -x go.mod -x go.sum $$tmp/proto/hostscale proto/hostscale; then \
		echo "generated code is stale: run 'make proto' and commit the result" >&2; exit 1; \
	fi; echo "generated code up to date"

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$') 2>&1); \
	if [ -n "$$out" ]; then echo "gofmt needed:" >&2; echo "$$out" >&2; exit 1; fi

vet:
	@for m in $(MODULES); do echo "go vet $$m"; (cd $$m && go vet ./...); done

## test: lint, then go test -race over every module
test: lint test-unit

test-unit:
	@for m in $(MODULES); do echo "go test $$m"; (cd $$m && go test $(GOTEST_FLAGS) ./...); done

## bench: write throughput and latency, API vs bare raft (see docs/benchmarks.md)
bench: build
	cd controller && go run ./internal/raftbench $(BENCH_ARGS)

## bench-proxy: the balancer against nginx and HAProxy, one core each (installs them)
bench-proxy:
	bash bench/proxy.sh

## bench-proxy-tls: the same with each proxy terminating TLS
bench-proxy-tls:
	TLS=1 bash bench/proxy.sh

## bench-proxy-h2: the same with HTTP/2 clients (h2load) of each proxy over TLS
bench-proxy-h2:
	H2=1 bash bench/proxy.sh

## soak: the slow end-to-end suites
soak:
	@for m in $(MODULES); do (cd $$m && HOSTSCALE_SLOW=1 go test -race -count=1 -timeout 60m ./...); done

## dev: build, then run a controller, an agent, a balancer on 127.0.0.1:8080 and the demo pool (Ctrl-C stops all)
dev: build
	scripts/dev.sh

## load: with `make dev` running, traffic in steps at 127.0.0.1:8080 (watch the demo pool scale)
load:
	@test -x bin/hostscale || $(MAKE) build
	bin/hostscale load -url http://127.0.0.1:8080/ -pool demo -rates 20,150,300,150,0,0 -step 20s

## bench-instances: ScalePool to serving, and removal to exit, with every binary (docs/benchmarks.md)
bench-instances:
	cd internal && HOSTSCALE_BENCH=1 go test -count=1 -v -run TestBench_scaleLatency ./e2e/ | grep -E 'ScalePool|^(---|ok|FAIL)'

## bench-autoscale: load step to a new instance serving, median of 5 (docs/benchmarks.md)
bench-autoscale:
	cd internal && HOSTSCALE_BENCH=1 go test -count=1 -v -run TestBench_autoscaleReaction ./e2e/ | grep -E 'run [0-9]|reaction|^(---|ok|FAIL)'

## bench-scale-to-zero: cold start of a pool scaled to zero through the balancer, three runs (docs/benchmarks.md)
bench-scale-to-zero:
	cd internal && go test -count=3 -v -run TestAutoscale_scaleToZeroAndBack ./e2e/ | grep -E 'scaled to zero|answered|^(---|ok|FAIL)'

## bench-fleet: 1,000 simulated agents on three controllers: connect, samples, placement, failover (docs/benchmarks.md)
bench-fleet:
	cd internal && HOSTSCALE_BENCH=1 go test -count=1 -v -timeout 20m -run TestBench_fleetScale ./e2e/ | grep -E 'fleet:|steady:|place:|scale ±|failover:|stream failures|^(---|ok|FAIL)'

## cluster: three controllers in the background on 127.0.0.1:7700/7710/7720
cluster: build
	scripts/cluster.sh up

## cluster-down: stop the processes `make cluster` started
cluster-down:
	scripts/cluster.sh down

clean:
	rm -rf bin .cluster
