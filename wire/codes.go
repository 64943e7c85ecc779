package wire

// Code is the machine-readable error of a Reply ("" means success). Codes
// cross process boundaries, so this small table is the whole vocabulary;
// HTTPStatus maps each to the status the frontend answers with.
type Code string

const (
	CodeOK          Code = ""            // the worker answered; Reply.Status is its status
	CodeNoService   Code = "no_service"  // no worker has ever served this service on this broker
	CodeNoWorker    Code = "no_worker"   // the service is known, but no live worker serves it now
	CodeOverloaded  Code = "overloaded"  // the service's queue is full: retry later
	CodeDeadline    Code = "deadline"    // the deadline passed before a reply came
	CodeWorkerDied  Code = "worker_died" // the worker died holding it and no attempt was left
	CodeBadRequest  Code = "bad_request" // the envelope or its content is invalid
	CodeHandler     Code = "handler"     // the handler returned an error (Status says which)
	CodePanic       Code = "panic"       // the handler panicked
	CodeUnavailable Code = "unavailable" // no broker reachable (set by clients, never sent)
	CodeShutdown    Code = "shutdown"    // the worker is draining and did not take it
)

// HTTPStatus is the one place where wire codes meet HTTP. For CodeOK and
// CodeHandler the reply's own Status wins when it is set.
func (c Code) HTTPStatus() int {
	switch c {
	case CodeOK:
		return 200
	case CodeNoService:
		return 503
	case CodeNoWorker, CodeUnavailable, CodeShutdown:
		return 503
	case CodeOverloaded:
		return 503
	case CodeDeadline:
		return 504
	case CodeWorkerDied:
		return 502
	case CodeBadRequest:
		return 400
	case CodePanic:
		return 500
	case CodeHandler:
		return 500
	}
	return 502
}

// Retryable reports whether a client may send the same request again
// (to this or another broker) without risk of it having run. Unavailable is
// not: a link lost with the request on it may have delivered it.
func (c Code) Retryable() bool {
	switch c {
	case CodeNoWorker, CodeOverloaded, CodeShutdown:
		return true
	}
	return false
}
