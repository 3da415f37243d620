package connerr

import (
	"errors"
	"io"
	"net/http/httptrace"
	"testing"
	"time"
)

func TestUse(t *testing.T) {
	var u Use
	if got, _, _ := u.Last(); got {
		t.Fatal("a fresh Use reports a connection")
	}
	// A new connection, then (a replay) another: the first was not pooled,
	// so not stale.
	if _, stale := u.Got(httptrace.GotConnInfo{}); stale {
		t.Error("the first connection reported stale")
	}
	if _, stale := u.Got(httptrace.GotConnInfo{}); stale {
		t.Error("a new connection before a replay reported stale")
	}
	// A pooled connection idle 3 s, then another: that one was stale.
	if _, stale := u.Got(httptrace.GotConnInfo{Reused: true, WasIdle: true, IdleTime: 3 * time.Second}); stale {
		t.Error("stale reported before the replay")
	}
	if got, reused, idle := u.Last(); !got || !reused || idle != 3*time.Second {
		t.Errorf("Last() = %v, %v, %s; want a pooled connection idle 3s", got, reused, idle)
	}
	idle, stale := u.Got(httptrace.GotConnInfo{})
	if !stale || idle != 3*time.Second {
		t.Errorf("replay after a pooled connection: stale %v idle %s, want true 3s", stale, idle)
	}
	if _, reused, _ := u.Last(); reused {
		t.Error("Last() reports the replaced pooled connection")
	}
}

func TestOnKeptAlive(t *testing.T) {
	err := OnKeptAlive(io.EOF, 4983*time.Millisecond)
	if !errors.Is(err, io.EOF) || Kind(err) != "eof" {
		t.Errorf("%v: the EOF is not seen through", err)
	}
	if got, want := err.Error(), "EOF (on a kept-alive connection idle 4.98s)"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if got, want := OnKeptAlive(io.EOF, 0).Error(), "EOF (on a kept-alive connection)"; got != want {
		t.Errorf("busy connection: Error() = %q, want %q", got, want)
	}
}
