# Sluice — one static binary: MQTT broker, durable queues, device simulator, load tester.
# `make run` and `make test` are all a new machine needs (see README.md).

GO        ?= go
BIN       ?= bin/sluice
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
FUZZTIME  ?= 20s
TESTFLAGS ?=

.PHONY: all build run test test-deps bench bench-compare chaos lint fuzz cross clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/sluice

## run: build, then start the broker on the embedded default config (127.0.0.1 only).
run: build
	./$(BIN) serve

## test: the whole suite, with the race detector. Tests that use Mosquitto as a peer fail (never skip)
## when it is missing, so test-deps installs it from Debian first.
test: test-deps
	SLUICE_REQUIRE_MOSQUITTO=1 $(GO) test -race -count=1 -timeout 30m $(TESTFLAGS) ./...

test-deps:
	@if ! { command -v mosquitto || test -x /usr/sbin/mosquitto; } >/dev/null 2>&1 || ! command -v mosquitto_pub >/dev/null 2>&1; then \
	  echo "make: installing mosquitto and mosquitto-clients from Debian (the tests use them as peers)"; \
	  SUDO=; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends mosquitto mosquitto-clients >/dev/null; \
	fi

## bench: Go benchmarks (figures in README.md). BENCH narrows, e.g. make bench BENCH=Append PKG=./wal
BENCH ?= .
PKG   ?= ./...
BENCHFLAGS ?=
bench:
	$(GO) test -run '^$$' -bench '$(BENCH)' -benchmem $(BENCHFLAGS) $(PKG)

## bench-compare: Sluice and Mosquitto (installed from Debian when missing) side by side on loopback;
## writes out/bench-compare.{json,html}.
bench-compare: build
	loadtest/benchcompare.sh

## chaos: the full fault and abuse suite (kill -9 loops, full disk, hostile clients); prints a summary.
chaos:
	SLUICE_CHAOS=full $(GO) test -race -count=1 -timeout 60m -v -run . ./loadtest/chaos

## lint: formatting, vet, and the import rules of DESIGN.md.
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) test -count=1 ./cmd/internal/lint

## fuzz: every FuzzXxx target for FUZZTIME each.
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

## cross: static builds for the gateways' platforms.
cross:
	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o dist/sluice-linux-amd64 ./cmd/sluice
	CGO_ENABLED=0 GOOS=linux GOARCH=arm64 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o dist/sluice-linux-arm64 ./cmd/sluice
	CGO_ENABLED=0 GOOS=linux GOARCH=arm GOARM=7 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o dist/sluice-linux-armv7 ./cmd/sluice

clean:
	rm -rf bin dist
