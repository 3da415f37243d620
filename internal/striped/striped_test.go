package striped

import (
	"sync"
	"sync/atomic"
	"testing"
)

func TestInt64Sums(t *testing.T) {
	var c Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10000 {
				c.Add(1)
			}
		}()
	}
	wg.Wait()
	if got := c.Load(); got != 80000 {
		t.Fatalf("Load = %d, want 80000", got)
	}
}

// A gauge changed in pairs (Add then AddAt on the same stripe) is never
// seen below zero, whatever the reader interleaves with.
func TestInt64PairsNeverNegative(t *testing.T) {
	var c Int64
	var stop atomic.Bool
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				i := c.Add(1)
				c.AddAt(i, -1)
			}
		}()
	}
	for range 100000 {
		if v := c.Load(); v < 0 {
			stop.Store(true)
			wg.Wait()
			t.Fatalf("Load = %d", v)
		}
	}
	stop.Store(true)
	wg.Wait()
	if v := c.Load(); v != 0 {
		t.Fatalf("Load = %d after balanced changes", v)
	}
}

func BenchmarkAddParallel(b *testing.B) {
	b.Run("atomic", func(b *testing.B) {
		var v atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				v.Add(1)
			}
		})
	})
	b.Run("striped", func(b *testing.B) {
		var c Int64
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				c.Add(1)
			}
		})
	})
}
