package example

// The persistence example: a worker that answers a write at once and a
// queue consumer that does the write.
//
//	POST /notes {"text": "…"}  → notes worker: enqueue notes.write → 202 {"task_id": "…"}
//	GET /notes/{id}            → notes worker: the task's state → 200 {"state": "done", …}
//	shoal consumer notes       → runs notes.write: one row per task in a bbolt file
//
// The row's key is the task id, so a task that runs twice (at least once:
// its consumer died after writing, before acknowledging) writes the same
// row twice: the effect is exactly once. An Idempotency-Key header, when
// the frontend forwards it, makes a client's retried POST return the first
// task instead of a second one.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/shoal-dev/shoal/queue"
	"github.com/shoal-dev/shoal/wire"
	"github.com/shoal-dev/shoal/workers"
	bolt "go.etcd.io/bbolt"
)

// NoteTask is the task type of a note to write.
const NoteTask = "notes.write"

// NotesBucket is the bbolt bucket that holds the notes, by task id.
const NotesBucket = "notes"

// maxNote is the longest note text accepted.
const maxNote = 64 << 10

// Note is the payload of a notes.write task.
type Note struct {
	Text       string `msgpack:"text"`
	ReceivedAt int64  `msgpack:"at"` // unix ms when the worker accepted it
}

// StoredNote is a row of the notes store (JSON).
type StoredNote struct {
	ID         string    `json:"id"`
	Text       string    `json:"text"`
	RequestID  string    `json:"request_id"` // of the POST that made it
	ReceivedAt time.Time `json:"received_at"`
	WrittenAt  time.Time `json:"written_at"`
}

// NotesQueue returns the queue client the notes worker enqueues with. The
// CLI sets it from the config file; it is called once, at the first
// request.
var NotesQueue func() (*queue.Client, error)

// Notes registers the notes service: POST enqueues, GET reads the task.
func Notes(mux *workers.ServeMux) {
	var once sync.Once
	var client *queue.Client
	var clientErr error
	get := func() (*queue.Client, error) {
		once.Do(func() {
			if NotesQueue == nil {
				clientErr = errors.New("notes: no queue configured (example.NotesQueue is nil)")
				return
			}
			client, clientErr = NotesQueue()
		})
		return client, clientErr
	}
	mux.HandleFunc("notes", func(ctx context.Context, req *workers.Request) (workers.Response, error) {
		q, err := get()
		if err != nil {
			return workers.Response{}, workers.Errorf(503, "%v", err)
		}
		switch req.Verb {
		case "POST":
			return postNote(ctx, q, req)
		case "GET":
			return getNote(ctx, q, wire.Get(req.Params, "id"))
		}
		return workers.Response{}, workers.Errorf(405, "notes: %s not allowed", req.Verb)
	})
}

func postNote(ctx context.Context, q *queue.Client, req *workers.Request) (workers.Response, error) {
	var in struct {
		Text string `json:"text"`
	}
	if err := json.Unmarshal(req.Body, &in); err != nil {
		return workers.Response{}, workers.Errorf(400, `notes: want a JSON body {"text": "…"}: %v`, err)
	}
	if in.Text == "" || len(in.Text) > maxNote {
		return workers.Response{}, workers.Errorf(400, "notes: text must be 1 to %d bytes", maxNote)
	}
	task, err := queue.NewTask(NoteTask, Note{Text: in.Text, ReceivedAt: time.Now().UnixMilli()})
	if err != nil {
		return workers.Response{}, err
	}
	opts := []queue.Option{queue.Retention(time.Hour)} // GET /notes/{id} can say "done" for an hour
	if key := wire.Get(req.Headers, "Idempotency-Key"); key != "" {
		opts = append(opts, queue.IdempotencyKey("notes:"+key))
	}
	// ctx carries the request's deadline and trace into the task.
	info, err := q.Enqueue(ctx, task, opts...)
	if err != nil {
		return workers.Response{}, workers.Errorf(503, "notes: cannot queue the write: %v", err)
	}
	b, _ := json.Marshal(map[string]any{"task_id": info.ID, "existing": info.Existing})
	return workers.Response{Status: 202, Headers: jsonHeaders, Body: append(b, '\n')}, nil
}

func getNote(ctx context.Context, q *queue.Client, id string) (workers.Response, error) {
	info, err := queue.NewInspector(q.Redis()).Get(ctx, id)
	if errors.Is(err, queue.ErrNotFound) {
		return workers.Response{}, workers.Errorf(404, "notes: no task %s (or done more than an hour ago)", id)
	}
	if err != nil {
		return workers.Response{}, workers.Errorf(503, "notes: %v", err)
	}
	b, _ := json.Marshal(map[string]any{"task_id": info.ID, "state": info.State, "retried": info.Retried,
		"error": info.LastError, "request_id": info.RequestID})
	return workers.Response{Headers: jsonHeaders, Body: append(b, '\n')}, nil
}

// ConsumerEnv is what an example consumer gets from `shoal consumer`.
type ConsumerEnv struct {
	DataDir string // where it keeps its files; created if missing
}

// Consumers maps `shoal consumer NAME` to the function that registers
// NAME's task handlers; it returns what to close when the consumer stops.
var Consumers = map[string]func(mux *queue.ServeMux, env ConsumerEnv) (closer func() error, err error){
	"notes": NotesConsumer,
}

// NotesDB is the file name of the notes store in the data directory.
const NotesDB = "notes.db"

// NotesConsumer registers the notes.write handler, which writes each note
// into DataDir/notes.db (bbolt: one file, no server, pure Go).
func NotesConsumer(mux *queue.ServeMux, env ConsumerEnv) (func() error, error) {
	if err := os.MkdirAll(env.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("notes: cannot create the data directory: %w", err)
	}
	path := filepath.Join(env.DataDir, NotesDB)
	// The file lock waits at most 10s for a previous consumer to let go.
	db, err := bolt.Open(path, 0o644, &bolt.Options{Timeout: 10 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("notes: cannot open %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists([]byte(NotesBucket))
		return err
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("notes: cannot create the bucket: %w", err)
	}
	mux.Handle(NoteTask, queue.Typed(func(ctx context.Context, t *queue.Task, n Note) error {
		row, _ := json.Marshal(StoredNote{ID: t.ID(), Text: n.Text, RequestID: t.RequestID(),
			ReceivedAt: time.UnixMilli(n.ReceivedAt), WrittenAt: time.Now()})
		// Keyed by the task id: a second run overwrites the same row.
		// Batch folds concurrent writes into one transaction (one fsync).
		return db.Batch(func(tx *bolt.Tx) error {
			return tx.Bucket([]byte(NotesBucket)).Put([]byte(t.ID()), row)
		})
	}))
	return db.Close, nil
}

// CountNotes opens a notes store read-only and counts its rows (for
// tests and `shoal consumer notes -count`); the consumer must be stopped.
func CountNotes(path string) (int, error) {
	db, err := bolt.Open(path, 0o444, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return 0, err
	}
	defer db.Close()
	n := 0
	err = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(NotesBucket))
		if b == nil {
			return nil
		}
		n = b.Stats().KeyN
		return nil
	})
	return n, err
}

// ReadNotes returns every row of a notes store (the consumer must be
// stopped).
func ReadNotes(path string) ([]StoredNote, error) {
	db, err := bolt.Open(path, 0o444, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return nil, err
	}
	defer db.Close()
	var out []StoredNote
	err = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(NotesBucket))
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var n StoredNote
			if err := json.Unmarshal(v, &n); err != nil {
				return fmt.Errorf("row %s: %w", k, err)
			}
			out = append(out, n)
			return nil
		})
	})
	return out, err
}
