//go:build deploy

package deploytest

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"
)

// volatile are the paths a host changes by itself or that Ansible's own
// connection uses: the "nothing changed" checks ignore them. Everything
// else — /etc, /opt, /usr, /var/lib/dpkg, homes … — must stay as it was.
var volatile = []string{
	"/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp",
	"/root/.ansible", "/root/.cache", // Ansible's remote temp files
	"/var/log",         // journald, sshd, the programs' logs
	"/var/lib/systemd", // timers, random seed, the journal's state
	"/var/lib/shoal",   // the supervisor's run_dir: socket, consumer data
	"/var/lib/redis",   // redis' append-only file
	"/var/cache/private",
	"/var/cache/apt", // pkgcache.bin: python3-apt (the apt module) rebuilds it even in check mode
}

// The "nothing changed" checks: mark lists every path outside the
// volatile ones and touches a mark; changedSince lists what was added or
// removed since, and the files (not directories: overlayfs' copy-up
// touches those) whose content or metadata changed after the mark.
const markFile = "/tmp/shoal-dt-mark"

func findOutsideVolatile(action string) string {
	var prune []string
	for _, p := range volatile {
		prune = append(prune, "-path "+p)
	}
	return fmt.Sprintf(`find / -xdev \( %s \) -prune -o %s`, strings.Join(prune, " -o "), action)
}

// listing runs a script that lists files three times and returns the
// union of the lines, sorted: a directory listing of the containers'
// fuse-overlayfs now and then misses an entry (seen: one file of
// /var/lib/dpkg/info in one listing of two taken seconds apart, nothing
// changing it), and a file missed once would look added or removed.
func (d *deploy) listing(ctx context.Context, h *host, script string) (string, error) {
	lines := map[string]bool{}
	for i := 0; i < 3; i++ {
		out, err := d.sh(ctx, h, script)
		if err != nil {
			return "", err
		}
		for _, l := range strings.Split(out, "\n") {
			if l != "" {
				lines[l] = true
			}
		}
	}
	var sorted []string
	for l := range lines {
		sorted = append(sorted, l)
	}
	sort.Strings(sorted)
	return strings.Join(sorted, "\n"), nil
}

func (d *deploy) markHost(ctx context.Context, h *host) error {
	paths, err := d.listing(ctx, h, findOutsideVolatile("-print"))
	if err != nil {
		return err
	}
	if _, err := d.exec(ctx, h, "touch", markFile); err != nil {
		return err
	}
	d.marks[h.name] = paths
	return nil
}

func (d *deploy) changedSince(ctx context.Context, h *host) ([]string, error) {
	paths, err := d.listing(ctx, h, findOutsideVolatile("-print"))
	if err != nil {
		return nil, err
	}
	var changed []string
	if diff := lineDiff(d.marks[h.name], paths); diff != "" {
		changed = append(changed, "paths added (+) or removed (-):\n"+diff)
	}
	out, err := d.listing(ctx, h, findOutsideVolatile("! -type d -cnewer "+markFile+" -print"))
	if err != nil {
		return nil, err
	}
	if out = strings.TrimSpace(out); out != "" {
		changed = append(changed, "changed: "+strings.ReplaceAll(out, "\n", " "))
	}
	return changed, nil
}

// hostState is what a host runs and the files the deployment owns: a
// "changes nothing" check compares it before and after.
type hostState struct {
	procs    string // pid and name of every shoal and redis-server process
	programs string // the supervisor's programs: name, state, pid
	files    string // /etc and /opt: every path's type, mode, owner, link; files' sha256
	services string // running systemd services (without the ones of ssh logins)
}

const stateFiles = `find /etc /opt /usr/local -xdev -printf '%p %y %m %u:%g %l\n';
find /etc /opt /usr/local -xdev -type f -exec sha256sum {} +`

func (d *deploy) state(ctx context.Context, h *host) (hostState, error) {
	var s hostState
	var err error
	if s.procs, err = d.sh(ctx, h, `ps -eo pid=,comm= | awk '$2=="shoal"||$2=="redis-server"' | sort -n`); err != nil {
		return s, err
	}
	if s.files, err = d.listing(ctx, h, stateFiles); err != nil {
		return s, err
	}
	if h.systemd {
		out, err := d.exec(ctx, h, "systemctl", "list-units", "--type=service", "--state=running", "--no-legend", "--plain")
		if err != nil {
			return s, err
		}
		var units []string
		for _, l := range strings.Split(out, "\n") {
			u := strings.Fields(l)
			if len(u) > 0 && !strings.HasPrefix(u[0], "user@") && !strings.HasPrefix(u[0], "user-runtime-dir@") {
				units = append(units, u[0])
			}
		}
		s.services = strings.Join(units, " ")
	}
	if ps, err := d.programs(ctx, h); err == nil {
		var lines []string
		for _, p := range ps {
			lines = append(lines, fmt.Sprintf("%s %s %d", p.Name, p.State, p.PID))
		}
		s.programs = strings.Join(lines, "\n")
	}
	return s, nil
}

// diff describes how two states differ.
func (a hostState) diff(b hostState) []string {
	var out []string
	if a.procs != b.procs {
		out = append(out, fmt.Sprintf("processes (pid name) were:\n%s\nare:\n%s", a.procs, b.procs))
	}
	if a.programs != b.programs {
		out = append(out, fmt.Sprintf("supervisor programs were:\n%s\nare:\n%s", a.programs, b.programs))
	}
	if a.services != b.services {
		out = append(out, fmt.Sprintf("running services were: %s\nare: %s", a.services, b.services))
	}
	if a.files != b.files {
		out = append(out, "files in /etc /opt /usr/local:\n"+lineDiff(a.files, b.files))
	}
	return out
}

// lineDiff lists the lines only in a (-) and only in b (+).
func lineDiff(a, b string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	ma, mb := in(a), in(b)
	var out []string
	for l := range ma {
		if !mb[l] {
			out = append(out, "- "+l)
		}
	}
	for l := range mb {
		if !ma[l] {
			out = append(out, "+ "+l)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i][2:] < out[j][2:] })
	return strings.Join(out, "\n")
}

// program is one line of `shoal ctl status --json`.
type program struct {
	Name  string `json:"name"`
	State string `json:"state"`
	PID   int    `json:"pid"`
}

const (
	shoalBin  = "/opt/shoal/current/shoal"
	shoalConf = "/etc/shoal/shoal.yaml"
)

func (d *deploy) programs(ctx context.Context, h *host) ([]program, error) {
	out, err := d.execStdout(ctx, h, shoalBin, "ctl", "status", "--json", "-c", shoalConf)
	if err != nil {
		return nil, err
	}
	var ps []program
	if err := json.Unmarshal([]byte(out), &ps); err != nil {
		return nil, fmt.Errorf("shoal ctl status --json on %s: %v: %.300q", h.name, err, out)
	}
	return ps, nil
}

// allRunning fails unless every program on h is RUNNING.
func (d *deploy) allRunning(ctx context.Context, h *host) error {
	ps, err := d.programs(ctx, h)
	if err != nil {
		return err
	}
	if len(ps) == 0 {
		return fmt.Errorf("%s: the supervisor runs no program", h.name)
	}
	for _, p := range ps {
		if p.State != "RUNNING" {
			return fmt.Errorf("%s: program %s is %s", h.name, p.Name, p.State)
		}
	}
	return nil
}

// stateOf records the states of hosts.
func (d *deploy) stateOf(ctx context.Context, t *testing.T, names ...string) map[string]hostState {
	t.Helper()
	m := map[string]hostState{}
	for _, n := range names {
		s, err := d.state(ctx, d.hosts[n])
		if err != nil {
			t.Fatalf("the state of %s: %v", n, err)
		}
		m[n] = s
	}
	return m
}

// mark marks the hosts for changedSince.
func (d *deploy) mark(ctx context.Context, t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if err := d.markHost(ctx, d.hosts[n]); err != nil {
			t.Fatal(err)
		}
	}
}

// unchanged fails the test if a host's state differs from before or a
// file changed since the mark.
func (d *deploy) unchanged(ctx context.Context, t *testing.T, what string, before map[string]hostState) {
	t.Helper()
	var names []string
	for n := range before {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		// A difference is looked at twice: it counts if the second look
		// confirms it (a listing of the overlay filesystem taken while
		// something copies a directory up can miss an entry).
		var diffs, changed, first []string
		for try := 0; try < 2; try++ {
			after, err := d.state(ctx, d.hosts[n])
			if err != nil {
				t.Fatalf("the state of %s: %v", n, err)
			}
			diffs = before[n].diff(after)
			changed, err = d.changedSince(ctx, d.hosts[n])
			if err != nil {
				t.Fatalf("changed files on %s: %v", n, err)
			}
			if len(diffs)+len(changed) == 0 {
				if try > 0 {
					t.Logf("%s: %s: a difference seen once was gone at the second look: %s", what, n, strings.Join(first, "\n"))
				}
				break
			}
			if try == 0 {
				first = append(diffs, changed...)
			}
			time.Sleep(time.Second)
		}
		for _, diff := range diffs {
			t.Errorf("%s changed %s: %s", what, n, diff)
		}
		if len(changed) > 0 {
			t.Errorf("%s changed %s: %s", what, n, strings.Join(changed, "\n"))
		}
	}
}
