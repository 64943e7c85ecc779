package queue

import (
	"math/rand/v2"
	"time"
)

// idAlphabet is Crockford's base32 in lower case: no i, l, o, u.
const idAlphabet = "0123456789abcdefghjkmnpqrstvwxyz"

// idLen is the length of a task id: 10 characters of milliseconds since
// 1970 (sortable by creation time) and 16 of randomness (80 bits).
const idLen = 26

// newID returns a new task id, such as "01jd8x3k5qg7w2c9v4m6r8t0ya".
func newID() string {
	var b [idLen]byte
	ms := uint64(time.Now().UnixMilli())
	for i := 9; i >= 0; i-- {
		b[i] = idAlphabet[ms&31]
		ms >>= 5
	}
	r := rand.Uint64()
	for i := 10; i < 22; i++ {
		b[i] = idAlphabet[r&31]
		r >>= 5
	}
	r = rand.Uint64()
	for i := 22; i < idLen; i++ {
		b[i] = idAlphabet[r&31]
		r >>= 5
	}
	return string(b[:])
}

// ValidID reports whether s looks like a task id. The Inspector refuses
// others before asking Redis.
func ValidID(s string) bool {
	if len(s) != idLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' && c != 'i' && c != 'l' && c != 'o' && c != 'u') {
			return false
		}
	}
	return true
}
