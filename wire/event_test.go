package wire

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

func sampleEvent() Event {
	body, _ := msgpack.Marshal(map[string]any{"id": 42, "name": "Ada"})
	return Event{ID: "9f2c41a07be3-1a", Topic: "employee.created", Body: body, Time: 1_767_225_600_000_000,
		RID: "req-1", Trace: []Hop{{Service: "frontend", Process: "h/1", Start: 5, Dur: 6}, {Service: "hr", Process: "h/2", Start: 7, Dur: 8}}}
}

func TestEventRoundTrip(t *testing.T) {
	for name, in := range map[string]Event{
		"full":    sampleEvent(),
		"minimal": {ID: "1", Topic: "a"},
	} {
		t.Run(name, func(t *testing.T) {
			b := in.AppendMsgpack(nil)
			var out Event
			if err := out.UnmarshalMsgpack(b); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(in, out) {
				t.Fatalf("round trip:\nwant %+v\n got %+v", in, out)
			}
			topic, err := PeekEvent(b)
			if err != nil || string(topic) != in.Topic {
				t.Fatalf("PeekEvent = %q, %v; want %q", topic, err, in.Topic)
			}
		})
	}
}

// An event written by a generic msgpack library (what a Python publisher
// sends) decodes, and the keys are the documented ones.
func TestEventIsPlainMsgpack(t *testing.T) {
	in := sampleEvent()
	var m map[string]any
	if err := msgpack.Unmarshal(in.AppendMsgpack(nil), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"id", "topic", "body", "ts", "rid", "tr"} {
		if _, ok := m[k]; !ok {
			t.Errorf("key %q missing from %v", k, m)
		}
	}
	generic, _ := msgpack.Marshal(map[string]any{"id": "p-1", "topic": "task.7.done", "ts": 12, "body": []byte{0xc0}, "new": true})
	var ev Event
	if err := ev.UnmarshalMsgpack(generic); err != nil || ev.ID != "p-1" || ev.Topic != "task.7.done" || ev.Time != 12 {
		t.Fatalf("generic event: %v %+v", err, ev)
	}
	if topic, err := PeekEvent(generic); err != nil || string(topic) != "task.7.done" {
		t.Fatalf("generic peek: %q %v", topic, err)
	}
}

func TestEventValidation(t *testing.T) {
	enc := func(m map[string]any) []byte { b, _ := msgpack.Marshal(m); return b }
	for name, b := range map[string][]byte{
		"no id":       enc(map[string]any{"topic": "a"}),
		"no topic":    enc(map[string]any{"id": "1"}),
		"empty id":    enc(map[string]any{"id": "", "topic": "a"}),
		"id newline":  enc(map[string]any{"id": "a\nb", "topic": "a"}),
		"long id":     enc(map[string]any{"id": strings.Repeat("x", 129), "topic": "a"}),
		"bad topic":   enc(map[string]any{"id": "1", "topic": "a..b"}),
		"topic space": enc(map[string]any{"id": "1", "topic": "a b"}),
		"topic int":   enc(map[string]any{"id": "1", "topic": 7}),
		"id int":      enc(map[string]any{"id": 7, "topic": "a"}),
		"not a map":   enc(map[string]any{"id": "1", "topic": "a"})[1:],
		"trailing":    append(enc(map[string]any{"id": "1", "topic": "a"}), 0xc0),
		"nil":         {0xc0},
	} {
		var ev Event
		if err := ev.UnmarshalMsgpack(b); !errors.Is(err, ErrEnvelope) {
			t.Errorf("%s: decode err = %v, want ErrEnvelope", name, err)
		}
		if _, err := PeekEvent(b); err == nil {
			t.Errorf("%s: PeekEvent accepted it", name)
		}
	}
}

func TestValidTopic(t *testing.T) {
	good := []string{"a", "task.42.done", "employee.created", "A-b_c:d.9", strings.Repeat("a", MaxTopic)}
	bad := []string{"", ".", "a.", ".a", "a..b", "a b", "a/b", "a*", "é", strings.Repeat("a", MaxTopic+1), "a\n"}
	for _, s := range good {
		if !ValidTopic(s) || !ValidTopicPrefix(s) {
			t.Errorf("ValidTopic(%q) = false", s)
		}
	}
	for _, s := range bad {
		if ValidTopic(s) {
			t.Errorf("ValidTopic(%q) = true", s)
		}
	}
	if !ValidTopicPrefix("") {
		t.Error(`ValidTopicPrefix("") = false`)
	}
}

func TestTopicMatch(t *testing.T) {
	for _, c := range []struct {
		prefix, topic string
		want          bool
	}{
		{"", "a.b", true},
		{"task", "task.42.done", true},
		{"task.42", "task.42.done", true},
		{"task.42.done", "task.42.done", true},
		{"task.4", "task.42.done", false},
		{"task.42.done.x", "task.42.done", false},
		{"tas", "task", false},
		{"b", "a.b", false},
	} {
		if got := TopicMatch(c.prefix, c.topic); got != c.want {
			t.Errorf("TopicMatch(%q, %q) = %v", c.prefix, c.topic, got)
		}
		// TopicPrefixes lists exactly the matching prefixes.
		found := false
		TopicPrefixes(c.topic, func(p string) bool {
			if !TopicMatch(p, c.topic) {
				t.Errorf("TopicPrefixes(%q) gave %q, which does not match", c.topic, p)
			}
			found = found || p == c.prefix
			return true
		})
		if found != c.want {
			t.Errorf("TopicPrefixes(%q) gave %q: %v, want %v", c.topic, c.prefix, found, c.want)
		}
	}
	var got []string
	TopicPrefixes([]byte("a.b.c"), func(p []byte) bool { got = append(got, string(p)); return true })
	if want := []string{"", "a", "a.b", "a.b.c"}; !reflect.DeepEqual(got, want) {
		t.Errorf("TopicPrefixes(a.b.c) = %q, want %q", got, want)
	}
}

func TestEventCommands(t *testing.T) {
	v := []byte(Version)
	ok := [][][]byte{
		{v, {byte(CmdSubscribe)}},
		{v, {byte(CmdSubscribe)}, []byte("a"), []byte("")},
		{v, {byte(CmdUnsubscribe)}, []byte("a")},
		{v, {byte(CmdEvent)}, []byte{0x80}},
		{v, {byte(CmdCredit)}, AppendCredit(nil, 70000)},
	}
	for _, f := range ok {
		if _, err := Parse(f); err != nil {
			t.Errorf("Parse(%q): %v", f, err)
		}
	}
	bad := map[string]struct {
		f   [][]byte
		err error
	}{
		"unsubscribe none": {[][]byte{v, {byte(CmdUnsubscribe)}}, ErrBody},
		"event none":       {[][]byte{v, {byte(CmdEvent)}}, ErrBody},
		"credit none":      {[][]byte{v, {byte(CmdCredit)}}, ErrBody},
		"credit two":       {[][]byte{v, {byte(CmdCredit)}, {1}, {1}}, ErrBody},
		"subscribe many":   {append([][]byte{v, {byte(CmdSubscribe)}}, make([][]byte, MaxBatch+1)...), ErrTooLarge},
		"event many":       {append([][]byte{v, {byte(CmdEvent)}}, make([][]byte, MaxBatch+1)...), ErrTooLarge},
	}
	for name, c := range bad {
		if _, err := Parse(c.f); !errors.Is(err, c.err) {
			t.Errorf("%s: err = %v, want %v", name, err, c.err)
		}
	}
	if n, err := ParseCredit(AppendCredit(nil, 1<<40)); err != nil || n != 1<<40 {
		t.Errorf("credit round trip: %d %v", n, err)
	}
	for _, b := range [][]byte{nil, {0xff}, {0x01, 0x02}, {0xa1, 'x'}} {
		if _, err := ParseCredit(b); err == nil {
			t.Errorf("ParseCredit(%x) accepted", b)
		}
	}
	if got := Frames(CmdEvent, []byte{0x80}); got[1][0] != byte(CmdEvent) {
		t.Errorf("Frames(CmdEvent) command frame %x", got[1])
	}
	for c, s := range map[Command]string{CmdSubscribe: "SUBSCRIBE", CmdUnsubscribe: "UNSUBSCRIBE", CmdEvent: "EVENT", CmdCredit: "CREDIT", 0x7f: "Command(0x7f)"} {
		if c.String() != s {
			t.Errorf("%d.String() = %q", c, c.String())
		}
	}
}
