package config

import "strings"

// Events configures events: the forwarder of every broker that names
// events_in and events_out endpoints, and GET /events on the frontend.
// Delivery is at most once and may drop under overload (docs/events.md).
type Events struct {
	// Queue is how many events may wait at a broker for one subscriber;
	// past it the oldest are dropped (and counted). Positive. Default 4096.
	Queue int `yaml:"queue"`
	// QueueBytes bounds the same queue in bytes. Positive. Default 4MiB.
	QueueBytes Size `yaml:"queue_bytes"`
	// Window is how many bytes a broker sends a subscriber before the
	// subscriber grants credit for them; keep it well below what TCP
	// buffers hold (a few hundred KiB), so that a subscriber that stops
	// reading never blocks the broker. Positive. Default 64KiB.
	Window Size `yaml:"window"`
	// WriteTimeout disconnects a subscriber that does not drain its
	// events_out socket for this long. Positive. Default 1s.
	WriteTimeout Duration `yaml:"write_timeout"`
	// Path is where the frontend serves Server-Sent Events. Default
	// "/events".
	Path string `yaml:"path"`
	// Heartbeat is how often an idle stream gets a comment, which keeps
	// proxies from closing it and finds clients that left. Positive.
	// Default 15s.
	Heartbeat Duration `yaml:"heartbeat"`
	// ClientBuffer is how many events may wait for one HTTP client; a
	// client further behind is dropped with a final event. Positive.
	// Default 256.
	ClientBuffer int `yaml:"client_buffer"`
	// MaxTopics is how many topics one stream may name. Positive.
	// Default 16.
	MaxTopics int `yaml:"max_topics"`
	// MaxClients bounds the streams one frontend holds (503 beyond);
	// 0 means only frontend.max_conns bounds them, and every stream holds
	// one of those connections. Default 0.
	MaxClients int `yaml:"max_clients"`
	// TaskEvents makes queue consumers publish task.<id>.done and
	// task.<id>.dead when a task finishes or dies. Default true.
	TaskEvents bool `yaml:"task_events"`
}

func defaultEvents() Events {
	return Events{
		Queue:        4096,
		QueueBytes:   4 << 20,
		Window:       64 << 10,
		WriteTimeout: Duration(1e9),
		Path:         "/events",
		Heartbeat:    Duration(15e9),
		ClientBuffer: 256,
		MaxTopics:    16,
		TaskEvents:   true,
	}
}

// eventEndpoints checks a broker's events_in and events_out: both or
// neither, each a distinct endpoint.
func (d *decoder) eventEndpoints(p string, b Broker, seen map[string]string) {
	switch {
	case b.EventsIn == "" && b.EventsOut == "":
		return
	case b.EventsIn == "":
		d.problem(p+".events_in", "is required with events_out, such as tcp://127.0.0.1:5557")
	case b.EventsOut == "":
		d.problem(p+".events_out", "is required with events_in, such as tcp://127.0.0.1:5558")
	}
	if b.EventsIn != "" {
		d.endpoint(p+".events_in", b.EventsIn, seen)
	}
	if b.EventsOut != "" {
		d.endpoint(p+".events_out", b.EventsOut, seen)
	}
}

// checkEvents validates the events section.
func (d *decoder) checkEvents(c *Config) {
	e := &c.Events
	d.minInt("events.queue", e.Queue, 1)
	d.positiveSize("events.queue_bytes", e.QueueBytes)
	d.positiveSize("events.window", e.Window)
	d.positive("events.write_timeout", e.WriteTimeout)
	d.positive("events.heartbeat", e.Heartbeat)
	d.minInt("events.client_buffer", e.ClientBuffer, 1)
	d.minInt("events.max_topics", e.MaxTopics, 1)
	d.minInt("events.max_clients", e.MaxClients, 0)
	switch msg := checkPattern(e.Path); {
	case msg != "":
		d.problem("events.path", "%s", msg)
	case strings.ContainsAny(e.Path, "{}"):
		d.problem("events.path", "must be a plain path without parameters, got %s", quote(e.Path))
	case e.Path == "/healthz" || e.Path == "/readyz":
		d.problem("events.path", "%s is the frontend's own", e.Path)
	default:
		for i, r := range c.Frontend.Routes {
			if (r.Method == "GET" || r.Method == "HEAD") && strings.TrimRight(r.Path, "/") == strings.TrimRight(e.Path, "/") {
				d.problem(routePath(i)+".path", "%s is events.path, the event stream", r.Path)
			}
		}
	}
}

// EventsInEndpoints returns the events_in endpoint of every broker that
// has events, in file order: publishers connect to all of them.
func (c *Config) EventsInEndpoints() []string {
	var eps []string
	for _, b := range c.Brokers {
		if b.EventsIn != "" {
			eps = append(eps, b.EventsIn)
		}
	}
	return eps
}

// EventsOutEndpoints returns the events_out endpoint of every broker that
// has events: subscribers connect to all of them.
func (c *Config) EventsOutEndpoints() []string {
	var eps []string
	for _, b := range c.Brokers {
		if b.EventsOut != "" {
			eps = append(eps, b.EventsOut)
		}
	}
	return eps
}
