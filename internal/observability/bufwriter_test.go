package observability

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"
)

type lockedBuf struct {
	mu     sync.Mutex
	b      bytes.Buffer
	writes int
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.writes++
	return l.b.Write(p)
}

func (l *lockedBuf) snapshot() (string, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String(), l.writes
}

func TestBufferedWriterBatchesAndFlushes(t *testing.T) {
	sink := &lockedBuf{}
	w := NewBufferedWriter(sink, 64<<10, 50*time.Millisecond)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 250 {
				_, _ = w.Write([]byte(strings.Repeat(string(rune('a'+g)), 10) + "\n"))
			}
		}()
	}
	wg.Wait()
	// The ticker flushes without any explicit call.
	deadline := time.Now().Add(2 * time.Second)
	for {
		s, _ := sink.snapshot()
		if strings.Count(s, "\n") == 1000 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lines not flushed by the interval: %d of 1000", strings.Count(s, "\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
	s, writes := sink.snapshot()
	if writes >= 1000 {
		t.Errorf("%d writes for 1000 lines: not batched", writes)
	}
	for _, line := range strings.Split(strings.TrimSuffix(s, "\n"), "\n") {
		if len(line) != 10 || strings.Count(line, line[:1]) != 10 {
			t.Fatalf("interleaved line %q", line)
		}
	}
	_, _ = w.Write([]byte("last\n"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if s, _ := sink.snapshot(); !strings.HasSuffix(s, "last\n") {
		t.Fatal("Close did not flush")
	}
}
