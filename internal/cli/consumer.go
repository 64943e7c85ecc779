package cli

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/VictoriaMetrics/metrics"
	"github.com/shoal-dev/shoal/config"
	"github.com/shoal-dev/shoal/queue"
	"github.com/shoal-dev/shoal/workers/example"
)

func init() {
	register("consumer", "run an example queue consumer: consumer NAME", runConsumer)
	// `shoal worker notes` enqueues into the config's Redis, but the
	// worker command hands example workers no config: until it does, the
	// notes worker reads the file named by -c itself.
	example.NotesQueue = func() (*queue.Client, error) {
		cfg, err := config.Load(configPathFromArgs(os.Args[1:]))
		if err != nil {
			return nil, err
		}
		return queue.NewClient(queueRedis(cfg), queueClientOptions(cfg)), nil
	}
}

// configPathFromArgs finds the -c flag's value in a command line, as the
// flags helper reads it; default shoal.yaml.
func configPathFromArgs(args []string) string {
	for i, a := range args {
		if a == "--" {
			break
		}
		for _, p := range []string{"-c=", "--c="} {
			if v, ok := strings.CutPrefix(a, p); ok {
				return v
			}
		}
		if (a == "-c" || a == "--c") && i+1 < len(args) {
			return args[i+1]
		}
	}
	return "shoal.yaml"
}

func consumerNames() []string {
	var n []string
	for k := range example.Consumers {
		n = append(n, k)
	}
	return n
}

func runConsumer(args []string) int {
	fs, path := flags("consumer")
	data := fs.String("data", "run", "directory for the consumer's store")
	conc := fs.Int("concurrency", 0, "tasks run at once (default: queue.concurrency)")
	metricsAddr := fs.String("metrics", "", "host:port for /metrics (default: queue.metrics of the config)")
	name := fs.String("name", "", "name in logs and leases (default: host/pid)")
	var consumer string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		consumer, args = args[0], args[1:]
	}
	if fs.Parse(args) != nil {
		return exitUsage
	}
	if consumer == "" && fs.NArg() > 0 {
		consumer = fs.Arg(0)
	}
	setup, ok := example.Consumers[consumer]
	if !ok {
		fmt.Fprintf(os.Stderr, "shoal consumer: unknown consumer %q (known: %s)\n", consumer, strings.Join(consumerNames(), ", "))
		return exitUsage
	}
	cfg, code := load(*path)
	if cfg == nil {
		return code
	}
	mux := queue.NewServeMux()
	closeStore, err := setup(mux, example.ConsumerEnv{DataDir: *data})
	if err != nil {
		return fail(err)
	}
	defer func() {
		if err := closeStore(); err != nil {
			slog.Error("cannot close the store", "err", err)
		}
	}()
	rdb := queueRedis(cfg)
	defer rdb.Close()
	qc := cfg.Queue
	o := queue.ConsumerOptions{
		Queues: make(map[string]int, len(qc.Queues)), Strict: qc.Strict, Concurrency: qc.Concurrency,
		Lease: qc.Lease.D(), Poll: qc.Poll.D(), ShutdownTimeout: qc.ShutdownTimeout.D(),
		Name: *name, Logger: slog.Default().With("consumer_of", consumer), Metrics: metrics.NewSet(),
	}
	for _, w := range qc.Queues {
		o.Queues[w.Name] = w.Weight
	}
	if *conc > 0 {
		o.Concurrency = *conc
	}
	// task.<id>.done / task.<id>.dead events (events.go), when configured.
	onDone, onDead, stopEvents, err := taskEventHooks(cfg)
	if err != nil {
		return fail(err)
	}
	defer stopEvents()
	o.OnDone, o.OnDead = onDone, onDead
	c, err := queue.NewConsumer(rdb, o, mux)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: queue: %v\n", cfg.File, err)
		return exitConfig
	}
	addr := qc.Metrics
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
	slog.Info("consumer starting", "consumer", consumer, "redis", cfg.Redis.Addr, "data", *data)
	return fail(c.Run(ctx))
}
