package observability

import (
	"context"
	"log/slog"
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
}

func newLimitedLog(logger *slog.Logger, every rate.Limit, burst int) *limitedLog {
	return &limitedLog{logger: logger, lim: rate.NewLimiter(every, burst)}
}

// Log writes the line unless the rate is exhausted.
func (l *limitedLog) Log(ctx context.Context, level slog.Level, msg string, attrs ...slog.Attr) {
	if !l.logger.Enabled(ctx, level) {
		return
	}
	if !l.lim.Allow() {
		l.suppressed.Add(1)
		return
	}
	if n := l.suppressed.Swap(0); n > 0 {
		attrs = append(attrs, slog.Int64("suppressed", n))
	}
	l.logger.LogAttrs(ctx, level, msg, attrs...)
}

// Flush writes, at level, one line with msg and the number of lines
// suppressed since the last one written, if any were: at exit, the line
// that would have carried the count never comes.
func (l *limitedLog) Flush(ctx context.Context, level slog.Level, msg string) {
	if n := l.suppressed.Swap(0); n > 0 {
		l.logger.LogAttrs(ctx, level, msg, slog.Int64("suppressed", n),
			slog.String("detail", "lines over the rate limit, not written"))
	}
}
