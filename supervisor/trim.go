package supervisor

import (
	"bufio"
	"bytes"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Options.TrimMemory: the supervisor spends its life waiting, yet its
// resident size would stay at the high-water mark of its busiest moment.
// Two things make up that size. The heap that a burst of control requests
// used, which debug.FreeOSMemory returns. And, for most of it, the pages
// of the shoal binary itself: one binary holds every component, and its
// start-up (and the kernel's fault-around, 64 KiB per page fault) maps
// nearly all of its code and read-only data, although the supervisor
// runs a small part of it. Those pages are clean copies of the file:
// dropping them (MADV_DONTNEED) costs nothing but a minor fault when a
// page is needed again. Only mappings of the executable that are not
// writable and hold no private (modified) page are dropped, so no data
// can be lost whatever the build mode.

const trimDelay = 2 * time.Second

// trimSoon releases memory trimDelay after the last call: after start-up,
// after control requests, after a child's death.
func (s *Supervisor) trimSoon() {
	if !s.o.TrimMemory {
		return
	}
	s.trimMu.Lock()
	defer s.trimMu.Unlock()
	if s.trim == nil {
		s.trim = time.AfterFunc(trimDelay, releaseMemory)
		return
	}
	s.trim.Reset(trimDelay)
}

func releaseMemory() {
	debug.FreeOSMemory()
	dropExecutablePages()
}

// dropExecutablePages drops the resident pages of the executable's
// read-only, unmodified mappings.
func dropExecutablePages() {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return
	}
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return
	}
	type mapping struct {
		start, end uint64
		ok         bool
	}
	var maps []mapping
	cur := -1
	sc := bufio.NewScanner(bytes.NewReader(smaps))
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
			// A mapping's header: start-end perms offset dev inode [path].
			cur = -1
			path := strings.TrimSpace(strings.Join(f[5:], " "))
			if path != exe || len(f[1]) < 2 || f[1][1] == 'w' {
				continue
			}
			lo, hi, _ := strings.Cut(f[0], "-")
			a, err1 := strconv.ParseUint(lo, 16, 64)
			b, err2 := strconv.ParseUint(hi, 16, 64)
			if err1 != nil || err2 != nil {
				continue
			}
			maps = append(maps, mapping{a, b, true})
			cur = len(maps) - 1
			continue
		}
		if cur >= 0 && len(f) >= 2 && f[0] == "Anonymous:" && f[1] != "0" {
			maps[cur].ok = false // a modified private page: keep it all
		}
	}
	const madvDontneed = 4
	for _, m := range maps {
		if m.ok {
			syscall.Syscall(syscall.SYS_MADVISE, uintptr(m.start), uintptr(m.end-m.start), madvDontneed)
		}
	}
}
