package observability

import (
	"context"
	"log/slog"
	"math"
	"sync/atomic"

	"golang.org/x/time/rate"
)

// limitedLog writes at most a burst of lines and then one per interval, so a
// flood (a handshake storm, a port scan, an unreachable collector) costs a
// counter increment per event instead of a log line. The next line written
// says how many were suppressed since the previous one.
type limitedLog struct {
	logger     *slog.Logger
	lim        *rate.Limiter
	suppressed atomic.Int64
	// top is the highest level among the suppressed lines (noLevel when
	// none): the exit line that gives their count is written at it, so
	// a LOG_LEVEL that let them through lets it through.
	top atomic.Int64
}

const noLevel = math.MinInt64

func newLimitedLog(logger *slog.Logger, every rate.Limit, burst int) *limitedLog {
	l := &limitedLog{logger: logger, lim: rate.NewLimiter(every, burst)}
	l.top.Store(noLevel)
	return l
}

// Log writes the line unless the rate is exhausted.
func (l *limitedLog) Log(ctx context.Context, level slog.Level, msg string, attrs ...slog.Attr) {
	if !l.logger.Enabled(ctx, level) {
		return
	}
	if !l.lim.Allow() {
		l.suppressed.Add(1)
		for top := l.top.Load(); int64(level) > top && !l.top.CompareAndSwap(top, int64(level)); top = l.top.Load() {
		}
		return
	}
	if n := l.suppressed.Swap(0); n > 0 {
		l.top.Store(noLevel)
		attrs = append(attrs, slog.Int64("suppressed", n))
	}
	l.logger.LogAttrs(ctx, level, msg, attrs...)
}

// Flush writes one line with msg and the number of lines suppressed since
// the last one written, if any were, at the highest level among them: at
// exit, the line that would have carried the count never comes.
// attrs tell apart the lines of several limits with one msg.
func (l *limitedLog) Flush(ctx context.Context, msg string, attrs ...slog.Attr) {
	if n := l.suppressed.Swap(0); n > 0 {
		level := slog.Level(l.top.Swap(noLevel))
		if int64(level) == noLevel {
			level = slog.LevelInfo
		}
		l.logger.LogAttrs(ctx, level, msg, append(attrs, slog.Int64("suppressed", n),
			slog.String("detail", "lines over the rate limit, not written"))...)
	}
}

// LimitedLog is limitedLog for code outside this package (go-redis's
// process-wide logger): at most burst lines at once, then one per 1/every
// seconds, the next line written saying how many were held back.
type LimitedLog struct{ l *limitedLog }

// NewLimitedLog returns a LimitedLog writing to logger.
func NewLimitedLog(logger *slog.Logger, every rate.Limit, burst int) *LimitedLog {
	return &LimitedLog{l: newLimitedLog(logger, every, burst)}
}

// Log writes the line unless the rate is exhausted.
func (l *LimitedLog) Log(ctx context.Context, level slog.Level, msg string, attrs ...slog.Attr) {
	l.l.Log(ctx, level, msg, attrs...)
}

// Flush writes one msg line with the number of lines held back since the
// last one written, if any were (limitedLog.Flush): for the exit.
func (l *LimitedLog) Flush(ctx context.Context, msg string, attrs ...slog.Attr) {
	l.l.Flush(ctx, msg, attrs...)
}
