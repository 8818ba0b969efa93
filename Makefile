# Aftercare. `make demo` runs the whole loop locally; `make test` runs every test.
GO      ?= go
BIN     ?= bin
TIMEOUT ?= 30m

.PHONY: all build agent test-armv7 demo test vet bench fuzz clean sbom

all: build

## build: the server, the CLI, the agent and the fleet simulator into ./bin
build:
	$(GO) build -o $(BIN)/ ./server/cmd/aftercare-server ./server/cmd/aftercare ./agent/cmd/aftercare-agent ./agent/cmd/aftercare-sim

## agent: static, stripped agent binaries for the devices (no cgo):
## bin/aftercare-agent-linux-armv7 and bin/aftercare-agent-linux-arm64
AGENT_BUILD = CGO_ENABLED=0 GOOS=linux $(GO) build -trimpath -ldflags='-s -w -buildid='
agent:
	GOARCH=arm GOARM=7 $(AGENT_BUILD) -o $(BIN)/aftercare-agent-linux-armv7 ./agent/cmd/aftercare-agent
	GOARCH=arm64 $(AGENT_BUILD) -o $(BIN)/aftercare-agent-linux-arm64 ./agent/cmd/aftercare-agent

## test-armv7: the agent's unit tests cross-compiled for armv7 and run under qemu-user
## (Debian's qemu-user-static; no -race, which Go does not support on 32-bit ARM)
QEMU_ARM ?= qemu-arm-static
test-armv7:
	AFTERCARE_TEST_EXEC=$(QEMU_ARM) CGO_ENABLED=0 GOOS=linux GOARCH=arm GOARM=7 $(GO) test -exec $(QEMU_ARM) -timeout $(TIMEOUT) ./agent/... ./firmware/... ./protocol/... ./internal/...

## sbom: a CycloneDX SBOM of the agent binary from its Go build information (bin/aftercare-agent.cdx.json)
sbom: build
	./$(BIN)/aftercare sbom go-binary $(BIN)/aftercare-agent --name aftercare-agent -o $(BIN)/aftercare-agent.cdx.json

## demo: server + embedded broker + SQLite + simulated devices in two sites, a signed release rolled out
demo: build
	./$(BIN)/aftercare demo

## test: vet, then every test with the race detector (needs Mosquitto and PostgreSQL; see README).
## -count=1: the e2e and fleet tests build the binaries they run, which Go's
## test cache does not see, so a cached pass could hide a change.
test: vet
	$(GO) test -race -count=1 -timeout $(TIMEOUT) ./...

vet:
	$(GO) vet ./...

## bench: benchmarks; each reports its figures as ratios against a baseline measured in the same run
## (the vulnerability benchmarks compare with osv-scanner, built from tools/osv-scanner, pinned there)
bench: $(BIN)/osv-scanner
	OSV_SCANNER=$(CURDIR)/$(BIN)/osv-scanner $(GO) test -run '^$$' -bench . -benchmem ./...

$(BIN)/osv-scanner: tools/osv-scanner/go.mod
	cd tools/osv-scanner && $(GO) build -o $(CURDIR)/$(BIN)/osv-scanner github.com/google/osv-scanner/v2/cmd/osv-scanner

## fuzz: run each fuzz target briefly (FUZZTIME=30s by default)
FUZZTIME ?= 30s
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParseManifest -fuzztime $(FUZZTIME) ./firmware
	$(GO) test -run '^$$' -fuzz FuzzOpenBundle -fuzztime $(FUZZTIME) ./firmware
	$(GO) test -run '^$$' -fuzz FuzzStreamImage -fuzztime $(FUZZTIME) ./firmware
	$(GO) test -run '^$$' -fuzz FuzzParseStateReport -fuzztime $(FUZZTIME) ./protocol
	$(GO) test -run '^$$' -fuzz FuzzOpen -fuzztime $(FUZZTIME) ./agent/internal/offline
	$(GO) test -run '^$$' -fuzz FuzzParseHint -fuzztime $(FUZZTIME) ./protocol
	$(GO) test -run '^$$' -fuzz FuzzParseAssignmentCustom -fuzztime $(FUZZTIME) ./protocol
	$(GO) test -run '^$$' -fuzz FuzzParseCSR -fuzztime $(FUZZTIME) ./server/internal/deviceca
	$(GO) test -run '^$$' -fuzz FuzzParse -fuzztime $(FUZZTIME) ./server/internal/sbom
	$(GO) test -run '^$$' -fuzz FuzzReadOSV -fuzztime $(FUZZTIME) ./server/internal/vuln/feed
	$(GO) test -run '^$$' -fuzz FuzzReadNVD -fuzztime $(FUZZTIME) ./server/internal/vuln/feed
	$(GO) test -run '^$$' -fuzz FuzzReadKEV -fuzztime $(FUZZTIME) ./server/internal/vuln/feed
	$(GO) test -run '^$$' -fuzz FuzzReadEPSS -fuzztime $(FUZZTIME) ./server/internal/vuln/feed

clean:
	rm -rf $(BIN) aftercare-demo
