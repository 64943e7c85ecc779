//go:build deploy

package deploytest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// groups maps an Ansible group to its hosts.
type groups map[string][]string

// writeInventory writes an inventory of d's hosts in the given groups to
// <tmp>/<name>/hosts.yml, next to a copy of the group_vars of the repo's
// inventories/<layout> (group_vars are found relative to the inventory),
// and returns the inventory's path.
func (d *deploy) writeInventory(t *testing.T, name, layout string, g groups) string {
	t.Helper()
	dir := filepath.Join(d.tmp, "inventories", name)
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := copyDir(filepath.Join(d.ansible, "inventories", layout, "group_vars"), filepath.Join(dir, "group_vars")); err != nil {
		t.Fatalf("copying the group_vars of inventories/%s: %v", layout, err)
	}
	hostVars := map[string]any{}
	children := map[string]any{}
	for group, names := range g {
		members := map[string]any{}
		for _, n := range names {
			h := d.hosts[n]
			if h == nil {
				t.Fatalf("inventory %s: no host %s", name, n)
			}
			members[n] = nil
			hostVars[n] = map[string]any{
				"ansible_host":                 h.ip,
				"ansible_user":                 "root",
				"ansible_ssh_private_key_file": d.key,
				"ansible_ssh_common_args":      d.sshOptions(),
				"ansible_python_interpreter":   "/usr/bin/python3",
			}
		}
		children[group] = map[string]any{"hosts": members}
	}
	inv := map[string]any{"all": map[string]any{"hosts": hostVars, "children": children}}
	b, err := json.MarshalIndent(inv, "", "  ") // JSON is YAML
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "hosts.yml")
	if err := os.WriteFile(path, append([]byte("# made by the deploy test (ansible/deploytest)\n"), b...), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func copyDir(src, dst string) error {
	return filepath.WalkDir(src, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		if e.IsDir() {
			return os.MkdirAll(to, 0o755)
		}
		return copyFile(p, to, 0o644)
	})
}

func copyFile(from, to string, mode os.FileMode) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, mode)
}

// play is one ansible-playbook run.
type play struct {
	name   string
	out    string
	log    string // file holding out
	err    error
	recap  map[string]map[string]int // host → ok, changed, unreachable, failed, …
	took   time.Duration
	hosts  []string // in the recap, sorted
	failed bool     // exit status not 0
}

// playbook runs ansible-playbook from the repo's ansible/ directory (so its
// ansible.cfg applies) with the inventory, the example vault password and
// -e shoal_binary=binary, logs the output to a file in the temp dir, and
// fails the test if the output holds a secret of the vault.
func (d *deploy) playbook(ctx context.Context, t *testing.T, name, inventory, binary, playbook string, extra ...string) *play {
	t.Helper()
	d.plays++
	p := &play{name: name, log: filepath.Join(d.tmp, "logs", fmt.Sprintf("%02d-%s.log", d.plays, name))}
	args := append([]string{"-i", inventory, playbook, "--vault-password-file", "vault-password.example",
		"-e", "shoal_binary=" + binary}, extra...)
	env := []string{
		"ANSIBLE_HOST_KEY_CHECKING=False",
		"ANSIBLE_NOCOLOR=1",
		"ANSIBLE_FORCE_COLOR=0",
		"ANSIBLE_RETRY_FILES_ENABLED=False",
		// ssh master connections of this run only, in its temp dir: a
		// master left by another run to the same address (a container
		// since removed) must not be reused.
		"ANSIBLE_SSH_CONTROL_PATH_DIR=" + filepath.Join(d.tmp, "cp"),
		"ANSIBLE_LOCAL_TEMP=" + filepath.Join(d.tmp, "ansible-tmp"),
		"PYTHONUNBUFFERED=1",
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	defer cancel()
	start := time.Now()
	t.Logf("ansible-playbook %s (log: %s)", strings.Join(args, " "), p.log)
	out, err := run(ctx, d.ansible, env, nil, "ansible-playbook", args...)
	p.took = time.Since(start)
	p.out, p.err, p.failed = out, err, err != nil
	if werr := os.WriteFile(p.log, []byte(d.redact(out)), 0o644); werr != nil {
		t.Error(werr)
	}
	p.recap = parseRecap(out)
	for h := range p.recap {
		p.hosts = append(p.hosts, h)
	}
	sort.Strings(p.hosts)
	for _, s := range d.secrets {
		if strings.Contains(out, s.value) {
			t.Errorf("SECRET LEAK: the output of %s holds %s of the vault (log, redacted: %s)", name, s.name, p.log)
		}
	}
	t.Logf("%s: %v, %s; recap %s", name, p.took.Round(time.Second), exitString(err), p.recapString())
	return p
}

func exitString(err error) string {
	if err == nil {
		return "exit 0"
	}
	return "FAILED: " + strings.SplitN(err.Error(), "\n", 2)[0]
}

// holdsSecret reports whether s holds a secret of the vaults.
func (d *deploy) holdsSecret(s string) bool {
	for _, sec := range d.secrets {
		if strings.Contains(s, sec.value) {
			return true
		}
	}
	return false
}

// redact replaces the vault's secrets in s.
func (d *deploy) redact(s string) string {
	for _, sec := range d.secrets {
		s = strings.ReplaceAll(s, sec.value, "<"+sec.name+" REDACTED>")
	}
	return s
}

// mustSucceed fails the test with the (redacted) output when the run did
// not exit 0 or its recap shows a failed or unreachable host.
func (p *play) mustSucceed(t *testing.T, d *deploy) {
	t.Helper()
	bad := p.failed || len(p.recap) == 0
	for _, h := range p.hosts {
		if p.recap[h]["failed"] > 0 || p.recap[h]["unreachable"] > 0 {
			bad = true
		}
	}
	if bad {
		t.Fatalf("%s: %s, recap %s; output:\n%s", p.name, exitString(p.err), p.recapString(), tail(d.redact(p.out), 150))
	}
}

// wantHosts fails the test unless the recap names exactly these hosts.
func (p *play) wantHosts(t *testing.T, d *deploy, hosts ...string) {
	t.Helper()
	want := append([]string(nil), hosts...)
	sort.Strings(want)
	if strings.Join(want, ",") != strings.Join(p.hosts, ",") {
		t.Fatalf("%s: the recap names hosts %v, want %v; output:\n%s", p.name, p.hosts, want, tail(d.redact(p.out), 80))
	}
}

// changedTasks lists the tasks reported "changed:" in the output, for
// the failure messages.
func (p *play) changedTasks() []string {
	var tasks []string
	task := ""
	for _, line := range strings.Split(p.out, "\n") {
		if strings.HasPrefix(line, "TASK [") || strings.HasPrefix(line, "RUNNING HANDLER [") {
			task = strings.TrimRight(line, " *")
		}
		if strings.HasPrefix(line, "changed: ") {
			tasks = append(tasks, task+" → "+line)
		}
	}
	return tasks
}

func (p *play) recapString() string {
	var parts []string
	for _, h := range p.hosts {
		r := p.recap[h]
		parts = append(parts, fmt.Sprintf("%s ok=%d changed=%d failed=%d unreachable=%d", h, r["ok"], r["changed"], r["failed"], r["unreachable"]))
	}
	if len(parts) == 0 {
		return "(none)"
	}
	return strings.Join(parts, "; ")
}

var recapLine = regexp.MustCompile(`^(\S+)\s+:\s+((?:[a-z]+=\d+\s*)+)$`)

// parseRecap reads the PLAY RECAP of ansible-playbook's output:
//
//	h1   : ok=12   changed=0    unreachable=0    failed=0    skipped=3 …
func parseRecap(out string) map[string]map[string]int {
	recap := map[string]map[string]int{}
	in := false
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), " \r")
		if strings.HasPrefix(line, "PLAY RECAP") {
			in = true
			recap = map[string]map[string]int{} // the last recap counts
			continue
		}
		if !in {
			continue
		}
		m := recapLine.FindStringSubmatch(line)
		if m == nil {
			if strings.TrimSpace(line) != "" {
				in = false
			}
			continue
		}
		counts := map[string]int{}
		for _, kv := range strings.Fields(m[2]) {
			k, v, _ := strings.Cut(kv, "=")
			counts[k], _ = strconv.Atoi(v)
		}
		recap[m[1]] = counts
	}
	return recap
}

// secret is a value of the vault that must never be shown.
type secret struct{ name, value string }

// readSecrets decrypts the vault files of the inventories and returns
// every string in them.
func (d *deploy) readSecrets(ctx context.Context, t *testing.T, layouts ...string) {
	t.Helper()
	for _, layout := range layouts {
		files, _ := filepath.Glob(filepath.Join(d.ansible, "inventories", layout, "group_vars", "*", "vault*.yml"))
		more, _ := filepath.Glob(filepath.Join(d.ansible, "inventories", layout, "group_vars", "vault*.yml"))
		files = append(files, more...)
		if len(files) == 0 {
			t.Fatalf("inventories/%s: no group_vars/*/vault*.yml", layout)
		}
		for _, f := range files {
			out, err := run(ctx, d.ansible, nil, nil, "ansible-vault", "view", "--vault-password-file", "vault-password.example", f)
			if err != nil {
				t.Fatalf("decrypting %s: %v", f, err)
			}
			var v any
			if err := yaml.Unmarshal([]byte(out), &v); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			collectSecrets(v, layout+":", func(name, value string) {
				if len(value) < 6 {
					t.Fatalf("%s: %s is too short to look for in outputs (%d chars)", f, name, len(value))
				}
				for _, s := range d.secrets {
					if s.value == value {
						return
					}
				}
				d.secrets = append(d.secrets, secret{name: name, value: value})
			})
		}
	}
	if len(d.secrets) == 0 {
		t.Fatal("the vaults hold no secret to look for")
	}
	var names []string
	for _, s := range d.secrets {
		names = append(names, s.name)
	}
	t.Logf("secrets looked for in every ansible-playbook output: %s", strings.Join(names, ", "))
}

func collectSecrets(v any, path string, f func(name, value string)) {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			sep := "."
			if strings.HasSuffix(path, ":") {
				sep = ""
			}
			collectSecrets(x, path+sep+k, f)
		}
	case []any:
		for i, x := range v {
			collectSecrets(x, fmt.Sprintf("%s[%d]", path, i), f)
		}
	case string:
		f(path, v)
	case int, float64:
		f(path, fmt.Sprint(v))
	}
}
