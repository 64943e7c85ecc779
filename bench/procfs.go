package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"
)

// clockTick is USER_HZ, the unit of utime and stime in /proc/PID/stat. It
// is 100 on every Linux architecture Go supports.
const clockTick = 10 * time.Millisecond

// usage is a process's CPU time and context switches so far and its
// resident memory now.
type usage struct {
	cpu    time.Duration // user + system, all threads
	rssKiB int64         // VmRSS; -1 when unknown
	// switches counts the context switches of its live threads, voluntary
	// (the thread slept: futex, epoll_wait, nanosleep) and not. On a VM a
	// sleep and wake-up costs tens of µs of CPU, so this is often the
	// figure that explains CPU-µs/req.
	switches int64
}

// readUsage reads /proc/PID/stat (utime, stime) and /proc/PID/status
// (VmRSS).
func readUsage(pid int) (usage, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return usage{}, err
	}
	// The command name, field 2, is in parentheses and may hold spaces:
	// count fields after the last ')'. There, field 3 (state) is index 0,
	// so utime (14) and stime (15) are 11 and 12.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return usage{}, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	f := bytes.Fields(stat[i+1:])
	if len(f) < 13 {
		return usage{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ut, err1 := strconv.ParseInt(string(f[11]), 10, 64)
	st, err2 := strconv.ParseInt(string(f[12]), 10, 64)
	if err1 != nil || err2 != nil {
		return usage{}, fmt.Errorf("/proc/%d/stat: bad utime/stime", pid)
	}
	u := usage{cpu: time.Duration(ut+st) * clockTick, rssKiB: -1}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, err
	}
	if n, ok := statusField(status, "VmRSS:"); ok { // "VmRSS:	   12345 kB"
		u.rssKiB = n
	}
	u.switches = contextSwitches(pid)
	return u, nil
}

// contextSwitches sums the context switches of every thread of pid.
func contextSwitches(pid int) int64 {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var sum int64
	for _, t := range tasks {
		status, err := os.ReadFile(dir + "/" + t.Name() + "/status")
		if err != nil {
			continue // the thread exited meanwhile
		}
		v, _ := statusField(status, "voluntary_ctxt_switches:")
		nv, _ := statusField(status, "nonvoluntary_ctxt_switches:")
		sum += v + nv
	}
	return sum
}

// statusField returns the number after key in a /proc status file.
func statusField(status []byte, key string) (int64, bool) {
	for _, line := range bytes.Split(status, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte(key)); ok {
			if fs := bytes.Fields(v); len(fs) >= 1 {
				n, err := strconv.ParseInt(string(fs[0]), 10, 64)
				return n, err == nil
			}
		}
	}
	return 0, false
}

// selfCPU is this process's CPU time, with microsecond resolution.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// machineBusy is the CPU time all processes of the machine have used so
// far, summed over CPUs, from /proc/stat: task is user, nice, system and
// steal; irq is hardware and soft interrupts. The kernel charges interrupt
// time to no process, and most of it here is loopback TCP: the benchmark's
// own traffic. So task time minus what the measured processes used is what
// other processes took, and irq is reported apart.
func machineBusy() (task, irq time.Duration, err error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := bytes.Cut(data, []byte("\n"))
	f := bytes.Fields(line)
	if len(f) < 9 || string(f[0]) != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var v [9]int64
	for i := 1; i < 9; i++ {
		if v[i], err = strconv.ParseInt(string(f[i]), 10, 64); err != nil {
			return 0, 0, fmt.Errorf("/proc/stat: %w", err)
		}
	}
	// cpu user nice system idle iowait irq softirq steal
	task = time.Duration(v[1]+v[2]+v[3]+v[8]) * clockTick
	irq = time.Duration(v[6]+v[7]) * clockTick
	return task, irq, nil
}
