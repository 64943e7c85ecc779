package e2e

import (
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/testenv"
)

// TestTwoBrokersProcesses (fault 8d): with two broker processes, the
// frontend and the echo worker each keep one link per broker. 200 GETs are
// spread over both brokers and each is dispatched exactly once: the
// brokers' dispatched counts add up to 200, both took a share, and neither
// saw a late (duplicate) reply — which a DEALER broadcasting to both
// brokers would produce.
func TestTwoBrokersProcesses(t *testing.T) {
	t.Parallel()
	s := newStack(t, settings{Brokers: 2})
	b0 := s.startBroker(0)
	b1 := s.startBroker(1)
	fe := s.startFrontend()
	w := s.startWorker("echo")
	for i := range s.brokers {
		s.waitWorkers(i, "echo", 1, 10*time.Second)
		testenv.Eventually(t, 5*time.Second, "the frontend's link to broker "+s.brokers[i].Name, func() bool {
			st, err := s.stats(i)
			return err == nil && st.Clients >= 1
		})
	}

	const n = 200
	rep := runLoad(t, load{Name: "GET /echo", Method: "GET", URL: s.url("/echo"), Deadline: 2 * time.Second,
		Clients: 4, Duration: 20 * time.Second, Max: n})
	t.Log(rep.summary())
	if got := rep.byStatus()["200"]; got != n || len(rep.Results) != n {
		t.Errorf("GET /echo: %v, want %d × 200", rep.byStatus(), n)
	}

	var sum uint64
	for i, br := range s.brokers {
		st := s.mustStats(i)
		echo := service(st, "echo")
		t.Logf("broker %s: echo dispatched %d, replied %d, requeued %d; late replies %d, duplicate ids %d, clients %d",
			br.Name, echo.Dispatched, echo.Replied, echo.Requeued, st.LateReplies, st.DupIDs, st.Clients)
		sum += echo.Dispatched
		if echo.Dispatched == 0 {
			t.Errorf("broker %s dispatched nothing: requests are not spread over the brokers", br.Name)
		}
		if st.LateReplies != 0 {
			t.Errorf("broker %s: %d late replies, want 0 (a reply reached a broker that did not dispatch it)", br.Name, st.LateReplies)
		}
		if echo.Dispatched != echo.Replied {
			t.Errorf("broker %s: dispatched %d, replied %d", br.Name, echo.Dispatched, echo.Replied)
		}
	}
	if sum != n {
		t.Errorf("dispatched over both brokers: %d, want exactly %d (one dispatch per request)", sum, n)
	}
	requireAlive(t, b0, b1, fe, w)
}
