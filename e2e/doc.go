// Package e2e runs the shoal binary as real processes on loopback and checks
// the acceptance properties that only show across processes: worker and
// broker deaths, hostile bytes on every port, stuck peers, several brokers,
// and a worker written in another language.
//
// TestMain builds ./cmd/shoal once (or uses $SHOAL_BIN). Each test writes
// its own shoal.yaml with free ports into t.TempDir(), starts the processes
// it needs with their output in per-process log files (the tail of each is
// printed when a test fails), waits for readiness by polling, and stops
// every process it started when it ends.
//
// Run it with the rest of the suite (`make test` builds bin/shoal and sets
// SHOAL_BIN), or alone:
//
//	go test -race -count=1 ./e2e/
//
// Environment: SHOAL_BIN uses that binary instead of building one;
// SHOAL_E2E_LOGS=dir keeps every test's shoal.yaml and process logs under
// dir; SHOAL_E2E_RACE=1 builds the binary with -race; CI=true turns a
// missing dependency (python3 with zmq and msgpack) into a failure instead
// of a skip.
package e2e
