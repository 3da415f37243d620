// Package testkit holds small helpers shared by the tests of several
// packages; real-process helpers live in its subpackages (redistest).
package testkit

import (
	"bytes"
	"sync"
)

// SyncBuffer is a log sink safe for a server's concurrent goroutines.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
