package observability

import (
	"bytes"
	"fmt"
	"io"
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

// Buffers swapped out while others fill, records larger than the buffer,
// and flushes racing the writers: nothing is lost, no line is torn, and each
// writer's lines reach the sink in the order it wrote them.
func TestBufferedWriterKeepsOrderAcrossSwaps(t *testing.T) {
	sink := &lockedBuf{}
	w := NewBufferedWriter(sink, 100, time.Millisecond)
	const writers, lines = 4, 500
	var wg sync.WaitGroup
	stop := make(chan struct{})
	go func() { // explicit flushes too, as warn lines do
		for {
			select {
			case <-stop:
				return
			default:
				_ = w.Flush()
			}
		}
	}()
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range lines {
				pad := strings.Repeat("x", (i*7)%150) // some longer than the buffer
				if _, err := w.Write([]byte(fmt.Sprintf("%d %d %s\n", g, i, pad))); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	s, _ := sink.snapshot()
	next := make([]int, writers)
	for _, line := range strings.Split(strings.TrimSuffix(s, "\n"), "\n") {
		var g, i int
		var pad string
		n, _ := fmt.Sscanf(line, "%d %d %s", &g, &i, &pad)
		if n < 2 || g < 0 || g >= writers {
			t.Fatalf("torn line %q", line)
		}
		if i != next[g] {
			t.Fatalf("writer %d: line %d after line %d", g, i, next[g]-1)
		}
		if want := strings.Repeat("x", (i*7)%150); pad != want {
			t.Fatalf("writer %d line %d: torn padding", g, i)
		}
		next[g]++
	}
	for g, n := range next {
		if n != lines {
			t.Errorf("writer %d: %d of %d lines", g, n, lines)
		}
	}
}

func BenchmarkBufferedWriterParallel(b *testing.B) {
	w := NewBufferedWriter(io.Discard, 64<<10, 100*time.Millisecond)
	defer w.Close()
	line := []byte(strings.Repeat("a", 259) + "\n")
	b.SetBytes(int64(len(line)))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_, _ = w.Write(line)
		}
	})
}

// gateSink takes bytes only once open is closed: a stdout nobody reads.
type gateSink struct {
	lockedBuf
	open chan struct{}
}

func (g *gateSink) Write(p []byte) (int, error) {
	<-g.open
	return g.lockedBuf.Write(p)
}

// A stalled stdout does not block the writers: once a write has been stuck
// for stallAfter, whole lines are dropped and counted. When stdout takes
// bytes again, what was queued and what comes after arrive, whole and in
// order, and every line is either written or counted as dropped.
func TestBufferedWriterSurvivesStalledSink(t *testing.T) {
	sink := &gateSink{open: make(chan struct{})}
	w := NewBufferedWriter(sink, 1024, time.Hour) // no ticks: only full buffers move
	w.stallAfter = 50 * time.Millisecond
	const writers, lines = 4, 2000
	done := make(chan struct{})
	go func() {
		writeLines(w, writers, lines, func(g, i int) string { return fmt.Sprintf("%d %d %s\n", g, i, strings.Repeat("x", 40)) })
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		close(sink.open)
		t.Fatal("writers blocked on a stalled stdout")
	}
	if w.Dropped() == 0 {
		t.Fatal("nothing counted as dropped while stdout took no bytes")
	}
	flushed := make(chan struct{})
	go func() { _ = w.Flush(); close(flushed) }()
	select {
	case <-flushed:
	case <-time.After(10 * time.Second):
		close(sink.open)
		t.Fatal("Flush blocked on a stalled stdout")
	}

	close(sink.open)
	fmt.Fprintf(w, "after\n")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	s, _ := sink.snapshot()
	all := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	if all[len(all)-1] != "after" {
		t.Fatalf("last line %q, want the one written after stdout recovered", all[len(all)-1])
	}
	next := make([]int, writers)
	written := 0
	for _, line := range all[:len(all)-1] {
		var g, i int
		var pad string
		if n, _ := fmt.Sscanf(line, "%d %d %s", &g, &i, &pad); n != 3 || g < 0 || g >= writers || pad != strings.Repeat("x", 40) {
			t.Fatalf("torn line %q", line)
		}
		if i < next[g] {
			t.Fatalf("writer %d: line %d after line %d", g, i, next[g]-1)
		}
		next[g] = i + 1
		written++
	}
	if int64(written)+w.Dropped() != writers*lines {
		t.Errorf("%d lines written + %d dropped != %d", written, w.Dropped(), writers*lines)
	}
	t.Logf("stalled stdout: %d lines written, %d dropped", written, w.Dropped())
}

// slowSink takes its time with every write, but never stalls.
type slowSink struct {
	lockedBuf
	delay time.Duration
}

func (s *slowSink) Write(p []byte) (int, error) {
	time.Sleep(s.delay)
	return s.lockedBuf.Write(p)
}

// A slow stdout holds the writers back; it never costs a line.
func TestBufferedWriterSlowSinkLosesNothing(t *testing.T) {
	sink := &slowSink{delay: 5 * time.Millisecond}
	w := NewBufferedWriter(sink, 256, time.Hour)
	w.stallAfter = 200 * time.Millisecond // each write takes 5 ms: far from stalled
	const writers, lines = 4, 300
	writeLines(w, writers, lines, func(g, i int) string { return fmt.Sprintf("%d %d\n", g, i) })
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	s, writes := sink.snapshot()
	if n := strings.Count(s, "\n"); n != writers*lines || w.Dropped() != 0 {
		t.Fatalf("%d of %d lines written, %d dropped", n, writers*lines, w.Dropped())
	}
	if writes < 10 {
		t.Fatalf("only %d writes: the queue never filled, the test proves nothing", writes)
	}
}

// writeLines has writers goroutines write lines lines each, line(g, i) per
// Write, and returns when all are written.
func writeLines(w io.Writer, writers, lines int, line func(g, i int) string) {
	var wg sync.WaitGroup
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range lines {
				_, _ = io.WriteString(w, line(g, i))
			}
		}()
	}
	wg.Wait()
}

// A stdout still stuck when the process exits: Close gives up after
// closeWait, and every line it leaves behind is counted as dropped. Once
// stdout takes bytes again, the one buffer that was being written arrives,
// and written plus dropped is every line.
func TestBufferedWriterCloseCountsWhatItLeaves(t *testing.T) {
	sink := &gateSink{open: make(chan struct{})}
	w := NewBufferedWriter(sink, 1024, time.Hour)
	w.stallAfter = time.Hour // queue up to the limit, drop nothing while writing
	w.closeWait = 100 * time.Millisecond
	const lines = 200 // 41 bytes each: about 8 buffers, all queued behind the stuck one
	for i := range lines {
		fmt.Fprintf(w, "%04d %s\n", i, strings.Repeat("x", 35))
	}
	closed := make(chan struct{})
	go func() { _ = w.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		close(sink.open)
		t.Fatal("Close waited past closeWait on a stuck stdout")
	}
	if w.Dropped() == 0 {
		t.Fatal("Close left queued lines behind without counting them")
	}
	close(sink.open)
	written := func() int {
		s, _ := sink.snapshot()
		return strings.Count(s, "\n")
	}
	deadline := time.Now().Add(3 * time.Second)
	for written()+int(w.Dropped()) != lines && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := written() + int(w.Dropped()); n != lines {
		t.Fatalf("%d written + %d dropped = %d, want %d", written(), w.Dropped(), n, lines)
	}
	t.Logf("stdout stuck at exit: %d lines written after it recovered, %d counted as dropped", written(), w.Dropped())
}

// A line written while Close is still writing out the queue (a handler
// past the drain, the span exporter's error) comes after the queued lines,
// not ahead of them.
func TestBufferedWriterWriteDuringCloseKeepsOrder(t *testing.T) {
	sink := &slowSink{delay: 30 * time.Millisecond}
	b := NewBufferedWriter(sink, 64, time.Hour)
	for i := range 10 {
		fmt.Fprintf(b, "early line number %d xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n", i)
	}
	closed := make(chan struct{})
	go func() {
		b.Close()
		close(closed)
	}()
	for !b.closed.Load() {
		time.Sleep(time.Millisecond)
	}
	io.WriteString(b, "late line\n")
	<-closed
	sink.mu.Lock()
	got := sink.b.String()
	sink.mu.Unlock()
	lines := strings.Split(strings.TrimSuffix(got, "\n"), "\n")
	if len(lines) != 11 || lines[10] != "late line" {
		t.Fatalf("lines out of order:\n%s", got)
	}
}
