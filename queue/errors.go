package queue

import (
	"errors"
	"fmt"
)

// SkipRetry, wrapped in a handler's error, sends the task straight to the
// dead-letter set with that error, whatever its retries left:
//
//	return fmt.Errorf("no such account %d: %w", id, queue.SkipRetry)
var SkipRetry = errors.New("queue: skip retry")

// ErrDuplicateTask is returned (as a *DuplicateError) by Enqueue when a
// task with the same uniqueness key is already queued and its TTL has not
// passed. Nothing is enqueued.
var ErrDuplicateTask = errors.New("queue: duplicate task")

// ErrUnknownType is the dead-letter reason of a task whose type no
// handler is registered for.
var ErrUnknownType = errors.New("queue: no handler for task type")

// ErrBadPayload wraps a payload that does not decode into what the
// handler expects (see Typed). Such a task goes to the dead-letter set at
// once: running it again would fail the same way.
var ErrBadPayload = errors.New("queue: payload does not decode")

// ErrLeaseLost is the cause of a handler context cancelled because this
// consumer no longer holds the task's lease: it could not extend it in
// time, so the task may be running elsewhere.
var ErrLeaseLost = errors.New("queue: lease lost")

// ErrNotFound is returned by the Inspector for a task id it does not know
// (never enqueued, deleted, or done and past its retention).
var ErrNotFound = errors.New("queue: no such task")

// ErrTaskActive is returned when deleting a task that a consumer holds.
var ErrTaskActive = errors.New("queue: task is running; wait for it or let its lease expire")

// ErrInvalid is wrapped by errors about bad arguments: an empty task type,
// a bad queue name, a negative retry count.
var ErrInvalid = errors.New("queue: invalid")

// DuplicateError says which task holds a uniqueness key.
type DuplicateError struct {
	Key string // the uniqueness key given to Unique
	ID  string // the task that holds it
}

func (e *DuplicateError) Error() string {
	return fmt.Sprintf("queue: duplicate task: unique key %q is held by task %s", e.Key, e.ID)
}

// Is makes errors.Is(err, ErrDuplicateTask) true.
func (e *DuplicateError) Is(target error) bool { return target == ErrDuplicateTask }

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}
