//go:build deploy

// Package deploytest deploys Shoal with the playbooks of ansible/ onto
// Debian bookworm containers and checks what the deployment promises (see
// docs/deploy.md and TestDeploy). It is build-tagged `deploy`: run it with
// `make test-deploy` (also part of `make test`).
package deploytest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// deploy is the state of one run of the scenario.
type deploy struct {
	run     string // run id: names and labels
	root    string // the repo
	ansible string // the repo's ansible/
	tmp     string // keys, inventories, logs, binaries, the image's rootfs
	key     string // private key of the run
	image   string
	network string
	hosts   map[string]*host
	secrets []secret
	plays   int
	marks   map[string]string // host → its paths at the mark (changedSince)

	bin1, bin2 string // the binaries deployed, then upgraded to
	v1, v2     string // their `shoal version`

	steps []stepTime
}

type stepTime struct {
	name string
	took time.Duration
	ok   bool
}

// TestDeploy is the scenario of the deployment's acceptance, one step after
// the other; it stops at the first failing step:
//
//	setup         image (debootstrap), network, hosts h1..h4 (systemd as PID 1), ssh
//	check-fresh   site.yml --check --diff on fresh hosts: exit 0, nothing changed on them
//	deploy        site.yml: h1 (frontends, redis) → h2 (brokers) → h3 (workers) answers /echo
//	idempotence   site.yml again: changed=0 on every host, nothing restarted
//	check-deployed site.yml --check --diff on the deployed hosts: changed=0, nothing changed
//	add-capacity  h4 added to workers, site.yml --limit h4: its workers in the broker's
//	              /stats; h1..h3 untouched
//	upgrade       upgrade.yml --limit workers under steady load: 0 failed requests, new version
//	rollback      rollback.yml --limit workers under load: 0 failed requests, old version
//	kill-worker   docker kill h3: requests answered by h4
//	single        inventories/single on s1, a SysV host (sshd as PID 1): /echo served by s1;
//	              site.yml again: changed=0
//
// Every ansible-playbook output is searched for the vault's secrets.
func TestDeploy(t *testing.T) {
	began := time.Now()
	requireTools(t)
	ctx := context.Background()
	if dl, ok := t.Deadline(); ok {
		// Commands end 2 minutes before go test's own timeout, so that the
		// test fails and cleans up instead of being killed.
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl.Add(-2*time.Minute))
		defer cancel()
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("the repo root %s: %v", root, err)
	}
	d := &deploy{run: newRunID(t), root: root, ansible: filepath.Join(root, "ansible"), hosts: map[string]*host{}, marks: map[string]string{}}
	for _, f := range []string{"site.yml", "upgrade.yml", "rollback.yml", "ansible.cfg", "vault-password.example",
		"inventories/multi/group_vars", "inventories/single/group_vars"} {
		if _, err := os.Stat(filepath.Join(d.ansible, f)); err != nil {
			t.Fatalf("ansible/%s: %v", f, err)
		}
	}
	t.Logf("run %s", d.run)

	removeLeftovers(ctx, t)
	d.tmp, err = os.MkdirTemp("", fmt.Sprintf("shoal-dt-%s-%d-", d.run, os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.cleanup(t) })
	t.Cleanup(func() { d.summary(t, began) })
	for _, dir := range []string{"logs", "cp", "ansible-tmp"} {
		if err := os.MkdirAll(filepath.Join(d.tmp, dir), 0o700); err != nil {
			t.Fatal(err)
		}
	}

	d.step(t, "setup", func(t *testing.T) { d.setup(ctx, t) })
	d.step(t, "check-fresh", func(t *testing.T) { d.checkFresh(ctx, t) })
	d.step(t, "deploy", func(t *testing.T) { d.deploy(ctx, t) })
	d.step(t, "idempotence", func(t *testing.T) { d.idempotence(ctx, t) })
	d.step(t, "check-deployed", func(t *testing.T) { d.checkDeployed(ctx, t) })
	d.step(t, "add-capacity", func(t *testing.T) { d.addCapacity(ctx, t) })
	d.step(t, "upgrade", func(t *testing.T) { d.upgrade(ctx, t) })
	d.step(t, "rollback", func(t *testing.T) { d.rollback(ctx, t) })
	d.step(t, "kill-worker", func(t *testing.T) { d.killWorker(ctx, t) })
	d.step(t, "single", func(t *testing.T) { d.single(ctx, t) })
}

// step runs one step as a subtest, times it, and stops the test when it
// fails: the later steps build on it.
func (d *deploy) step(t *testing.T, name string, f func(t *testing.T)) {
	t.Helper()
	start := time.Now()
	ok := t.Run(name, f)
	d.steps = append(d.steps, stepTime{name, time.Since(start), ok})
	if !ok {
		t.Fatalf("step %s failed; the steps after it are not run", name)
	}
}

func (d *deploy) summary(t *testing.T, began time.Time) {
	var b strings.Builder
	for _, s := range d.steps {
		res := "ok"
		if !s.ok {
			res = "FAILED"
		}
		fmt.Fprintf(&b, "\n  %-15s %8v  %s", s.name, s.took.Round(100*time.Millisecond), res)
	}
	t.Logf("steps:%s\n  %-15s %8v  (without the cleanup)", b.String(), "total", time.Since(began).Round(100*time.Millisecond))
	var inits []string
	for _, n := range []string{"h1", "h2", "h3", "h4", "s1"} {
		if h := d.hosts[n]; h != nil {
			init := "SysV (no service manager: sshd is PID 1, /etc/init.d scripts)"
			if h.systemd {
				init = "systemd as PID 1"
			}
			inits = append(inits, n+": "+init)
		}
	}
	if len(inits) > 0 {
		t.Logf("init systems tested: %s", strings.Join(inits, "; "))
	}
}

func (d *deploy) cleanup(t *testing.T) {
	if os.Getenv(envKeep) == "1" {
		t.Logf("%s=1: kept the run's docker objects (label %s=%s) and %s; remove them with: sh ansible/deploytest/cleanup.sh %s",
			envKeep, labelRun, d.run, d.tmp, d.run)
		return
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	d.closeMasters(ctx)
	if err := removeRun(ctx, d.run); err != nil {
		t.Error(err)
	}
	if err := os.RemoveAll(d.tmp); err != nil {
		t.Error(err)
	}
	t.Logf("cleanup: removed the containers, network, image (label %s=%s) and %s in %v",
		labelRun, d.run, d.tmp, time.Since(start).Round(100*time.Millisecond))
}

// The hosts of the multi-host deployment.
func multiGroups(workers ...string) groups {
	return groups{"redis": {"h1"}, "frontends": {"h1"}, "brokers": {"h2"}, "workers": workers}
}

func (d *deploy) frontendURL(h string) string { return "http://" + d.hosts[h].ip + ":8080/echo" }
func (d *deploy) statsURL() string            { return "http://" + d.hosts["h2"].ip + ":9100/stats" }

// setup: the binaries, the vault's secrets, the image, the network, the
// hosts h1..h4 with systemd as PID 1 and the run's ssh key.
func (d *deploy) setup(ctx context.Context, t *testing.T) {
	d.readSecrets(ctx, t, "multi", "single")

	if bin := os.Getenv(envBin); bin != "" {
		abs, err := filepath.Abs(bin)
		if err == nil {
			_, err = os.Stat(abs)
		}
		if err != nil {
			t.Fatalf("$%s: %v", envBin, err)
		}
		// A copy: bin/shoal may be rebuilt while the test runs.
		d.bin1 = filepath.Join(d.tmp, "shoal-v1")
		if err := copyFile(abs, d.bin1, 0o755); err != nil {
			t.Fatal(err)
		}
	} else {
		d.bin1 = d.buildShoal(ctx, t, "deploytest-v1")
	}
	d.bin2 = d.buildShoal(ctx, t, "deploytest-v2")
	d.v1, d.v2 = d.version(ctx, t, d.bin1), d.version(ctx, t, d.bin2)
	if d.v1 == d.v2 {
		t.Fatalf("the binary to deploy (%s) and the upgrade (%s) have the same version %q", d.bin1, d.bin2, d.v1)
	}
	t.Logf("deploying %s (%s), upgrading to %s (%s)", d.bin1, d.v1, d.bin2, d.v2)

	d.key = filepath.Join(d.tmp, "id_ed25519")
	if _, err := run(ctx, "", nil, nil, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "shoal-deploytest-"+d.run, "-f", d.key); err != nil {
		t.Fatal(err)
	}
	d.buildImage(ctx, t)
	d.createNetwork(ctx, t)
	for _, n := range []string{"h1", "h2", "h3", "h4"} {
		d.startHost(ctx, t, n, true)
	}
}

// buildShoal builds bin/shoal's equivalent stamped with version into the
// temp dir.
func (d *deploy) buildShoal(ctx context.Context, t *testing.T, version string) string {
	t.Helper()
	out := filepath.Join(d.tmp, "shoal-"+version)
	gocmd := os.Getenv("GO")
	if gocmd == "" {
		gocmd = "go"
	}
	if _, err := run(ctx, d.root, nil, nil, gocmd, "build", "-trimpath",
		"-ldflags", "-s -w -X github.com/shoal-dev/shoal/internal/cli.version="+version, "-o", out, "./cmd/shoal"); err != nil {
		t.Fatalf("building shoal %s: %v", version, err)
	}
	return out
}

func (d *deploy) version(ctx context.Context, t *testing.T, bin string) string {
	t.Helper()
	out, err := run(ctx, "", nil, nil, bin, "version")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// checkFresh: site.yml --check --diff on hosts never deployed runs through
// and changes nothing: no file outside the volatile paths changed, no
// service started, no shoal user, no /opt/shoal.
func (d *deploy) checkFresh(ctx context.Context, t *testing.T) {
	names := []string{"h1", "h2", "h3"}
	inv := d.writeInventory(t, "multi", "multi", multiGroups("h3"))
	before := d.stateOf(ctx, t, names...)
	d.mark(ctx, t, names...)
	p := d.playbook(ctx, t, "check-fresh", inv, d.bin1, "site.yml", "--check", "--diff")
	p.mustSucceed(t, d)
	p.wantHosts(t, d, names...)
	d.unchanged(ctx, t, "site.yml --check --diff on a fresh host", before)
	for _, n := range names {
		out, err := d.sh(ctx, d.hosts[n], `for p in /opt/shoal /etc/shoal /etc/default/shoal /var/lib/shoal /etc/systemd/system/shoal.service /etc/init.d/shoal; do
			[ -e "$p" ] && echo "$p exists"; done; getent passwd shoal; true`)
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(out) != "" {
			t.Errorf("site.yml --check left on %s: %s", n, out)
		}
	}
	var changed []string
	for _, n := range names {
		c := p.recap[n]["changed"]
		changed = append(changed, fmt.Sprintf("%s changed=%d", n, c))
		if c == 0 {
			t.Errorf("site.yml --check on the fresh %s reports changed=0: check mode shows nothing of what a run would do", n)
		}
	}
	t.Logf("check mode on fresh hosts: exit 0; reported %s (what a real run would change); nothing changed on the hosts",
		strings.Join(changed, ", "))
}

// deploy: site.yml deploys the three hosts; a request to the frontend on
// h1 is answered by a worker on h3 through the broker on h2.
func (d *deploy) deploy(ctx context.Context, t *testing.T) {
	inv := d.writeInventory(t, "multi", "multi", multiGroups("h3"))
	p := d.playbook(ctx, t, "deploy", inv, d.bin1, "site.yml")
	p.mustSucceed(t, d)
	p.wantHosts(t, d, "h1", "h2", "h3")

	var r echoReply
	err := poll(ctx, 60*time.Second, 200*time.Millisecond, func() (err error) {
		r, err = getEcho(ctx, httpClient, d.frontendURL("h1")+"?x=1")
		return err
	})
	if err != nil {
		t.Fatalf("GET %s?x=1: %v", d.frontendURL("h1"), err)
	}
	if r.host() != "h3" {
		t.Fatalf("GET /echo on h1 was answered by %q, want a worker on h3", r.Worker)
	}
	t.Logf("GET http://h1:8080/echo?x=1 → 200, worker %s", r.Worker)

	var s brokerStats
	err = poll(ctx, 60*time.Second, 200*time.Millisecond, func() (err error) {
		if s, err = getStats(ctx, d.statsURL()); err != nil {
			return err
		}
		if n := s.echoWorkersByHost(); n["h3"] == 0 || len(n) != 1 {
			return fmt.Errorf("echo workers by host: %v, want h3's only", n)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("broker /stats on h2: %v", err)
	}
	t.Logf("broker /stats on h2: %d workers registered; echo workers by host %v", len(s.Workers), s.echoWorkersByHost())

	// Each host: every program RUNNING under the shoal service (systemd);
	// the secret in /etc/default/shoal (0600 root), never in shoal.yaml.
	for _, n := range []string{"h1", "h2", "h3"} {
		h := d.hosts[n]
		if err := poll(ctx, 60*time.Second, 500*time.Millisecond, func() error { return d.allRunning(ctx, h) }); err != nil {
			t.Error(err)
		}
		if out, err := d.exec(ctx, h, "systemctl", "is-active", "shoal"); err != nil || strings.TrimSpace(out) != "active" {
			t.Errorf("%s: systemctl is-active shoal: %q %v", n, out, err)
		}
		if out, err := d.exec(ctx, h, "stat", "-c", "%a %U", "/etc/default/shoal"); err != nil || strings.TrimSpace(out) != "600 root" {
			t.Errorf("%s: /etc/default/shoal: %q %v; want mode 600, owner root", n, out, err)
		}
		// The value the outputs are searched for is the one deployed.
		if env, err := d.exec(ctx, h, "cat", "/etc/default/shoal"); err != nil {
			t.Error(err)
		} else if !d.holdsSecret(env) {
			t.Errorf("%s: /etc/default/shoal holds no secret of the vault: the outputs are searched for the wrong value", n)
		}
		conf, err := d.exec(ctx, h, "cat", shoalConf)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range d.secrets {
			if strings.Contains(conf, s.value) {
				t.Errorf("%s: %s holds the vault's %s", n, shoalConf, s.name)
			}
		}
	}
}

// idempotence: a second site.yml on the deployed hosts reports changed=0
// on every host, and changes nothing: no file, service or process.
func (d *deploy) idempotence(ctx context.Context, t *testing.T) {
	d.noChangeRun(ctx, t, "idempotence", "the second site.yml")
}

// checkDeployed: site.yml --check --diff on the deployed hosts reports
// nothing to change and changes nothing.
func (d *deploy) checkDeployed(ctx context.Context, t *testing.T) {
	d.noChangeRun(ctx, t, "check-deployed", "site.yml --check --diff on the deployed hosts", "--check", "--diff")
}

// noChangeRun runs site.yml with args on the deployed h1..h3 and requires
// changed=0 on each and no process, file or service changed.
func (d *deploy) noChangeRun(ctx context.Context, t *testing.T, step, what string, args ...string) {
	names := []string{"h1", "h2", "h3"}
	inv := d.writeInventory(t, "multi", "multi", multiGroups("h3"))
	before := d.stateOf(ctx, t, names...)
	d.mark(ctx, t, names...)
	p := d.playbook(ctx, t, step, inv, d.bin1, "site.yml", args...)
	p.mustSucceed(t, d)
	p.wantHosts(t, d, names...)
	for _, n := range names {
		if c := p.recap[n]["changed"]; c != 0 {
			t.Errorf("%s: %s changed=%d, want 0; changed tasks:\n%s", what, n, c, strings.Join(p.changedTasks(), "\n"))
		}
	}
	d.unchanged(ctx, t, what, before)
	t.Logf("%s: %s; no process, file or service changed", what, p.recapString())
}

// addCapacity: h4 joins the workers with site.yml --limit h4; its workers
// register with the broker and answer requests; h1..h3 are not touched.
func (d *deploy) addCapacity(ctx context.Context, t *testing.T) {
	others := []string{"h1", "h2", "h3"}
	inv := d.writeInventory(t, "multi", "multi", multiGroups("h3", "h4"))
	before := d.stateOf(ctx, t, others...)
	d.mark(ctx, t, others...)
	p := d.playbook(ctx, t, "add-capacity", inv, d.bin1, "site.yml", "--limit", "h4")
	p.mustSucceed(t, d)
	p.wantHosts(t, d, "h4")

	var s brokerStats
	err := poll(ctx, 60*time.Second, 200*time.Millisecond, func() (err error) {
		if s, err = getStats(ctx, d.statsURL()); err != nil {
			return err
		}
		if n := s.echoWorkersByHost(); n["h4"] == 0 || n["h3"] == 0 {
			return fmt.Errorf("echo workers by host: %v, want h3 and h4", n)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("broker /stats on h2 after adding h4: %v", err)
	}
	t.Logf("broker /stats on h2: echo workers by host %v", s.echoWorkersByHost())

	// h4 answers requests too.
	seen := map[string]int{}
	err = poll(ctx, 30*time.Second, 10*time.Millisecond, func() error {
		r, err := getEcho(ctx, httpClient, d.frontendURL("h1"))
		if err != nil {
			return err
		}
		seen[r.host()]++
		if seen["h4"] == 0 {
			return fmt.Errorf("answers by host %v: none from h4", seen)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("h4 answers: answers by host until h4's first %v", seen)
	d.unchanged(ctx, t, "site.yml --limit h4", before)
	if err := d.allRunning(ctx, d.hosts["h4"]); err != nil {
		t.Error(err)
	}
}

// upgrade: upgrade.yml --limit workers with the second binary, under steady
// load through h1: no request fails, every worker host runs the new
// version, and its workers are back with the broker.
func (d *deploy) upgrade(ctx context.Context, t *testing.T) {
	d.rolling(ctx, t, "upgrade", "upgrade.yml", d.bin2, d.v2)
}

// rollback: rollback.yml --limit workers under load: no request fails,
// the old version runs again.
func (d *deploy) rollback(ctx context.Context, t *testing.T) {
	d.rolling(ctx, t, "rollback", "rollback.yml", d.bin1, d.v1)
}

func (d *deploy) rolling(ctx context.Context, t *testing.T, name, playbook, binary, want string) {
	workers := []string{"h3", "h4"}
	inv := d.writeInventory(t, "multi", "multi", multiGroups(workers...))
	s0, err := getStats(ctx, d.statsURL())
	if err != nil {
		t.Fatal(err)
	}
	counts := s0.echoWorkersByHost()
	pids := map[string]string{}
	for _, n := range workers {
		pids[n], _ = d.sh(ctx, d.hosts[n], `ps -eo pid=,comm= | awk '$2=="shoal"' | sort -n`)
	}

	l := startLoad(d.frontendURL("h1"), 4, 5*time.Millisecond)
	if err := l.waitOK(ctx, 50, 30*time.Second); err != nil {
		r := l.Stop()
		t.Fatalf("load before %s: %v; %s; %v", name, err, r, r.First)
	}
	sampler := d.sampleStats(workers)
	p := d.playbook(ctx, t, name, inv, binary, playbook, "--limit", "workers")
	// Load after the play too, on the last host's new workers.
	if err := l.waitOK(ctx, l.ok.Load()+1000, 30*time.Second); err != nil {
		t.Errorf("load after %s.yml: %v", name, err)
	}
	r := l.Stop()
	ss := sampler()
	t.Logf("load during %s.yml: %s", name, r)
	t.Logf("broker /stats during %s.yml: %s", name, ss)
	p.mustSucceed(t, d)
	p.wantHosts(t, d, workers...)
	if ss.none > 0 {
		t.Errorf("during %s.yml the broker had no echo worker in %d of %d samples: the hosts were not upgraded one at a time", name, ss.none, ss.samples)
	}
	if r.Failed > 0 {
		t.Errorf("%d of %d requests failed during %s.yml; first: %s; by error: %v", r.Failed, r.OK+r.Failed, name,
			strings.Join(r.First, "; "), r.Errors)
	}
	if r.OK == 0 {
		t.Errorf("no request succeeded during %s.yml", name)
	}
	for _, n := range workers {
		h := d.hosts[n]
		v, err := d.exec(ctx, h, shoalBin, "version")
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(v) != want {
			t.Errorf("after %s.yml, %s runs %q, want %q", name, n, strings.TrimSpace(v), want)
		}
		after, _ := d.sh(ctx, h, `ps -eo pid=,comm= | awk '$2=="shoal"' | sort -n`)
		if after == pids[n] {
			t.Errorf("after %s.yml no shoal process on %s was restarted", name, n)
		}
		links, _ := d.sh(ctx, h, `echo current=$(readlink /opt/shoal/current) previous=$(readlink /opt/shoal/previous)`)
		t.Logf("%s after %s.yml: %s; %s", n, name, strings.TrimSpace(v), strings.TrimSpace(links))
		if err := d.allRunning(ctx, h); err != nil {
			t.Error(err)
		}
	}
	// The workers are back with the broker, as many as before.
	err = poll(ctx, 30*time.Second, 200*time.Millisecond, func() error {
		s, err := getStats(ctx, d.statsURL())
		if err != nil {
			return err
		}
		if n := s.echoWorkersByHost(); fmt.Sprint(n) != fmt.Sprint(counts) {
			return fmt.Errorf("echo workers by host %v, want %v as before", n, counts)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

// statsSamples says, from the broker's /stats read every 100ms, in how
// many samples each host had no echo worker registered (it was being
// restarted), and in how many no host had one.
type statsSamples struct {
	samples, errors, none int
	absent                map[string]int
}

func (s statsSamples) String() string {
	return fmt.Sprintf("%d samples (%d errors): samples without echo workers by host %v, without any echo worker %d",
		s.samples, s.errors, s.absent, s.none)
}

// sampleStats samples the broker's /stats until the returned func is
// called; that returns the samples.
func (d *deploy) sampleStats(hosts []string) func() statsSamples {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan statsSamples)
	go func() {
		s := statsSamples{absent: map[string]int{}}
		for ctx.Err() == nil {
			st, err := getStats(ctx, d.statsURL())
			if err != nil {
				if ctx.Err() == nil {
					s.errors++
				}
			} else {
				s.samples++
				n := st.echoWorkersByHost()
				for _, h := range hosts {
					if n[h] == 0 {
						s.absent[h]++
					}
				}
				if len(n) == 0 {
					s.none++
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
		done <- s
	}()
	return func() statsSamples { cancel(); return <-done }
}

// killWorker: docker kill h3 under load; the requests are answered by h4's
// workers (the broker re-dispatches the idempotent GETs h3's workers held).
func (d *deploy) killWorker(ctx context.Context, t *testing.T) {
	l := startLoad(d.frontendURL("h1"), 4, 5*time.Millisecond)
	if err := l.waitOK(ctx, 50, 30*time.Second); err != nil {
		r := l.Stop()
		t.Fatalf("load before the kill: %v; %s", err, r)
	}
	killed := time.Now()
	if _, err := docker(ctx, "kill", d.hosts["h3"].container); err != nil {
		l.Stop()
		t.Fatal(err)
	}
	t.Logf("docker kill %s (h3)", d.hosts["h3"].container)
	// The broker forgets h3's workers (missed heartbeats).
	err := poll(ctx, 30*time.Second, 100*time.Millisecond, func() error {
		s, err := getStats(ctx, d.statsURL())
		if err != nil {
			return err
		}
		if n := s.echoWorkersByHost(); n["h3"] > 0 || n["h4"] == 0 {
			return fmt.Errorf("echo workers by host %v", n)
		}
		return nil
	})
	if err != nil {
		l.Stop()
		t.Fatalf("the broker after h3's kill: %v", err)
	}
	t.Logf("the broker dropped h3's workers %v after the kill", time.Since(killed).Round(10*time.Millisecond))
	// The load goes on for a while (longer than the broker's liveness,
	// 3 heartbeats) with h4 alone.
	if err := l.waitOK(ctx, l.ok.Load()+2000, 60*time.Second); err != nil {
		r := l.Stop()
		t.Fatalf("load after the kill: %v; %s", err, r)
	}
	// 200 requests in a row, each answered 200 by h4.
	seq := map[string]int{}
	for i := 0; i < 200; i++ {
		r, err := getEcho(ctx, httpClient, fmt.Sprintf("%s?after-kill=%d", d.frontendURL("h1"), i))
		if err != nil {
			t.Errorf("request %d after the kill: %v", i, err)
			continue
		}
		seq[r.host()]++
	}
	r := l.Stop()
	t.Logf("200 sequential requests after the kill answered by %v", seq)
	t.Logf("load across the kill: %s", r)
	if seq["h4"] != 200 {
		t.Errorf("sequential requests after the kill answered by %v, want 200 by h4", seq)
	}
	if r.Failed > 0 {
		t.Errorf("%d of %d requests across the kill failed; first: %s; by error: %v", r.Failed, r.OK+r.Failed,
			strings.Join(r.First, "; "), r.Errors)
	}
}

// single: inventories/single on s1, a host without systemd: the SysV
// script runs the service, and s1's frontend answers /echo from s1.
func (d *deploy) single(ctx context.Context, t *testing.T) {
	// s1 may get the address of the killed h3: no ssh master to it.
	d.closeMasters(ctx)
	h := d.startHost(ctx, t, "s1", false)
	inv := d.writeInventory(t, "single", "single", groups{"redis": {"s1"}, "brokers": {"s1"}, "frontends": {"s1"}, "workers": {"s1"}})
	p := d.playbook(ctx, t, "single", inv, d.bin1, "site.yml")
	p.mustSucceed(t, d)
	p.wantHosts(t, d, "s1")
	var r echoReply
	err := poll(ctx, 60*time.Second, 200*time.Millisecond, func() (err error) {
		r, err = getEcho(ctx, httpClient, d.frontendURL("s1")+"?single=1")
		return err
	})
	if err != nil {
		t.Fatalf("GET %s: %v", d.frontendURL("s1"), err)
	}
	if r.host() != "s1" {
		t.Errorf("GET /echo on s1 answered by %q, want s1", r.Worker)
	}
	t.Logf("GET http://s1:8080/echo → 200, worker %s", r.Worker)
	// Idempotent on a SysV host too.
	before := d.stateOf(ctx, t, "s1")
	d.mark(ctx, t, "s1")
	p = d.playbook(ctx, t, "single-again", inv, d.bin1, "site.yml")
	p.mustSucceed(t, d)
	p.wantHosts(t, d, "s1")
	if c := p.recap["s1"]["changed"]; c != 0 {
		t.Errorf("second site.yml on s1: changed=%d, want 0; changed tasks:\n%s", c, strings.Join(p.changedTasks(), "\n"))
	}
	d.unchanged(ctx, t, "the second site.yml on s1", before)
	if err := d.allRunning(ctx, h); err != nil {
		t.Error(err)
	}
	init, _ := d.exec(ctx, h, "cat", "/proc/1/comm")
	if strings.TrimSpace(init) == "systemd" {
		t.Errorf("s1 runs systemd as PID 1; want a host without it")
	}
	if out, err := d.sh(ctx, h, `test -x /etc/init.d/shoal && ! test -e /run/systemd/system && /etc/init.d/shoal status`); err != nil {
		t.Errorf("s1: the SysV service: %v", err)
	} else {
		status, _ := d.exec(ctx, h, shoalBin, "service", "status", "-c", shoalConf)
		t.Logf("s1: PID 1 %s; /etc/init.d/shoal status: %s; shoal service status: %s",
			strings.TrimSpace(init), strings.TrimSpace(out), strings.TrimSpace(status))
	}
}
