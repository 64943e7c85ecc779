package zsock

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/testenv"
)

const python = "/usr/bin/python3"

// needPyzmq skips without pyzmq, except in CI where it must be installed.
func needPyzmq(t *testing.T) {
	t.Helper()
	out, err := exec.Command(python, "-c", "import zmq; print(zmq.zmq_version())").CombinedOutput()
	if err == nil {
		t.Logf("libzmq %s", strings.TrimSpace(string(out)))
		return
	}
	testenv.Missing(t, fmt.Sprintf("pyzmq unavailable (%v: %s); install python3-zmq", err, strings.TrimSpace(string(out))))
}

const pyDealer = `
import sys, time, zmq
sizes = [0, 1, 255, 256, 70000]
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER)
s.setsockopt(zmq.IDENTITY, b"py-dealer")
s.setsockopt(zmq.LINGER, 0)
s.setsockopt(zmq.RCVTIMEO, 5000)
# ZMTP 3.1 heartbeats: our side must answer PINGs or libzmq drops the link.
s.setsockopt(zmq.HEARTBEAT_IVL, 50)
s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 300)
s.connect(sys.argv[1])
for i in range(20):
    frames = [bytes([(i + j) % 256]) * n for j, n in enumerate(sizes)]
    s.send_multipart(frames)
    if s.recv_multipart() != frames:
        sys.exit("reply %d differs" % i)
time.sleep(0.8)  # several heartbeat timeouts
s.send_multipart([b"still", b"there"])
if s.recv_multipart() != [b"still", b"there"]:
    sys.exit("no reply after heartbeats")
print("ok")
`

func TestInteropPyzmqDealer(t *testing.T) {
	needPyzmq(t)
	r := listen(t, Router, testOptions())
	ids := make(chan string, 64)
	go func() {
		for {
			msg, err := r.Recv()
			if err != nil {
				return
			}
			select {
			case ids <- string(msg[0]):
			default:
			}
			_ = r.Send(msg)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, python, "-c", pyDealer, endpoint(r)).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Fatalf("pyzmq DEALER: %v\n%s", err, out)
	}
	if id := <-ids; id != "py-dealer" {
		t.Fatalf("identity %q, want py-dealer", id)
	}
}

const pyRouter = `
import sys, zmq
ctx = zmq.Context()
s = ctx.socket(zmq.ROUTER)
s.setsockopt(zmq.LINGER, 0)
s.setsockopt(zmq.RCVTIMEO, 10000)
s.bind("tcp://127.0.0.1:*")
print(s.getsockopt(zmq.LAST_ENDPOINT).decode(), flush=True)
while True:
    msg = s.recv_multipart()
    if msg[1:] == [b"bye"]:
        break
    s.send_multipart(msg)
print("ok", flush=True)
`

func TestInteropPyzmqRouter(t *testing.T) {
	needPyzmq(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, "-c", pyRouter)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cancel()
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() {
		t.Fatalf("pyzmq ROUTER printed no endpoint: %s", stderr.String())
	}
	ep := strings.TrimSpace(lines.Text())

	o := testOptions()
	o.Identity = []byte("go-dealer")
	d, err := Dial(Dealer, ep, o)
	if err != nil {
		t.Fatalf("Dial %s: %v", ep, err)
	}
	defer d.Close()
	for i := range 20 {
		want := sizedFrames(byte(i))
		if err := d.Send(want); err != nil {
			t.Fatal(err)
		}
		got, err := recvWithin(t, d, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if !equalFrames(got, want) {
			t.Fatalf("echo %d differs: sizes %v", i, frameLens(got))
		}
	}
	if err := d.Send([][]byte{[]byte("bye")}); err != nil {
		t.Fatal(err)
	}
	if !lines.Scan() || lines.Text() != "ok" {
		t.Fatalf("pyzmq ROUTER did not finish: %q %s", lines.Text(), stderr.String())
	}
	// The router process exits: the dealer notices.
	select {
	case <-d.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed after the pyzmq ROUTER exited")
	}
}
