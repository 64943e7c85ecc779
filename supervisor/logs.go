package supervisor

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"

	"gopkg.in/natefinch/lumberjack.v2"
)

// Streams of an instance's output.
const (
	Stdout = "stdout"
	Stderr = "stderr"
)

// logSet holds the rotating log files of every instance, by file name:
// an instance that comes back after a reload writes to the same logger.
type logSet struct {
	dir string
	tee io.Writer

	teeMu sync.Mutex // one line at a time on tee

	mu      sync.Mutex
	maxMB   int
	keep    int
	streams map[string]*lumberjack.Logger
	insts   map[string]*instanceLogs
}

func newLogSet(dir string, tee io.Writer) *logSet {
	return &logSet{dir: dir, tee: tee, maxMB: 10, keep: 5,
		streams: make(map[string]*lumberjack.Logger), insts: make(map[string]*instanceLogs)}
}

// configure sets rotation for loggers created from now on.
func (ls *logSet) configure(maxBytes int64, keep int) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	ls.maxMB = int((maxBytes + 1<<20 - 1) >> 20)
	ls.keep = keep
}

// File returns the log file of an instance's stream in dir.
func File(dir, program string, index int, stream string) string {
	return filepath.Join(dir, program+"."+strconv.Itoa(index)+"."+stream+".log")
}

func (ls *logSet) logger(file string) *lumberjack.Logger {
	l := ls.streams[file]
	if l == nil {
		l = &lumberjack.Logger{Filename: file, MaxSize: ls.maxMB, MaxBackups: ls.keep}
		ls.streams[file] = l
	}
	return l
}

// instance returns the logs of instance name (program:index).
func (ls *logSet) instance(program string, index int, name string, tee bool) *instanceLogs {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	il := ls.insts[name]
	if il == nil {
		il = &instanceLogs{ls: ls, name: name, followers: make(map[*follower]struct{})}
		il.out = &stream{kind: Stdout, file: File(ls.dir, program, index, Stdout)}
		il.err = &stream{kind: Stderr, file: File(ls.dir, program, index, Stderr)}
		il.out.w = ls.logger(il.out.file)
		il.err.w = ls.logger(il.err.file)
		ls.insts[name] = il
	}
	il.tee.Store(tee)
	return il
}

func (ls *logSet) close() {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	for _, l := range ls.streams {
		l.Close()
	}
}

// instanceLogs is where one instance's output goes: files, tee, and
// `shoal ctl tail -f` followers.
type instanceLogs struct {
	ls       *logSet
	name     string
	tee      atomic.Bool
	out, err *stream

	mu        sync.Mutex // guards the streams' tails and the followers
	followers map[*follower]struct{}
}

type stream struct {
	kind    string
	file    string
	w       *lumberjack.Logger
	tail    []byte // the last bytes written, for lastLine
	partial []byte // an unfinished line waiting for tee
}

// chunk is output for a follower.
type chunk struct {
	name, stream string
	data         []byte // nil: the follower fell behind and chunks were dropped
}

type follower struct {
	ch      chan chunk
	dropped bool
}

const tailKeep = 1024

var readBufs = sync.Pool{New: func() any { b := make([]byte, 4<<10); return &b }}

// attach reads a new process's stdout and stderr until EOF. The returned
// channel closes when both have ended.
func (il *instanceLogs) attach(stdout, stderr *os.File) chan struct{} {
	done := make(chan struct{})
	var left atomic.Int32
	left.Store(2)
	read := func(f *os.File, st *stream) {
		bp := readBufs.Get().(*[]byte)
		defer func() {
			readBufs.Put(bp)
			f.Close()
			il.flushPartial(st)
			if left.Add(-1) == 0 {
				close(done)
			}
		}()
		for {
			n, err := f.Read(*bp)
			if n > 0 {
				il.write(st, (*bp)[:n])
			}
			if err != nil {
				return
			}
		}
	}
	go read(stdout, il.out)
	go read(stderr, il.err)
	return done
}

func (il *instanceLogs) write(st *stream, p []byte) {
	_, _ = st.w.Write(p) // a full disk must not stop the child: drop
	il.mu.Lock()
	defer il.mu.Unlock()
	st.tail = append(st.tail, p...)
	if len(st.tail) > tailKeep {
		st.tail = append(st.tail[:0], st.tail[len(st.tail)-tailKeep:]...)
	}
	if il.tee.Load() {
		il.teeLines(st, p)
	}
	for f := range il.followers {
		if f.dropped {
			select {
			case f.ch <- chunk{name: il.name, stream: st.kind}:
				f.dropped = false
			default:
				continue
			}
		}
		select {
		case f.ch <- chunk{name: il.name, stream: st.kind, data: bytes.Clone(p)}:
		default:
			f.dropped = true
		}
	}
}

// teeLines copies complete lines to the supervisor's log, prefixed.
func (il *instanceLogs) teeLines(st *stream, p []byte) {
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			st.partial = append(st.partial, p...)
			if len(st.partial) >= 4<<10 { // a line that long goes out in pieces
				il.teeLine(st.partial)
				st.partial = st.partial[:0]
			}
			return
		}
		line := p[:i]
		if len(st.partial) > 0 {
			line = append(st.partial, line...)
			st.partial = st.partial[:0]
		}
		il.teeLine(line)
		p = p[i+1:]
	}
}

func (il *instanceLogs) teeLine(line []byte) {
	b := make([]byte, 0, len(il.name)+len(line)+4)
	b = append(append(append(b, il.name...), " | "...), line...)
	b = append(b, '\n')
	il.ls.teeMu.Lock()
	il.ls.tee.Write(b)
	il.ls.teeMu.Unlock()
}

func (il *instanceLogs) flushPartial(st *stream) {
	il.mu.Lock()
	defer il.mu.Unlock()
	if len(st.partial) > 0 && il.tee.Load() {
		il.teeLine(st.partial)
	}
	st.partial = st.partial[:0]
}

// lastLine returns the last non-empty line of output, from stderr if it
// has one: usually why a process died.
func (il *instanceLogs) lastLine() string {
	il.mu.Lock()
	defer il.mu.Unlock()
	for _, st := range []*stream{il.err, il.out} {
		if l := lastLine(st.tail); l != "" {
			return l
		}
	}
	return ""
}

func lastLine(b []byte) string {
	b = bytes.TrimRight(b, "\r\n\t ")
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[i+1:]
	}
	const max = 300
	if len(b) > max {
		b = append(b[:max:max], "…"...)
	}
	return string(bytes.TrimSpace(b))
}

func (il *instanceLogs) follow() *follower {
	f := &follower{ch: make(chan chunk, 64)}
	il.mu.Lock()
	il.followers[f] = struct{}{}
	il.mu.Unlock()
	return f
}

func (il *instanceLogs) unfollow(f *follower) {
	il.mu.Lock()
	delete(il.followers, f)
	il.mu.Unlock()
}

func (il *instanceLogs) streamFile(kind string) string {
	if kind == Stdout {
		return il.out.file
	}
	return il.err.file
}

// lastLines returns the last n lines of a log file (the current one, not
// rotated ones).
func lastLines(file string, n int) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, nil
	}
	// Read backwards in chunks until n+1 newlines are in hand (at most
	// 1 MiB: longer lines are cut).
	size := fi.Size()
	const chunk, most = 4 << 10, 1 << 20
	var buf []byte
	off := size
	for off > 0 && int64(len(buf)) < most && bytes.Count(buf, []byte{'\n'}) <= n {
		k := min(int64(chunk), off)
		off -= k
		part := make([]byte, k, int64(len(buf))+k)
		if _, err := f.ReadAt(part, off); err != nil && err != io.EOF {
			return nil, err
		}
		buf = append(part, buf...)
	}
	if off > 0 { // drop the first, partial line
		if i := bytes.IndexByte(buf, '\n'); i >= 0 {
			buf = buf[i+1:]
		}
	}
	end := len(buf)
	if end > 0 && buf[end-1] == '\n' {
		end--
	}
	cut := 0
	for i, k := end-1, 0; i >= 0; i-- {
		if buf[i] == '\n' {
			k++
			if k == n {
				cut = i + 1
				break
			}
		}
	}
	return buf[cut:], nil
}
