# shortleaf — the two commands a newcomer needs are `make demo` and `make test`.
GO      ?= go
BUF     := tools/bin/buf
LINTER  := tools/bin/golangci-lint
PKGS    := ./...

.PHONY: all build install deps test lint monitoring-check generate generate-check demo bench loadtest fuzz soak clean

all: build

build:
	$(GO) build $(PKGS)

## install: the shortleaf binary into $(go env GOPATH)/bin, with its commit (shortleaf version)
install:
	$(GO) install -buildvcs=auto ./cmd/shortleaf

## test: linters, generated code current, alert rules checked and unit-tested (promtool), vet, every test with the race detector, the TPM
## attestor's tests on the TPM 2.0 simulator (cgo, -tags tpmsimulator), then the
## 30-day rotation and 5-day root-lifetime simulations (single-goroutine logic: run once
## without -race, after the timing-sensitive tests rather than beside them)
test: deps lint generate-check monitoring-check
	$(GO) vet $(PKGS)
	$(GO) vet -tags tpmsimulator ./attest/tpm/... ./pkg/harness/
	$(GO) test -race -short -count=1 -timeout 20m $(PKGS)
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 10m -tags tpmsimulator -run 'TPM' ./attest/tpm/ ./pkg/harness/
	$(GO) test -count=1 -timeout 10m -run 'TestThirtyDaysOfRotation|TestRootLifetimeRotation' ./ca/

## monitoring-check: the alert rules are valid and each passes its promtool unit tests
monitoring-check: deps
	promtool check rules docs/monitoring/alerts.yml
	cd docs/monitoring && promtool test rules alerts_test.yml

## deps: what the tests need beyond Go (softhsm2, from Debian's packages)
deps:
	bash scripts/install-deps.sh

$(LINTER): tools/go.mod tools/go.sum
	cd tools && $(GO) build -o bin/golangci-lint github.com/golangci/golangci-lint/v2/cmd/golangci-lint

## lint: gofmt and golangci-lint (pinned in tools/go.mod, config in .golangci.yml)
lint: $(LINTER)
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change: $$unformatted"; exit 1; fi
	$(LINTER) run ./...

$(BUF): tools/go.mod tools/go.sum
	cd tools && $(GO) build -o bin/buf github.com/bufbuild/buf/cmd/buf

## generate: regenerate the Go code of proto/ (buf pinned in tools/go.mod)
generate: $(BUF)
	cd proto && ../$(BUF) lint && ../$(BUF) generate

## generate-check: fail if the committed generated code is stale
generate-check: generate
	@git diff --exit-code -- proto/ || (echo "generated code in proto/ is stale: run make generate" && exit 1)

## demo: dev mode with 1-minute SVIDs, two go-spiffe workloads doing mTLS across a renewal
demo:
	bash scripts/demo.sh

## bench: the issuance benchmarks (see README for how to read them)
bench:
	bash scripts/bench.sh

## loadtest: a real server under agents' load: registration burst, first issuance, steady renewal, taint storm
loadtest:
	bash scripts/loadtest.sh

## soak: the SIGKILL crash-consistency tests with 200 kills each (make test deals 20)
soak:
	SHORTLEAF_CRASH_CYCLES=200 $(GO) test -count=1 -timeout 60m -run 'SIGKILL' -v ./pkg/harness/

## fuzz: run each fuzz target briefly
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParseX509SVIDCSR -fuzztime 30s ./ca/
	$(GO) test -run '^$$' -fuzz FuzzParseSelector -fuzztime 30s ./attest/
	$(GO) test -run '^$$' -fuzz FuzzParseServerConfig -fuzztime 30s ./pkg/config/
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime 30s ./pkg/federation/
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime 30s ./attest/jointoken/
	$(GO) test -run '^$$' -fuzz FuzzParseAgentConfig -fuzztime 30s ./pkg/config/
	$(GO) test -run '^$$' -fuzz FuzzLoadUpstream -fuzztime 30s ./pkg/config/
	$(GO) test -run '^$$' -fuzz FuzzEntryFromProto -fuzztime 30s ./pkg/api/
	$(GO) test -run '^$$' -fuzz FuzzCheckBatch -fuzztime 30s ./pkg/api/
	$(GO) test -run '^$$' -fuzz FuzzAttestAgent -fuzztime 30s ./pkg/api/
	$(GO) test -run '^$$' -fuzz FuzzFederationFromProto -fuzztime 30s ./pkg/api/
	$(GO) test -run '^$$' -fuzz FuzzValidateJWTSVID -fuzztime 30s ./pkg/workloadapi/
	$(GO) test -run '^$$' -fuzz FuzzParseCgroups -fuzztime 30s ./attest/k8s/
	$(GO) test -run '^$$' -fuzz FuzzParsePodList -fuzztime 30s ./attest/k8s/
	$(GO) test -run '^$$' -fuzz FuzzParsePayload -fuzztime 30s ./attest/x509pop/
	$(GO) test -run '^$$' -fuzz FuzzParsePayload -fuzztime 30s ./attest/k8spsat/
	$(GO) test -run '^$$' -fuzz FuzzOfflineToken -fuzztime 30s ./attest/k8spsat/
	$(GO) test -run '^$$' -fuzz FuzzAttestPayload -fuzztime 30s ./attest/tpm/
	$(GO) test -run '^$$' -fuzz FuzzAKParameters -fuzztime 30s ./attest/tpm/
	$(GO) test -run '^$$' -fuzz FuzzSDSRequest -fuzztime 30s ./pkg/workloadapi/
	$(GO) test -run '^$$' -fuzz FuzzParsePEMCertificates -fuzztime 30s ./pkg/federation/
	$(GO) test -run '^$$' -fuzz FuzzRelationshipValidate -fuzztime 30s ./pkg/federation/
	$(GO) test -run '^$$' -fuzz FuzzDecodeJournal -fuzztime 30s ./ca/
	$(GO) test -run '^$$' -fuzz FuzzReadIdentity -fuzztime 30s ./pkg/agent/

clean:
	rm -rf tools/bin
