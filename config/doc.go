// Package config reads shoal.yaml, the one file that configures every
// Shoal process: brokers, frontends and workers read the same file and each
// takes its own part.
//
//	cfg, err := config.Load("shoal.yaml")
//	if err != nil {
//		fmt.Fprintln(os.Stderr, err) // every problem, one per line
//		os.Exit(3)                   // restarting will not help
//	}
//	b, err := cfg.BrokerByName("b0")
//
// # The file
//
// A minimal config names one broker; everything else has a default
// (see Default and the field comments):
//
//	brokers:
//	  - name: b0
//	    clients: tcp://127.0.0.1:5555   # bound by the broker for frontends and clients
//	    workers: tcp://127.0.0.1:5556   # bound by the broker for workers
//	frontend:
//	  routes:
//	    - {method: GET, path: /echo, service: echo}
//	    - method: POST
//	      path: /users/{id}
//	      service: users
//	      timeout: 2s
//
// The top-level sections are log, brokers (a list: several brokers run side
// by side, and every client and worker connects to all of them), broker
// (settings shared by all brokers), transport (every ZeroMQ link), frontend
// (the HTTP gateway and its routes), workers, redis (where the task queue
// lives) and queue (task defaults and queue consumers; see config/queue.go). The repository's
// shoal.yaml shows every option with a comment.
//
// The supervisor section and the programs list configure `shoal
// supervisor` (programs.go; the supervisor package runs them). Programs are
// checked like everything else, each problem with its file:line: names,
// unknown depends_on entries, dependency cycles (named: "a → b → a"),
// numprocs, autorestart and stopsignal values, readiness checks and
// placeholders ({shoal}, {config}, {run_dir}, {index}, {index+N}).
// Relative paths in the file are relative to the file's directory
// (Config.Path).
//
// Values:
//
//   - Durations are Go durations with a unit: "250ms", "5s", "1m30s".
//   - Sizes are bytes, or a whole number with a unit: 1048576, "64KiB",
//     "1MiB", "2MB" (KB, MB, GB, TB are powers of 1000; KiB, MiB, GiB, TiB
//     powers of 1024).
//   - Addresses to listen on are host:port; an empty host means every
//     interface. Broker endpoints are tcp://host:port. Every address and
//     endpoint in the file is bound by some process, so port 0 (a free
//     port) is accepted everywhere; it is meant for tests, since nobody
//     else can find such a port.
//   - A key with no value (or ~) is the same as leaving the key out: the
//     default applies. To turn off an optional address, write "".
//
// Decoding is strict: unknown keys and values of the wrong type are
// errors. Top-level keys starting with "x-" are ignored, so they can hold
// YAML anchors to merge elsewhere with "<<: *name".
//
// # Problems
//
// Parse and Load check everything and report every problem at once, in
// file order, as Errors, one Problem per line:
//
//	shoal.yaml:14:16: frontend.routes[2].timeout: must be positive, got "-1s"
//	shoal.yaml:17:7: frontend.routes[3].servce: unknown key; did you mean "service"?
//	$SHOAL_LOG_LEVEL: log.level: must be one of debug, info, warn, error, got "verbose"
//
// A field the file leaves out is reported at its parent's line, or with
// the file name alone when it has none. `shoal check -c shoal.yaml` runs
// the same checks and exits.
//
// # Environment
//
// These variables override the file (after it is read, before validation);
// one that is set, even to "", wins. A problem with the value names the
// variable.
//
//	SHOAL_LOG_LEVEL                log.level
//	SHOAL_LOG_FORMAT               log.format
//	SHOAL_FRONTEND_LISTEN          frontend.listen
//	SHOAL_FRONTEND_ADMIN           frontend.admin
//	SHOAL_BROKER_<NAME>_CLIENTS    brokers[].clients of broker NAME
//	SHOAL_BROKER_<NAME>_WORKERS    brokers[].workers of broker NAME
//	SHOAL_BROKER_<NAME>_ADMIN      brokers[].admin of broker NAME
//	SHOAL_REDIS_ADDR               redis.addr
//	SHOAL_REDIS_PASSWORD           redis.password
//
// NAME is the broker's name upper-cased with '-' as '_': broker "edge-1"
// reads SHOAL_BROKER_EDGE_1_CLIENTS.
//
// This package imports nothing of Shoal's; the components validate their
// own options again when they start.
package config
