//go:build deploy

package deploytest

import "testing"

func TestParseRecap(t *testing.T) {
	out := `PLAY [x] ***

TASK [y] ***
changed: [h1]

PLAY RECAP *********************************************************************
h1                         : ok=12   changed=1    unreachable=0    failed=0    skipped=3    rescued=0    ignored=0
h2.example                 : ok=4    changed=0    unreachable=1    failed=2    skipped=0    rescued=0    ignored=0

`
	r := parseRecap(out)
	if len(r) != 2 || r["h1"]["ok"] != 12 || r["h1"]["changed"] != 1 || r["h1"]["skipped"] != 3 ||
		r["h2.example"]["unreachable"] != 1 || r["h2.example"]["failed"] != 2 {
		t.Fatalf("parseRecap: %v", r)
	}
	if r := parseRecap("no recap\n"); len(r) != 0 {
		t.Fatalf("parseRecap without a recap: %v", r)
	}
}
