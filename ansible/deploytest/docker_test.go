//go:build deploy

package deploytest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// docker runs the docker CLI.
func docker(ctx context.Context, args ...string) (string, error) {
	return run(ctx, "", nil, nil, "docker", args...)
}

// removeRun removes every container, network and image labelled
// labelRun=id. It returns what it could not remove.
func removeRun(ctx context.Context, id string) error {
	var errs []string
	filter := "label=" + labelRun + "=" + id
	if out, err := docker(ctx, "ps", "-aq", "--filter", filter); err != nil {
		errs = append(errs, err.Error())
	} else if ids := strings.Fields(out); len(ids) > 0 {
		if _, err := docker(ctx, append([]string{"rm", "-f", "-v"}, ids...)...); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if out, err := docker(ctx, "network", "ls", "-q", "--filter", filter); err != nil {
		errs = append(errs, err.Error())
	} else if ids := strings.Fields(out); len(ids) > 0 {
		if _, err := docker(ctx, append([]string{"network", "rm"}, ids...)...); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if out, err := docker(ctx, "images", "-q", "--filter", filter); err != nil {
		errs = append(errs, err.Error())
	} else if ids := strings.Fields(out); len(ids) > 0 {
		if _, err := docker(ctx, append([]string{"rmi", "-f"}, dedup(ids)...)...); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("removing the docker objects of run %s: %s", id, strings.Join(errs, "; "))
	}
	return nil
}

// removeLeftovers removes the docker objects and temp dirs of earlier runs
// whose test process is gone (killed before its cleanup ran). Objects of
// a run still going (another go test) are left alone.
func removeLeftovers(ctx context.Context, t *testing.T) {
	t.Helper()
	runs := map[string]bool{} // run id → its process is gone
	collect := func(kind string, listArgs []string, inspect []string) {
		out, err := docker(ctx, append(listArgs, "-q", "--filter", "label="+labelRun)...)
		if err != nil {
			t.Logf("listing leftover %s: %v", kind, err)
			return
		}
		for _, id := range dedup(strings.Fields(out)) {
			lbl, err := docker(ctx, append(inspect, "--format",
				`{{index .`+labelPath(kind)+` "`+labelRun+`"}} {{index .`+labelPath(kind)+` "`+labelPID+`"}}`, id)...)
			if err != nil {
				continue // gone meanwhile
			}
			f := strings.Fields(lbl)
			if len(f) == 0 {
				continue
			}
			pid := 0
			if len(f) > 1 {
				pid, _ = strconv.Atoi(f[1])
			}
			if !processAlive(pid) {
				runs[f[0]] = true
			}
		}
	}
	collect("containers", []string{"ps", "-a"}, []string{"container", "inspect"})
	collect("networks", []string{"network", "ls"}, []string{"network", "inspect"})
	collect("images", []string{"images"}, []string{"image", "inspect"})
	for id := range runs {
		t.Logf("removing the leftovers of the earlier run %s", id)
		if err := removeRun(ctx, id); err != nil {
			t.Log(err)
		}
	}
	// Temp dirs: shoal-dt-<run>-<pid>-*.
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "shoal-dt-*"))
	for _, d := range dirs {
		parts := strings.Split(filepath.Base(d), "-")
		if len(parts) < 5 {
			continue
		}
		if pid, err := strconv.Atoi(parts[len(parts)-2]); err == nil && !processAlive(pid) {
			t.Logf("removing the leftover temp dir %s", d)
			_ = os.RemoveAll(d)
		}
	}
}

func labelPath(kind string) string {
	if kind == "networks" {
		return "Labels"
	}
	return "Config.Labels"
}

func dedup(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, x := range s {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

// host is one container.
type host struct {
	name      string // inventory hostname = container hostname
	container string // docker name
	ip        string
	systemd   bool // booted with systemd as PID 1; else sshd is PID 1
}

// labels are the docker labels of everything the run makes.
func (d *deploy) labels() []string {
	return []string{"--label", labelRun + "=" + d.run, "--label", labelPID + "=" + strconv.Itoa(os.Getpid())}
}

// buildImage builds the hosts' image with mkimage.sh, or takes
// $SHOAL_DEPLOYTEST_IMAGE.
func (d *deploy) buildImage(ctx context.Context, t *testing.T) {
	if img := os.Getenv(envImage); img != "" {
		if _, err := docker(ctx, "image", "inspect", img); err != nil {
			t.Fatalf("%s=%s: %v", envImage, img, err)
		}
		d.image = img
		t.Logf("image %s (from $%s, not built, not removed)", img, envImage)
		return
	}
	tag := "shoal-deploytest:" + d.run
	// TMPDIR: the rootfs is made in the run's temp dir, so that it goes
	// with it whatever happens.
	out, err := run(ctx, "", []string{"TMPDIR=" + d.tmp}, nil, "sh", filepath.Join(d.root, "ansible/deploytest/mkimage.sh"),
		tag, labelRun+"="+d.run, labelPID+"="+strconv.Itoa(os.Getpid()))
	if err != nil {
		t.Fatalf("building the image: %v", err)
	}
	d.image = tag
	t.Logf("image %s built: %s", tag, strings.TrimSpace(out))
}

func (d *deploy) createNetwork(ctx context.Context, t *testing.T) {
	name := "shoal-dt-" + d.run
	if _, err := docker(ctx, append(append([]string{"network", "create"}, d.labels()...), name)...); err != nil {
		t.Fatalf("creating the network: %v", err)
	}
	d.network = name
}

// startHost starts a container named after the inventory hostname, with
// systemd as PID 1 (the image's /sbin/init) or, without systemd, with sshd
// as PID 1 (a SysV host: no service manager but /etc/init.d scripts). It
// installs the run's key and waits until ssh answers.
func (d *deploy) startHost(ctx context.Context, t *testing.T, name string, systemd bool) *host {
	t.Helper()
	h := &host{name: name, container: "shoal-dt-" + d.run + "-" + name, systemd: systemd}
	args := append([]string{"run", "-d", "--name", h.container, "--hostname", name, "--network", d.network}, d.labels()...)
	if systemd {
		args = append(args, "-e", "container=docker", "--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
			"--tmpfs", "/run", "--tmpfs", "/run/lock", "--stop-signal", "SIGRTMIN+3", d.image)
	} else {
		args = append(args, d.image, "/bin/sh", "-c", "ssh-keygen -A >/dev/null; mkdir -p /run/sshd; exec /usr/sbin/sshd -D -e")
	}
	if _, err := docker(ctx, args...); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	ip, err := docker(ctx, "container", "inspect", "--format", `{{(index .NetworkSettings.Networks "`+d.network+`").IPAddress}}`, h.container)
	if err != nil || strings.TrimSpace(ip) == "" {
		t.Fatalf("the address of %s: %q %v", name, ip, err)
	}
	h.ip = strings.TrimSpace(ip)
	pub, err := os.ReadFile(d.key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := run(ctx, "", nil, pub, "docker", "exec", "-i", h.container, "sh", "-c",
		"umask 077 && mkdir -p /root/.ssh && cat >/root/.ssh/authorized_keys"); err != nil {
		t.Fatalf("installing the ssh key on %s: %v", name, err)
	}
	if systemd {
		// The boot must end "running": a degraded host is no base to test
		// a deployment on.
		err := poll(ctx, 90*time.Second, 250*time.Millisecond, func() error {
			out, _ := d.exec(ctx, h, "systemctl", "is-system-running")
			switch s := strings.TrimSpace(out); s {
			case "running":
				return nil
			case "degraded":
				failed, _ := d.exec(ctx, h, "systemctl", "--failed", "--no-legend", "--plain")
				return fmt.Errorf("systemd on %s is degraded: %s", name, failed)
			default:
				return fmt.Errorf("systemd on %s: %q", name, s)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	err = poll(ctx, 60*time.Second, 250*time.Millisecond, func() error {
		_, err := d.ssh(ctx, h, "true")
		return err
	})
	if err != nil {
		t.Fatalf("ssh to %s (%s): %v", name, h.ip, err)
	}
	init, _ := d.exec(ctx, h, "cat", "/proc/1/comm")
	t.Logf("host %s: container %s, %s, PID 1 = %s", name, h.container, h.ip, strings.TrimSpace(init))
	d.hosts[name] = h
	return h
}

// exec runs a command in the host's container.
func (d *deploy) exec(ctx context.Context, h *host, args ...string) (string, error) {
	return docker(ctx, append([]string{"exec", h.container}, args...)...)
}

// execStdout runs a command in the host's container and returns its
// standard output alone (the error carries both).
func (d *deploy) execStdout(ctx context.Context, h *host, args ...string) (string, error) {
	cmd := command(ctx, "", nil, "docker", append([]string{"exec", h.container}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("docker exec %s %s: %w\n%s%s", h.container, strings.Join(args, " "), err,
			tail(stdout.String(), 20), tail(stderr.String(), 20))
	}
	return stdout.String(), nil
}

// closeMasters ends Ansible's ssh master connections (ControlPersist):
// before a host takes the address of one gone, and at the end.
func (d *deploy) closeMasters(ctx context.Context) {
	socks, _ := filepath.Glob(filepath.Join(d.tmp, "cp", "*"))
	for _, s := range socks {
		_, _ = run(ctx, "", nil, nil, "ssh", "-o", "ControlPath="+s, "-O", "exit", "shoal-deploytest")
	}
}

// sh runs a shell script in the host's container.
func (d *deploy) sh(ctx context.Context, h *host, script string) (string, error) {
	return d.exec(ctx, h, "sh", "-c", script)
}

// sshOptions are the options of every ssh to the hosts: the run's key, no
// known_hosts (each run's hosts have new host keys).
func (d *deploy) sshOptions() string {
	return "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
}

func (d *deploy) ssh(ctx context.Context, h *host, command string) (string, error) {
	args := append([]string{"-i", d.key, "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"}, strings.Fields(d.sshOptions())...)
	args = append(args, "root@"+h.ip, command)
	return run(ctx, "", nil, nil, "ssh", args...)
}
