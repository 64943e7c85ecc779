package config

import (
	"fmt"
	"strings"
	"time"
)

// Config is the whole of shoal.yaml. Parse and Load return it with every
// default applied, route defaults resolved and everything validated.
//
// To add a section: add a field with a yaml tag here, its defaults to
// Default, its checks to validate (check.go), its environment variables to
// envVars (env.go) and a paragraph to the package doc. Decoding, unknown-key
// detection and positions need nothing more.
type Config struct {
	// File is the path the config was read from; it is not read from YAML.
	File string `yaml:"-"`

	Log Log `yaml:"log"`
	// Brokers lists every broker. At least one is required; clients and
	// workers connect to all of them. No default.
	Brokers []Broker `yaml:"brokers"`
	// Broker holds the settings shared by all brokers.
	Broker BrokerSettings `yaml:"broker"`
	// Transport tunes every ZeroMQ link, in brokers, frontends and workers.
	Transport Transport `yaml:"transport"`
	Frontend  Frontend  `yaml:"frontend"`
	Workers   Workers   `yaml:"workers"`
	// Supervisor configures `shoal supervisor` (programs.go).
	Supervisor Supervisor `yaml:"supervisor"`
	// Programs are what the supervisor runs, in start order where
	// depends_on allows. Default none.
	Programs []Program `yaml:"programs"`
	// Redis is where the task queue lives (queue.go).
	Redis Redis `yaml:"redis"`
	// Queue sets task defaults and the queue consumers (queue.go).
	Queue Queue `yaml:"queue"`
	// Events tunes the brokers' event forwarders and /events (events.go).
	Events Events `yaml:"events"`
}

// Log configures the log every process writes to stderr.
type Log struct {
	// Level is the lowest level logged: debug, info, warn or error.
	// Default "info". Environment: SHOAL_LOG_LEVEL.
	Level string `yaml:"level"`
	// Format is "text" (key=value) or "json". Default "text".
	// Environment: SHOAL_LOG_FORMAT.
	Format string `yaml:"format"`
}

// Broker is one broker; `shoal broker --name NAME` runs the entry named
// NAME. Each endpoint accepts port 0 (a free port, for tests); nobody else
// can find such a port, so real configs name one.
type Broker struct {
	// Name identifies the broker in flags, logs, metrics and environment
	// variables: lower-case letters, digits and '-', starting with a
	// letter or digit; unique. Required.
	Name string `yaml:"name"`
	// Clients is the ROUTER endpoint the broker binds for frontends and
	// other clients: tcp://host:port. Required.
	// Environment: SHOAL_BROKER_<NAME>_CLIENTS.
	Clients string `yaml:"clients"`
	// Workers is the ROUTER endpoint the broker binds for workers:
	// tcp://host:port. Required. Environment: SHOAL_BROKER_<NAME>_WORKERS.
	Workers string `yaml:"workers"`
	// Admin is the host:port of the broker's HTTP endpoint (/metrics,
	// /stats, /healthz). Default "" (none).
	// Environment: SHOAL_BROKER_<NAME>_ADMIN.
	Admin string `yaml:"admin"`
	// EventsIn is the ROUTER endpoint the broker binds for event
	// publishers, EventsOut the one for subscribers (events.go). Both or
	// neither; default "" (no events).
	EventsIn  string `yaml:"events_in"`
	EventsOut string `yaml:"events_out"`
}

// BrokerSettings are the settings shared by all brokers.
type BrokerSettings struct {
	// Heartbeat is how often peers send HEARTBEAT; the broker answers each
	// one. At least 10ms. Default 1s.
	Heartbeat Duration `yaml:"heartbeat"`
	// Liveness is how many heartbeat intervals may pass in silence before
	// a peer is declared dead. At least 2. Default 3.
	Liveness int `yaml:"liveness"`
	// QueueLimit is how many requests may wait per service before new ones
	// are answered "overloaded". Positive. Default 1024.
	QueueLimit int `yaml:"queue_limit"`
	// DefaultTimeout is the deadline given to a request that carries none.
	// Positive. Default 5s.
	DefaultTimeout Duration `yaml:"default_timeout"`
}

// Transport tunes every ZeroMQ link.
type Transport struct {
	// MaxFrame is the largest frame a peer may send; a larger one drops
	// the connection. Positive. Default 64MiB.
	MaxFrame Size `yaml:"max_frame"`
	// HandshakeTimeout bounds the ZMTP handshake of a new connection.
	// Positive. Default 5s.
	HandshakeTimeout Duration `yaml:"handshake_timeout"`
	// WriteTimeout disconnects a peer that does not drain its socket for
	// this long. Positive. Default 5s.
	WriteTimeout Duration `yaml:"write_timeout"`
}

// Frontend configures the HTTP gateway.
type Frontend struct {
	// Listen is the host:port HTTP clients connect to. An empty host
	// listens on every interface; port 0 picks a free port (tests).
	// Default "127.0.0.1:8080". Environment: SHOAL_FRONTEND_LISTEN.
	Listen string `yaml:"listen"`
	// Admin is the host:port serving /metrics; "" turns it off (port 0
	// picks a free port). Default "127.0.0.1:9180".
	// Environment: SHOAL_FRONTEND_ADMIN.
	Admin string `yaml:"admin"`
	// MaxBody is the largest request body; a larger one gets 413. It must
	// be smaller than transport.max_frame, since the body travels in one
	// frame. Default 1MiB.
	MaxBody Size `yaml:"max_body"`
	// ReadTimeout bounds reading one request, headers and body. Positive.
	// Default 10s.
	ReadTimeout Duration `yaml:"read_timeout"`
	// WriteTimeout bounds writing one response. Positive. Default 10s.
	WriteTimeout Duration `yaml:"write_timeout"`
	// IdleTimeout closes a keep-alive connection that waits longer for its
	// next request. Positive. Default 60s.
	IdleTimeout Duration `yaml:"idle_timeout"`
	// ShutdownTimeout is how long in-flight requests may finish after
	// SIGTERM. Positive. Default 10s.
	ShutdownTimeout Duration `yaml:"shutdown_timeout"`
	// Timeout is the deadline of a request whose route sets none.
	// Positive. Default 5s.
	Timeout Duration `yaml:"timeout"`
	// MaxConns is the most concurrent client connections. Positive.
	// Default 10000.
	MaxConns int `yaml:"max_conns"`
	// ForwardHeaders lists the request headers copied into the envelope
	// (matched case-insensitively); no other header reaches a service.
	// Default [Content-Type, Accept, User-Agent, Authorization]; write []
	// to forward none.
	ForwardHeaders []string `yaml:"forward_headers"`
	// Routes map method and path to a service. Default none.
	Routes []Route `yaml:"routes"`
}

// Route maps an HTTP method and path pattern to a service. Parse fills in
// the defaults of Call, Timeout, Attempts and Idempotent, so consumers read
// the effective values.
type Route struct {
	// Method is GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS (upper
	// case). Required.
	Method string `yaml:"method"`
	// Path is a github.com/fasthttp/router pattern starting with "/":
	// "/echo", "/users/{id}", "/users/{id:[0-9]+}", "/files/{path:*}"
	// (catch-all, last segment only). Required.
	Path string `yaml:"path"`
	// Service is the service the broker routes the request to: 1-128 of
	// a-z 0-9 . _ -, starting with a letter or digit. Required.
	Service string `yaml:"service"`
	// Call is the method name passed to the service. Default
	// "<METHOD> <Path>", for instance "GET /users/{id}".
	Call string `yaml:"call"`
	// Timeout is the request's deadline. Positive. Default
	// frontend.timeout.
	Timeout Duration `yaml:"timeout"`
	// Attempts is how many times the request may be dispatched in all when
	// the worker holding it dies: 1 to 10. Default 3 (DefaultAttempts) for
	// idempotent routes, 1 otherwise; above 1 needs Idempotent.
	Attempts int `yaml:"attempts"`
	// Idempotent says running the request twice is harmless, which allows
	// retries. Default true for GET, HEAD, PUT, DELETE and OPTIONS, false
	// for POST and PATCH.
	Idempotent bool `yaml:"idempotent"`
}

// Workers configures worker processes.
type Workers struct {
	// Concurrency is how many requests one worker process handles at once
	// (its credit at the broker). Positive. Default 64.
	Concurrency int `yaml:"concurrency"`
	// DrainTimeout is how long a worker finishes in-flight work after
	// SIGTERM. Positive. Default 10s.
	DrainTimeout Duration `yaml:"drain_timeout"`
	// Metrics is the host:port of a worker's /metrics; "" turns it off. A
	// worker can override it with a flag (several workers on one host need
	// different ports; port 0 picks a free one). Default "".
	Metrics string `yaml:"metrics"`
}

// Limits of the values Parse accepts.
const (
	MinHeartbeat = 10 * time.Millisecond // broker.heartbeat
	MinLiveness  = 2                     // broker.liveness
	MaxAttempts  = 10                    // routes[].attempts
	// DefaultAttempts is the attempts of an idempotent route that sets none.
	DefaultAttempts = 3
)

// Default returns the configuration of an empty file: every default, no
// brokers and no routes. It is not valid by itself, since at least one
// broker is required.
func Default() *Config {
	return &Config{
		Log: Log{Level: "info", Format: "text"},
		Broker: BrokerSettings{
			Heartbeat:      Duration(time.Second),
			Liveness:       3,
			QueueLimit:     1024,
			DefaultTimeout: Duration(5 * time.Second),
		},
		Transport: Transport{
			MaxFrame:         64 << 20,
			HandshakeTimeout: Duration(5 * time.Second),
			WriteTimeout:     Duration(5 * time.Second),
		},
		Frontend: Frontend{
			Listen:          "127.0.0.1:8080",
			Admin:           "127.0.0.1:9180",
			MaxBody:         1 << 20,
			ReadTimeout:     Duration(10 * time.Second),
			WriteTimeout:    Duration(10 * time.Second),
			IdleTimeout:     Duration(60 * time.Second),
			ShutdownTimeout: Duration(10 * time.Second),
			Timeout:         Duration(5 * time.Second),
			MaxConns:        10000,
			ForwardHeaders:  []string{"Content-Type", "Accept", "User-Agent", "Authorization"},
		},
		Workers: Workers{
			Concurrency:  64,
			DrainTimeout: Duration(10 * time.Second),
		},
		Supervisor: defaultSupervisor(),
		Redis:      defaultRedis(),
		Queue:      defaultQueue(),
		Events:     defaultEvents(),
	}
}

// BrokerByName returns the broker entry with the given name.
func (c *Config) BrokerByName(name string) (Broker, error) {
	names := make([]string, len(c.Brokers))
	for i, b := range c.Brokers {
		if b.Name == name {
			return b, nil
		}
		names[i] = b.Name
	}
	return Broker{}, fmt.Errorf("config: %s has no broker named %q (brokers: %s)",
		c.File, name, strings.Join(names, ", "))
}

// ClientEndpoints returns the clients endpoint of every broker, in file
// order: a frontend or a calling worker connects to all of them.
func (c *Config) ClientEndpoints() []string {
	eps := make([]string, len(c.Brokers))
	for i, b := range c.Brokers {
		eps[i] = b.Clients
	}
	return eps
}

// WorkerEndpoints returns the workers endpoint of every broker, in file
// order: a worker connects to all of them.
func (c *Config) WorkerEndpoints() []string {
	eps := make([]string, len(c.Brokers))
	for i, b := range c.Brokers {
		eps[i] = b.Workers
	}
	return eps
}
