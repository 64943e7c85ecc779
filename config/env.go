package config

import (
	"strconv"
	"strings"
)

// envVar is one environment variable that overrides a field of the file.
type envVar struct {
	// name of the variable. In per-broker variables "<NAME>" stands for
	// the broker's name, upper-cased, with '-' as '_'.
	name string
	// field is the path of the field it sets; in per-broker variables
	// "[]" stands for the broker's index.
	field string
	// set stores value; i is the broker's index in per-broker variables.
	// An error is reported against the variable.
	set func(c *Config, i int, value string) error
}

// envVars lists every environment variable Parse consults, in the order
// it applies them: after the file, before validation. A variable that is
// set, even to "", overrides the file. To add one, append it here and to
// the table in doc.go (a test checks they agree).
var envVars = []envVar{
	{"SHOAL_LOG_LEVEL", "log.level", str(func(c *Config, _ int) *string { return &c.Log.Level })},
	{"SHOAL_LOG_FORMAT", "log.format", str(func(c *Config, _ int) *string { return &c.Log.Format })},
	{"SHOAL_FRONTEND_LISTEN", "frontend.listen", str(func(c *Config, _ int) *string { return &c.Frontend.Listen })},
	{"SHOAL_FRONTEND_ADMIN", "frontend.admin", str(func(c *Config, _ int) *string { return &c.Frontend.Admin })},
	{"SHOAL_BROKER_<NAME>_CLIENTS", "brokers[].clients", str(func(c *Config, i int) *string { return &c.Brokers[i].Clients })},
	{"SHOAL_BROKER_<NAME>_WORKERS", "brokers[].workers", str(func(c *Config, i int) *string { return &c.Brokers[i].Workers })},
	{"SHOAL_BROKER_<NAME>_ADMIN", "brokers[].admin", str(func(c *Config, i int) *string { return &c.Brokers[i].Admin })},
	{"SHOAL_REDIS_ADDR", "redis.addr", str(func(c *Config, _ int) *string { return &c.Redis.Addr })},
	{"SHOAL_REDIS_PASSWORD", "redis.password", str(func(c *Config, _ int) *string { return &c.Redis.Password })},
}

// str makes the setter of a string field.
func str(field func(c *Config, i int) *string) func(*Config, int, string) error {
	return func(c *Config, i int, v string) error {
		*field(c, i) = v
		return nil
	}
}

// envName is a broker's name as it appears in variable names.
func envName(broker string) string {
	return strings.ReplaceAll(strings.ToUpper(broker), "-", "_")
}

// applyEnv applies the variables that lookup finds. Each field it sets
// remembers the variable, so that validation problems name it.
func (d *decoder) applyEnv(c *Config, lookup func(string) (string, bool)) {
	if lookup == nil {
		return
	}
	for _, ev := range envVars {
		if !strings.Contains(ev.name, "<NAME>") {
			d.setEnv(c, ev, ev.name, ev.field, 0, lookup)
			continue
		}
		for i, b := range c.Brokers {
			name := strings.Replace(ev.name, "<NAME>", envName(b.Name), 1)
			path := strings.Replace(ev.field, "[]", "["+strconv.Itoa(i)+"]", 1)
			d.setEnv(c, ev, name, path, i, lookup)
		}
	}
}

func (d *decoder) setEnv(c *Config, ev envVar, name, path string, i int, lookup func(string) (string, bool)) {
	v, ok := lookup(name)
	if !ok {
		return
	}
	f := d.field(path)
	f.env, f.raw, f.set, f.bad = name, v, true, false
	if err := ev.set(c, i, v); err != nil {
		f.bad = true
		d.problems = append(d.problems, Problem{File: "$" + name, Field: path, Msg: err.Error()})
	}
}
