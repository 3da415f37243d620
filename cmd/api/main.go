// Command api is the hardened Gin service: see README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
)

// Set at build time: go build -ldflags "-X main.version=v1.2.3 -X main.commit=abc123".
// Without -X main.commit, a binary built from a Git checkout reports the
// revision the go command stamped into it (vcs.revision), "-dirty" appended
// for uncommitted changes.
var (
	version = "dev"
	commit  = "unknown"
)

func main() {
	if err := run(context.Background(), os.Args, os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		var ec exitCoder
		if errors.As(err, &ec) {
			os.Exit(ec.ExitCode())
		}
		os.Exit(1)
	}
}

// buildCommit is the commit this binary reports.
func buildCommit() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		return vcsCommit(commit, bi.Settings)
	}
	return commit
}

// vcsCommit returns commit unless it is the "unknown" placeholder and the
// build settings carry a VCS revision.
func vcsCommit(commit string, settings []debug.BuildSetting) string {
	if commit != "unknown" {
		return commit
	}
	rev, dirty := "", false
	for _, s := range settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return commit
	}
	if dirty {
		rev += "-dirty"
	}
	return rev
}
