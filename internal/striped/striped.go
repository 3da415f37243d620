// Package striped has counters for values that every request changes from
// every core: a single atomic would move its cache line between the cores
// on each change. Each change goes to one of several lines instead (a
// random one, or one the caller keeps, such as a connection's), and reading
// sums them, so reads cost more and writes scale.
package striped

import (
	"math/rand/v2"
	"sync/atomic"
)

// Stripes is the number of cache lines a value is spread over: enough that
// two cores rarely pick the same one.
const Stripes = 16

// Int64 is a striped int64. The zero value is ready to use.
type Int64 struct {
	s [Stripes]struct {
		v atomic.Int64
		_ [56]byte // one cache line per stripe
	}
}

// Add adds d to a random stripe and returns the stripe, so a later change
// that must pair with this one (a gauge's decrement) can use AddAt on the
// same stripe: a reader then never sees the decrement without the increment.
func (c *Int64) Add(d int64) uint32 {
	i := rand.Uint32() % Stripes
	c.s[i].v.Add(d)
	return i
}

// AddAt adds d to stripe i (from Add).
func (c *Int64) AddAt(i uint32, d int64) { c.s[i%Stripes].v.Add(d) }

// Load returns the sum of the stripes.
func (c *Int64) Load() int64 {
	var n int64
	for i := range c.s {
		n += c.s[i].v.Load()
	}
	return n
}
