package observability

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/hardenedgo/ginservice/internal/testkit"
)

// The exit line that gives the count of lines held back is written at the
// highest level among them: under LOG_LEVEL=warn, WARN lines held back are
// still accounted for (at info the line would be filtered out).
func TestLimitedLogFlushesAtTheLevelHeldBack(t *testing.T) {
	for _, tc := range []struct {
		name      string
		min       slog.Level
		levels    []slog.Level // of the lines logged after the burst
		wantLevel string
	}{
		{"warn lines under LOG_LEVEL=warn", slog.LevelWarn, []slog.Level{slog.LevelWarn, slog.LevelWarn}, "WARN"},
		{"info and warn lines", slog.LevelInfo, []slog.Level{slog.LevelInfo, slog.LevelWarn, slog.LevelInfo}, "WARN"},
		{"info lines", slog.LevelInfo, []slog.Level{slog.LevelInfo}, "INFO"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs := &testkit.SyncBuffer{}
			l := newLimitedLog(slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: tc.min})), 1e-9, 1)
			ctx := context.Background()
			l.Log(ctx, slog.LevelWarn, "event") // the burst of one
			for _, lv := range tc.levels {
				l.Log(ctx, lv, "event")
			}
			l.Flush(ctx, "event")
			lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
			if len(lines) != 2 {
				t.Fatalf("%d lines, want the burst's and the count's:\n%s", len(lines), logs)
			}
			want := `"level":"` + tc.wantLevel + `","msg":"event","suppressed":` + string(rune('0'+len(tc.levels)))
			if !strings.Contains(lines[1], want) {
				t.Fatalf("count line %s, want %s", lines[1], want)
			}
			l.Flush(ctx, "event")
			if n := strings.Count(logs.String(), "\n"); n != 2 {
				t.Fatalf("a second flush wrote again:\n%s", logs)
			}
		})
	}
}
