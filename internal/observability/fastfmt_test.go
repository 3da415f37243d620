package observability

import (
	"encoding/json"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"
)

func TestAppendRFC3339NanoMatchesTime(t *testing.T) {
	locs := []*time.Location{time.UTC, time.Local, time.FixedZone("east", 5*3600+30*60), time.FixedZone("west", -7*3600)}
	if ny, err := time.LoadLocation("America/New_York"); err == nil {
		locs = append(locs, ny) // DST: the offset changes at a second boundary
	}
	base := time.Date(2026, 3, 8, 6, 59, 58, 0, time.UTC) // around a New York DST switch
	nanos := []int{0, 1, 10, 100_000_000, 120_000_000, 123_456_789, 999_999_999, 500}
	for _, loc := range locs {
		for s := range 5 {
			for _, ns := range nanos {
				tm := base.Add(time.Duration(s)*time.Second + time.Duration(ns)).In(loc)
				got := string(appendRFC3339Nano([]byte("x"), tm))
				want := "x" + tm.Format(time.RFC3339Nano)
				if got != want {
					t.Fatalf("%s: got %s, want %s", loc, got, want)
				}
			}
		}
	}
	for range 10000 {
		tm := time.Unix(rand.Int64N(4e9), rand.Int64N(1e9)).In(locs[rand.IntN(len(locs))])
		if got, want := string(appendRFC3339Nano(nil, tm)), tm.Format(time.RFC3339Nano); got != want {
			t.Fatalf("got %s, want %s", got, want)
		}
	}
	far := time.Date(12000, 1, 1, 0, 0, 0, 5, time.UTC)
	if got, want := string(appendRFC3339Nano(nil, far)), far.Format(time.RFC3339Nano); got != want {
		t.Fatalf("year 12000: got %s, want %s", got, want)
	}
}

func TestAppendMillisMatchesJSON(t *testing.T) {
	check := func(us int64) {
		t.Helper()
		got := string(appendMillis([]byte("x"), us))
		j, err := json.Marshal(float64(us) / 1000)
		if err != nil {
			t.Fatal(err)
		}
		want := "x" + string(j)
		if got != want {
			t.Fatalf("%d µs: got %s, want %s", us, got, want)
		}
	}
	for us := range int64(2_000_000) {
		check(us)
	}
	for range 200_000 {
		check(rand.Int64N(2e9))
		check(rand.Int64N(1e15))
	}
	for _, us := range []int64{-1, -1500, 999_999_999, 1e9, 1e9 + 1, 123_456_789_012, 1e15 - 1, 1e15, 1 << 62} {
		check(us)
	}
}

func BenchmarkAccessLineFormatters(b *testing.B) {
	tm := time.Now()
	buf := make([]byte, 0, 64)
	b.Run("time/stdlib", func(b *testing.B) {
		for b.Loop() {
			buf = tm.AppendFormat(buf[:0], time.RFC3339Nano)
		}
	})
	b.Run("time/cached", func(b *testing.B) {
		for b.Loop() {
			buf = appendRFC3339Nano(buf[:0], tm)
		}
	})
	b.Run("millis/strconv", func(b *testing.B) {
		for b.Loop() {
			buf = strconv.AppendFloat(buf[:0], 12.345, 'f', -1, 64)
		}
	})
	b.Run("millis/int", func(b *testing.B) {
		for b.Loop() {
			buf = appendMillis(buf[:0], 12345)
		}
	})
}
