package supervisor

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/testenv"
)

const reloadHead = `brokers:
  - {name: b0, clients: "tcp://127.0.0.1:0", workers: "tcp://127.0.0.1:0"}
supervisor:
  socket: @SOCKET@
  notify_brokers: false
`

// Item 6: a reload starts programs added, stops programs removed,
// restarts programs whose process changed, resizes numprocs, and leaves
// the rest running with the same pids. A config with problems is refused
// whole, with file:line:field, and nothing changes.
func TestReload(t *testing.T) {
	h := start(t, reloadHead+`programs:
  - {name: keep, command: sleep 1000, startsecs: 0s}
  - {name: change, command: sleep 1000, env: {A: "1"}, startsecs: 0s}
  - {name: tune, command: sleep 1000, startsecs: 0s, stopwaitsecs: 5s}
  - {name: gone, command: sleep 1000, startsecs: 0s}
  - {name: grow, command: sleep 1000, startsecs: 0s}
  - {name: shrink, command: sleep 1000, startsecs: 0s, numprocs: 3}
`)
	before := h.waitRunning(5 * time.Second)
	socket := h.sup.Socket()
	h.write(strings.Replace(reloadHead, "@SOCKET@", socket, 1) + `programs:
  - {name: added, command: sleep 1000, startsecs: 0s}
  - {name: keep, command: sleep 1000, startsecs: 0s}
  - {name: change, command: sleep 1000, env: {A: "2"}, startsecs: 0s}
  - {name: tune, command: sleep 1000, startsecs: 0s, stopwaitsecs: 1s, group: other}
  - {name: grow, command: sleep 1000, startsecs: 0s, numprocs: 3}
  - {name: shrink, command: sleep 1000, startsecs: 0s}
`)
	res, err := h.c.Reload(h.ctx())
	if err != nil {
		t.Fatal(err)
	}
	want := ReloadResult{Added: []string{"added"}, Removed: []string{"gone"}, Changed: []string{"change"},
		Resized: []string{"grow", "shrink"}, Unchanged: []string{"keep", "tune"}}
	if !slices.Equal(res.Added, want.Added) || !slices.Equal(res.Removed, want.Removed) || !slices.Equal(res.Changed, want.Changed) ||
		!slices.Equal(res.Resized, want.Resized) || !slices.Equal(res.Unchanged, want.Unchanged) {
		t.Errorf("reload = %+v\nwant %+v", res, want)
	}
	var after map[string]Status
	testenv.Eventually(t, 10*time.Second, "the reloaded set", func() bool {
		after = h.all()
		if len(after) != 8 {
			return false
		}
		for _, s := range after {
			if s.State != Running {
				return false
			}
		}
		return true
	}, func() string { return fmt.Sprint(mapValues(after)) })
	for _, n := range []string{"keep:0", "tune:0", "grow:0", "shrink:0"} {
		if after[n].PID != before[n].PID {
			t.Errorf("%s: pid %d → %d; an unchanged instance must keep running", n, before[n].PID, after[n].PID)
		}
	}
	if after["change:0"].PID == before["change:0"].PID {
		t.Errorf("change:0 kept pid %d: its env changed, it must restart", before["change:0"].PID)
	}
	if after["tune:0"].Group != "other" {
		t.Errorf("tune: group %q, want the new one applied in place", after["tune:0"].Group)
	}
	for _, n := range []string{"gone:0", "shrink:1", "shrink:2"} {
		if _, ok := after[n]; ok {
			t.Errorf("%s is still listed", n)
		}
		if alive(before[n].PID) {
			t.Errorf("%s (pid %d) still runs", n, before[n].PID)
		}
	}

	// A config with problems: refused whole, nothing changes.
	h.write(strings.Replace(reloadHead, "@SOCKET@", socket, 1) + `programs:
  - {name: keep, command: sleep 1000, depends_on: [loop]}
  - {name: loop, command: sleep 1, depends_on: [keep]}
  - {name: typo, command: sleep 1, numprocz: 2}
`)
	_, err = h.c.Reload(h.ctx())
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != 422 {
		t.Fatalf("reload of a broken config: %v", err)
	}
	for _, w := range []string{
		h.file + `:7:51: programs[0].depends_on: dependency cycle: keep → loop → keep`,
		h.file + `:9:36: programs[2].numprocz: unknown key; did you mean "numprocs"?`,
	} {
		if !strings.Contains(ae.Msg, w) {
			t.Errorf("refusal lacks %q:\n%s", w, ae.Msg)
		}
	}
	same := h.all()
	if len(same) != len(after) {
		t.Errorf("a refused reload changed the set: %v", names(mapValues(same)))
	}
	for n, s := range after {
		if same[n].PID != s.PID || same[n].State != Running {
			t.Errorf("%s: %+v after a refused reload, was %+v", n, same[n], s)
		}
	}
}

func mapValues(m map[string]Status) []Status {
	out := make([]Status, 0, len(m))
	for _, s := range m {
		out = append(out, s)
	}
	return out
}

// A program that reads the config file ({config} in its command) restarts
// when a reload changes the settings it reads there (a route, the brokers,
// redis ...); a program that does not, and a change to the supervisor's
// own section, leave processes be.
func TestReloadRestartsConfigReaders(t *testing.T) {
	const progs = `programs:
  - {name: reader, command: [/bin/sh, -c, 'exec sleep 1000', '{config}'], startsecs: 0s}
  - {name: other, command: sleep 1000, startsecs: 0s}
`
	h := start(t, reloadHead+progs)
	before := h.waitRunning(5 * time.Second)
	head := strings.Replace(reloadHead, "@SOCKET@", h.sup.Socket(), 1)

	for _, step := range []struct {
		name, config string
		changed      []string
	}{
		{"supervisor section only", head + "  log_keep: 2\n" + progs, nil},
		{"a shared setting", head + "frontend:\n  timeout: 7s\n" + progs, []string{"reader"}},
		{"the same again", head + "frontend:\n  timeout: 7s\n" + progs, nil},
	} {
		h.write(step.config)
		res, err := h.c.Reload(h.ctx())
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if !slices.Equal(res.Changed, step.changed) {
			t.Errorf("%s: changed %v, want %v", step.name, res.Changed, step.changed)
		}
		after := h.waitRunning(5 * time.Second)
		for _, name := range []string{"reader:0", "other:0"} {
			restarted := after[name].PID != before[name].PID
			if want := slices.Contains(step.changed, strings.TrimSuffix(name, ":0")); restarted != want {
				t.Errorf("%s: %s restarted = %v, want %v", step.name, name, restarted, want)
			}
		}
		before = after
	}
}
