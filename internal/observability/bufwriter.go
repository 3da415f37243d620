package observability

import (
	"bytes"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// BufferedWriter batches log lines into few write(2) calls: with one access
// line per request, an unbuffered stdout costs a syscall per request (about
// 6% of the service's CPU at full load). Lines are flushed every interval,
// when a buffer fills, and on Close, so at most one interval of lines is
// lost if the process is killed.
//
// Appending a line holds the lock only for the copy. Full buffers go, in
// the order they filled, to one goroutine that writes them, so no request
// waits on write(2) while the log consumer keeps up, and a slow one only
// holds requests back as long as it stays slower than they are.
//
// A stalled consumer is another matter: when stdout takes no bytes for a
// second (a log shipper that hangs, a full disk under the container
// runtime's log file), blocking every request that logs would take the
// service down while its liveness probe, which logs nothing, still passes.
// Instead, while one write has been stuck for longer than that and the
// queue is full, whole lines are dropped and counted (Dropped, exported as
// log_lines_dropped_total); writing resumes, in order, as soon as that
// write returns.
type BufferedWriter struct {
	mu   sync.Mutex // guards buf
	buf  []byte
	size int

	// sendMu is taken before mu is released and held while a swapped-out
	// buffer is queued, so buffers are queued in the order they filled.
	sendMu sync.Mutex
	queue  chan chunk  // to the writer goroutine
	free   chan []byte // written buffers, for reuse

	w          io.Writer
	stallAfter time.Duration
	closeWait  time.Duration // how long Close waits for the last lines
	epoch      time.Time
	writeStart atomic.Int64 // when the write in progress began (ns since epoch, +1); 0: none
	dropped    atomic.Int64
	closed     atomic.Bool

	stop     chan struct{} // ends the ticker
	tickDone chan struct{}
	quit     chan struct{} // ends the writer goroutine
	once     sync.Once
}

// chunk is a buffer for the writer goroutine; done, if set, is closed once
// it (and everything queued before it) has been written.
type chunk struct {
	b    []byte
	done chan struct{}
}

const (
	// queuedBuffers is how many full buffers may wait for the writer.
	queuedBuffers = 16
	// stallAfter is how long a write may take before the consumer counts
	// as stalled and lines are dropped instead of waited for.
	stallAfter = time.Second
)

// NewBufferedWriter wraps w with size-byte buffers flushed every interval.
func NewBufferedWriter(w io.Writer, size int, interval time.Duration) *BufferedWriter {
	b := &BufferedWriter{
		w:          w,
		size:       size,
		buf:        make([]byte, 0, size),
		queue:      make(chan chunk, queuedBuffers),
		free:       make(chan []byte, queuedBuffers+2),
		stallAfter: stallAfter,
		closeWait:  5 * time.Second,
		epoch:      time.Now(),
		stop:       make(chan struct{}),
		tickDone:   make(chan struct{}),
		quit:       make(chan struct{}),
	}
	go b.writer()
	go b.ticker(interval)
	return b
}

func (b *BufferedWriter) writer() {
	for {
		select {
		case c := <-b.queue:
			if len(c.b) > 0 {
				b.writeStart.Store(int64(time.Since(b.epoch)) + 1)
				_, _ = b.w.Write(c.b) // nowhere to report a failed log write
				b.writeStart.Store(0)
			}
			if c.done != nil {
				close(c.done)
			}
			if cap(c.b) == b.size {
				select {
				case b.free <- c.b[:0]:
				default:
				}
			}
		case <-b.quit:
			return
		}
	}
}

func (b *BufferedWriter) ticker(interval time.Duration) {
	defer close(b.tickDone)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			b.mu.Lock()
			if len(b.buf) == 0 {
				b.mu.Unlock()
				continue
			}
			b.queueLocked(nil, nil)
		case <-b.stop:
			return
		}
	}
}

// Write buffers p. slog handlers write one whole record per call, so lines
// are never interleaved. A record larger than the buffer is queued on its
// own, after what was buffered before it. Write does not fail: a line
// dropped while stdout is stalled is counted, not reported to the logger.
func (b *BufferedWriter) Write(p []byte) (int, error) {
	b.mu.Lock()
	if b.closed.Load() {
		b.mu.Unlock()
		// After the lines Close is still writing out (it holds sendMu
		// until they are written or given up on), not ahead of them.
		b.sendMu.Lock()
		defer b.sendMu.Unlock()
		return b.w.Write(p)
	}
	if len(b.buf)+len(p) <= b.size {
		b.buf = append(b.buf, p...)
		b.mu.Unlock()
		return len(p), nil
	}
	if len(p) <= b.size {
		b.queueLocked(p, nil)
	} else {
		b.queueLocked(nil, bytes.Clone(p))
	}
	return len(p), nil
}

// queueLocked queues the current buffer (then extra, if any) for the writer
// and starts a new buffer holding next. Called with b.mu held; releases it.
// What stdout stalled on is dropped and counted.
func (b *BufferedWriter) queueLocked(next, extra []byte) {
	full := b.buf
	b.buf = append(b.newBuf(), next...)
	b.sendMu.Lock()
	b.mu.Unlock()
	defer b.sendMu.Unlock()
	ok := b.send(chunk{b: full})
	if !ok {
		b.dropped.Add(int64(bytes.Count(full, []byte{'\n'})))
	}
	if extra != nil && !(ok && b.send(chunk{b: extra})) {
		b.dropped.Add(int64(max(1, bytes.Count(extra, []byte{'\n'}))))
	}
}

func (b *BufferedWriter) newBuf() []byte {
	select {
	case nb := <-b.free:
		return nb
	default:
		return make([]byte, 0, b.size)
	}
}

// send queues c, waiting for room while the writer makes progress. It gives
// up (false) when the write in progress has been stuck for stallAfter, at
// once while that lasts.
func (b *BufferedWriter) send(c chunk) bool {
	for {
		select {
		case b.queue <- c:
			return true
		default:
		}
		wait := b.stallAfter
		if stuck := b.stuckFor(); stuck >= b.stallAfter {
			return false
		} else if stuck > 0 {
			wait -= stuck
		}
		t := time.NewTimer(wait)
		select {
		case b.queue <- c:
			t.Stop()
			return true
		case <-t.C: // look again: the writer may be stuck by now
		}
	}
}

// stuckFor is how long the write in progress has taken so far (0: none).
func (b *BufferedWriter) stuckFor() time.Duration {
	start := b.writeStart.Load()
	if start == 0 {
		return 0
	}
	return time.Since(b.epoch) - time.Duration(start-1)
}

// Flush writes out what is buffered and waits until it is written, for at
// most stallAfter (not at all while stdout is stalled).
func (b *BufferedWriter) Flush() error {
	b.mu.Lock()
	if b.closed.Load() {
		b.mu.Unlock()
		return nil
	}
	var data []byte
	if len(b.buf) > 0 {
		data = b.buf
		b.buf = b.newBuf()
	}
	done := make(chan struct{})
	b.sendMu.Lock()
	b.mu.Unlock()
	ok := b.send(chunk{b: data, done: done})
	b.sendMu.Unlock()
	if !ok {
		b.dropped.Add(int64(bytes.Count(data, []byte{'\n'})))
		return nil
	}
	if b.stuckFor() >= b.stallAfter {
		return nil // stdout is stalled: the lines are queued, waiting would only block the caller
	}
	t := time.NewTimer(b.stallAfter)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
	return nil
}

// Dropped is the number of lines dropped because stdout was stalled.
func (b *BufferedWriter) Dropped() int64 { return b.dropped.Load() }

// dropQueued empties the queue, counting its lines as dropped.
func (b *BufferedWriter) dropQueued() {
	for {
		select {
		case c := <-b.queue:
			b.dropped.Add(int64(bytes.Count(c.b, []byte{'\n'})))
		default:
			return
		}
	}
}

// Close stops the flusher and writes out what is buffered, waiting up to
// 5 s for a slow consumer. Writes after Close go straight to w, after the
// lines Close writes out.
func (b *BufferedWriter) Close() error {
	b.once.Do(func() {
		close(b.stop)
		<-b.tickDone
		b.mu.Lock()
		b.closed.Store(true) // under mu: a later Write goes straight to w
		data := b.buf
		b.buf = nil
		b.sendMu.Lock()
		b.mu.Unlock()
		// The last lines wait up to closeWait (5 s) for a slow or
		// just-recovered stdout: the process is exiting, nothing else waits
		// on them. Past that, what is still queued is counted as dropped:
		// the writer may leave it behind once quit is closed. (The buffer
		// it is writing, if stdout is stuck, is neither: it may yet go.)
		done := make(chan struct{})
		t := time.NewTimer(b.closeWait)
		select {
		case b.queue <- chunk{b: data, done: done}:
			select {
			case <-done:
			case <-t.C:
				b.dropQueued()
			}
		case <-t.C:
			b.dropped.Add(int64(bytes.Count(data, []byte{'\n'})))
			b.dropQueued()
		}
		t.Stop()
		b.sendMu.Unlock()
		close(b.quit)
	})
	return nil
}
