// Package supervisor is Shoal's process manager: it runs the programs of
// shoal.yaml's programs: list as child processes, keeps them up, and
// answers `shoal ctl` on a unix socket. It execs binaries (redis-server,
// `shoal broker`, `shoal worker echo`, anything) and never links their
// code; it imports nothing of Shoal's but config.
//
//	sup, err := supervisor.New(supervisor.Options{Config: cfg})
//	if err != nil { … }
//	go func() { <-hup; sup.Reload() }()
//	err = sup.Run(ctx) // until ctx ends; then stops every child, in reverse order
//
// # Programs and instances
//
// A program runs as numprocs instances, NAME:0, NAME:1, …; each gets its
// index in SHOAL_INSTANCE and, through {index} or {index+N}, in its
// command line (ports, for instance). Programs start in dependency order
// (depends_on): a program starts once every program it depends on is
// ready, and stopping runs the other way round.
//
// An instance moves through these states:
//
//	STOPPED  ──start──►  STARTING  ──ready check passes, or up for startsecs──►  RUNNING
//	STARTING/RUNNING  ──dies──►  replaced at once if it was RUNNING and up for startsecs;
//	                             else a failed start: BACKOFF (exponential, capped, jittered)
//	                             and, after startretries failed starts in a row, FATAL
//	FATAL    ──after supervisor.fatal_retry──►  STARTING (the slow retry)
//	RUNNING  ──dies, autorestart says no──►  EXITED
//	any      ──stop──►  STOPPING (stopsignal to its process group; SIGKILL after
//	                    stopwaitsecs)  ──►  STOPPED
//
// # Processes
//
// Every child runs in its own process group with a parent-death signal
// (SIGKILL): children are started from one goroutine locked to its OS
// thread, so they die with the supervisor even when it is killed with
// SIGKILL. One loop goroutine owns all state; it reaps children on SIGCHLD
// and, when a child dies, first kills whatever is left of its process
// group (while the dead leader still holds the group's id), then queues a
// notice to every broker's admin endpoint (POST /died?process=host/pid, so
// the broker re-dispatches that worker's requests at once), then starts
// the replacement. The gap between death and the replacement's start is
// recorded (see Gaps).
//
// Each instance's stdout and stderr go through pipes to size-rotated files
// in the log directory (NAME.INDEX.stdout.log, NAME.INDEX.stderr.log), and
// with tee: true also to the supervisor's own stderr, each line prefixed
// with the instance's name.
//
// # Control
//
// The control API is HTTP with JSON bodies over the unix socket
// supervisor.socket (mode 0600; the peer must be root or the supervisor's
// own user). Client is its Go client and `shoal ctl` its command line.
// Names address instances: "NAME:INDEX", "NAME" (every instance of a
// program, or of a group when no program has that name), "GROUP:*" and
// "all".
//
// Reload (SIGHUP, `shoal ctl reload`) reads the config file again. A file
// with problems is refused whole and nothing changes; otherwise programs
// added start, programs removed stop, programs whose process would differ
// (command, env, dir, user, or the supervisor's env; for a program given
// {config}, the settings it reads there: every section but supervisor and
// programs) restart, a numprocs
// change adds or stops instances, and everything else is applied in
// place: those instances keep running with the same pids.
package supervisor
