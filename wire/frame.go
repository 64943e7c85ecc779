package wire

import "errors"

// Version is frame 0 of every Shoal message: protocol name and major version.
// A peer that sends anything else is not speaking this protocol.
const Version = "SHL1"

// Command is frame 1 of every message, a single byte.
type Command byte

// The commands. Who sends which is in docs/protocol.md.
const (
	CmdReady      Command = 0x01 // worker → broker: services served, credit, heartbeat interval
	CmdRequest    Command = 0x02 // client → broker → worker: one or more Request envelopes
	CmdReply      Command = 0x03 // worker → broker → client: one or more Reply envelopes
	CmdHeartbeat  Command = 0x04 // peer → broker, answered by broker → peer
	CmdDisconnect Command = 0x05 // either way: stop sending me work / you are unknown, READY again
)

// MaxBatch is the most envelopes one REQUEST or REPLY message may carry.
const MaxBatch = 1024

func (c Command) String() string {
	switch c {
	case CmdReady:
		return "READY"
	case CmdRequest:
		return "REQUEST"
	case CmdReply:
		return "REPLY"
	case CmdHeartbeat:
		return "HEARTBEAT"
	case CmdDisconnect:
		return "DISCONNECT"
	}
	return eventCmdString(c)
}

// Errors returned by Parse. Each names what was wrong with the message; a
// broker counts them by kind and drops the message.
var (
	ErrShort    = errors.New("wire: message has fewer than 2 frames")
	ErrVersion  = errors.New("wire: frame 0 is not protocol version " + Version)
	ErrCommand  = errors.New("wire: frame 1 is not a known command")
	ErrBody     = errors.New("wire: wrong number of body frames for command")
	ErrTooLarge = errors.New("wire: too many envelopes in one message")
)

// Message is a parsed message: its command and the body frames after it.
// Body aliases the frames given to Parse.
type Message struct {
	Cmd  Command
	Body [][]byte
}

// Parse checks the version and command frames and the number of body frames
// the command allows. It does not decode envelopes.
func Parse(frames [][]byte) (Message, error) {
	if len(frames) < 2 {
		return Message{}, ErrShort
	}
	if string(frames[0]) != Version {
		return Message{}, ErrVersion
	}
	if len(frames[1]) != 1 {
		return Message{}, ErrCommand
	}
	m := Message{Cmd: Command(frames[1][0]), Body: frames[2:]}
	n := len(m.Body)
	switch m.Cmd {
	case CmdReady:
		if n != 1 {
			return Message{}, ErrBody
		}
	case CmdRequest, CmdReply:
		if n == 0 {
			return Message{}, ErrBody
		}
		if n > MaxBatch {
			return Message{}, ErrTooLarge
		}
	case CmdHeartbeat:
		if n != 0 {
			return Message{}, ErrBody
		}
	case CmdDisconnect:
		if n > 1 {
			return Message{}, ErrBody
		}
	default:
		if err := checkEventBody(m.Cmd, n); err != nil {
			return Message{}, err
		}
	}
	return m, nil
}

// Shared read-only frames; senders never modify frames after Send.
var (
	versionFrame = []byte(Version)
	cmdFrames    = [...][]byte{
		CmdReady:      {byte(CmdReady)},
		CmdRequest:    {byte(CmdRequest)},
		CmdReply:      {byte(CmdReply)},
		CmdHeartbeat:  {byte(CmdHeartbeat)},
		CmdDisconnect: {byte(CmdDisconnect)},

		CmdSubscribe:   {byte(CmdSubscribe)},
		CmdUnsubscribe: {byte(CmdUnsubscribe)},
		CmdEvent:       {byte(CmdEvent)},
		CmdCredit:      {byte(CmdCredit)},
	}
)

// AppendFrames appends a whole message (version, command, body frames) to
// dst and returns it. A ROUTER sender appends the identity frame first:
//
//	frames = wire.AppendFrames(append(frames[:0], id), wire.CmdReply, envs...)
func AppendFrames(dst [][]byte, cmd Command, body ...[]byte) [][]byte {
	dst = append(dst, versionFrame, cmdFrames[cmd])
	return append(dst, body...)
}

// Frames returns a new message; see AppendFrames.
func Frames(cmd Command, body ...[]byte) [][]byte {
	return AppendFrames(make([][]byte, 0, 2+len(body)), cmd, body...)
}
