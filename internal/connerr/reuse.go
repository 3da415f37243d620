package connerr

import (
	"fmt"
	"net/http/httptrace"
	"sync"
	"time"
)

// Use follows the connections one request gets, from httptrace's GotConn.
// net/http gets a second one for the same request only to replay it (an
// idempotent request, or one nothing of which was written) after the
// pooled connection it tried had been closed by the peer: the client's
// side of the keep-alive race, which the caller never sees otherwise.
// The zero Use is ready; it is safe for concurrent use.
type Use struct {
	mu     sync.Mutex
	n      int
	reused bool
	idle   time.Duration
}

// Got records the request's next connection. When a pooled connection came
// before it, that one was stale: Got returns how long it had been idle.
func (u *Use) Got(info httptrace.GotConnInfo) (staleIdle time.Duration, stale bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	staleIdle, stale = u.idle, u.n > 0 && u.reused
	u.n++
	u.reused, u.idle = info.Reused, info.IdleTime
	return staleIdle, stale
}

// Last describes the connection the request ended on: whether it got one
// at all, whether it came from the pool, and then how long it had been
// idle (0 for a busy HTTP/2 connection).
func (u *Use) Last() (got, reused bool, idle time.Duration) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.n > 0, u.reused, u.idle
}

// OnKeptAlive notes in err that it happened on a pooled connection idle
// for idle: "EOF (on a kept-alive connection idle 4.98s)". An EOF or reset
// there is mostly the peer having closed the connection while it sat in
// the pool, and the idle time points at the peer's keep-alive timeout.
// errors.Is and errors.As see err through it.
func OnKeptAlive(err error, idle time.Duration) error {
	return &keptAliveError{err: err, idle: idle}
}

type keptAliveError struct {
	err  error
	idle time.Duration
}

func (e *keptAliveError) Error() string {
	if e.idle <= 0 {
		return e.err.Error() + " (on a kept-alive connection)"
	}
	return fmt.Sprintf("%s (on a kept-alive connection idle %s)", e.err, e.idle.Round(10*time.Millisecond))
}

func (e *keptAliveError) Unwrap() error { return e.err }
