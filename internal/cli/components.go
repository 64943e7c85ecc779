package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/shoal-dev/shoal/broker"
	"github.com/shoal-dev/shoal/config"
	"github.com/shoal-dev/shoal/frontend"
	"github.com/shoal-dev/shoal/internal/zsock"
	"github.com/shoal-dev/shoal/workers"
	"github.com/shoal-dev/shoal/workers/example"
)

func transport(c *config.Config) zsock.Options {
	return zsock.Options{
		MaxFrame:         int64(c.Transport.MaxFrame),
		HandshakeTimeout: c.Transport.HandshakeTimeout.D(),
		WriteTimeout:     c.Transport.WriteTimeout.D(),
	}
}

// setProcs applies a -procs flag: the broker's routing is one loop and a
// worker process is one of many, so both run best on one OS thread (fewer
// thread wake-ups per request; measured in docs/performance.md). An
// explicit GOMAXPROCS in the environment wins; 0 means every core.
func setProcs(n int) {
	if os.Getenv("GOMAXPROCS") != "" {
		return
	}
	if n > 0 {
		runtime.GOMAXPROCS(n)
	}
}

// serveMetrics serves set and the process-wide metrics as Prometheus text
// on addr's /metrics, for processes without an admin listener of their own
// (workers, consumers). The returned func closes the listener.
func serveMetrics(what, addr string, set *metrics.Set) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("cannot listen for metrics on %s: %w", addr, err)
	}
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		set.WritePrometheus(w)
		metrics.WritePrometheus(w, true)
	}))
	slog.Info(what+" metrics", "url", "http://"+ln.Addr().String()+"/metrics")
	return func() { ln.Close() }, nil
}

func processName() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s/%d", host, os.Getpid())
}

// ---- broker ----

func runBroker(args []string) int {
	if len(args) > 0 && args[0] == "stats" {
		return runBrokerStats(args[1:])
	}
	fs, path := flags("broker")
	name := fs.String("name", "", "which broker of the config to run (default: the first)")
	procs := fs.Int("procs", 1, "OS threads running Go code (GOMAXPROCS); 0 = every core")
	if fs.Parse(args) != nil {
		return exitUsage
	}
	setProcs(*procs)
	cfg, code := load(*path)
	if cfg == nil {
		return code
	}
	bc, err := pickBroker(cfg, *name)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return exitConfig
	}
	b, err := broker.New(broker.Options{
		Name: bc.Name, Clients: bc.Clients, Workers: bc.Workers, Admin: bc.Admin,
		Heartbeat: cfg.Broker.Heartbeat.D(), Liveness: cfg.Broker.Liveness,
		QueueLimit: cfg.Broker.QueueLimit, DefaultTimeout: cfg.Broker.DefaultTimeout.D(),
		Transport: transport(cfg), Logger: slog.Default(),
		EventsIn: bc.EventsIn, EventsOut: bc.EventsOut, Events: brokerEvents(cfg), // events.go
	})
	if err != nil {
		return fail(err)
	}
	ctx, stop := signalContext()
	defer stop()
	return fail(b.Run(ctx))
}

func pickBroker(cfg *config.Config, name string) (config.Broker, error) {
	if name == "" {
		return cfg.Brokers[0], nil
	}
	return cfg.BrokerByName(name)
}

func runBrokerStats(args []string) int {
	fs, path := flags("broker stats")
	name := fs.String("name", "", "which broker (default: every broker of the config)")
	asJSON := fs.Bool("json", false, "print JSON")
	if fs.Parse(args) != nil {
		return exitUsage
	}
	cfg, err := config.Load(*path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return exitConfig
	}
	targets := cfg.Brokers
	if *name != "" {
		bc, err := cfg.BrokerByName(*name)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return exitConfig
		}
		targets = []config.Broker{bc}
	}
	code := exitOK
	client := http.Client{Timeout: 5 * time.Second}
	for _, bc := range targets {
		st, err := fetchStats(&client, bc.Admin)
		if err != nil {
			fmt.Fprintf(os.Stderr, "broker %s: %v\n", bc.Name, err)
			code = exitFailure
			continue
		}
		if *asJSON {
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			enc.Encode(st)
			continue
		}
		printStats(os.Stdout, st)
	}
	return code
}

func fetchStats(c *http.Client, admin string) (broker.Stats, error) {
	var st broker.Stats
	if admin == "" {
		return st, fmt.Errorf("no admin address configured")
	}
	resp, err := c.Get("http://" + admin + "/stats")
	if err != nil {
		return st, fmt.Errorf("cannot reach admin endpoint: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("admin endpoint answered %s", resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

func printStats(w io.Writer, st broker.Stats) {
	fmt.Fprintf(w, "broker %s: %d clients, %d live requests, %d workers died, %d late replies\n",
		st.Broker, st.Clients, st.Live, st.WorkersDied, st.LateReplies)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tWORKERS\tQUEUED\tIN FLIGHT\tDISPATCHED\tREPLIED\tREQUEUED\tEXPIRED\tDROPPED")
	for _, s := range st.Services {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", s.Service, s.Workers, s.Queued, s.InFlight,
			s.Dispatched, s.Replied, s.Requeued, s.Expired, s.Dropped)
	}
	tw.Flush()
	if len(st.Workers) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "WORKER\tPROCESS\tSERVICES\tCREDIT\tIN FLIGHT\tDRAINING")
		for _, wk := range st.Workers {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%v\n", wk.Name, wk.Process, strings.Join(wk.Services, ","), wk.Credit, wk.InFlight, wk.Draining)
		}
		tw.Flush()
	}
	var bad []string
	for k, v := range st.Malformed {
		bad = append(bad, fmt.Sprintf("%s=%d", k, v))
	}
	if len(bad) > 0 {
		fmt.Fprintf(w, "malformed: %s\n", strings.Join(bad, " "))
	}
	fmt.Fprintln(w)
}

// ---- frontend ----

func runFrontend(args []string) int {
	fs, path := flags("frontend")
	if fs.Parse(args) != nil {
		return exitUsage
	}
	cfg, code := load(*path)
	if cfg == nil {
		return code
	}
	f := cfg.Frontend
	routes := make([]frontend.Route, len(f.Routes))
	for i, r := range f.Routes {
		routes[i] = frontend.Route{Method: r.Method, Path: r.Path, Service: r.Service, Call: r.Call,
			Timeout: r.Timeout.D(), Attempts: r.Attempts, Idempotent: r.Idempotent}
	}
	client, err := broker.NewClient(broker.ClientOptions{Endpoints: cfg.ClientEndpoints(),
		Heartbeat: cfg.Broker.Heartbeat.D(), Liveness: cfg.Broker.Liveness, Transport: transport(cfg), Logger: slog.Default()})
	if err != nil {
		return fail(err)
	}
	defer client.Close()
	events, stopEvents, err := frontendEvents(cfg) // events.go
	if err != nil {
		return fail(err)
	}
	defer stopEvents()
	srv, err := frontend.New(frontend.Options{
		Listen: f.Listen, Admin: f.Admin, MaxBody: int(f.MaxBody),
		ReadTimeout: f.ReadTimeout.D(), WriteTimeout: f.WriteTimeout.D(), IdleTimeout: f.IdleTimeout.D(),
		ShutdownTimeout: f.ShutdownTimeout.D(), Timeout: f.Timeout.D(), MaxConns: f.MaxConns,
		ForwardHeaders: f.ForwardHeaders, Routes: routes, Logger: slog.Default(), Process: processName(),
		Events: events,
	}, client)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: frontend: %v\n", cfg.File, err)
		return exitConfig
	}
	ctx, stop := signalContext()
	defer stop()
	slog.Info("frontend listening", "url", "http://"+f.Listen, "brokers", cfg.ClientEndpoints())
	return fail(srv.Run(ctx))
}

// ---- workers ----

func runWorker(args []string) int {
	fs, path := flags("worker")
	metricsAddr := fs.String("metrics", "", "host:port for /metrics (default: workers.metrics of the config)")
	conc := fs.Int("concurrency", 0, "requests handled at once (default: workers.concurrency)")
	name := fs.String("name", "", "name shown in broker stats (default: NAME)")
	procs := fs.Int("procs", 1, "OS threads running Go code (GOMAXPROCS); 0 = every core. Scale a service with more processes")
	// Go's flag package stops at the first non-flag: accept NAME first.
	var worker string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		worker, args = args[0], args[1:]
	}
	if fs.Parse(args) != nil {
		return exitUsage
	}
	if worker == "" && fs.NArg() > 0 {
		worker = fs.Arg(0)
	}
	setProcs(*procs)
	ex, ok := example.Registry[worker]
	if !ok {
		fmt.Fprintf(os.Stderr, "shoal worker: unknown worker %q (known: %s)\n", worker, strings.Join(example.Names(), ", "))
		return exitUsage
	}
	cfg, code := load(*path)
	if cfg == nil {
		return code
	}
	mux := workers.NewServeMux()
	ex.Register(mux)
	o := workers.Options{
		Brokers: cfg.WorkerEndpoints(), Concurrency: cfg.Workers.Concurrency,
		Heartbeat: cfg.Broker.Heartbeat.D(), Liveness: cfg.Broker.Liveness,
		DrainTimeout: cfg.Workers.DrainTimeout.D(), Transport: transport(cfg),
		Name: worker, Logger: slog.Default(), Metrics: metrics.NewSet(),
		EventsIn: cfg.EventsInEndpoints(), EventsOut: cfg.EventsOutEndpoints(),
	}
	if ex.NeedsCalls {
		o.CallBrokers = cfg.ClientEndpoints()
	}
	if *conc > 0 {
		o.Concurrency = *conc
	}
	if *name != "" {
		o.Name = *name
	}
	srv, err := workers.NewServer(o, mux)
	if err != nil {
		return fail(err)
	}
	addr := cfg.Workers.Metrics
	if *metricsAddr != "" {
		addr = *metricsAddr
	}
	if addr != "" {
		stopMetrics, err := serveMetrics("worker", addr, o.Metrics)
		if err != nil {
			return fail(err)
		}
		defer stopMetrics()
	}
	ctx, stop := signalContext()
	defer stop()
	return fail(srv.Run(ctx))
}
