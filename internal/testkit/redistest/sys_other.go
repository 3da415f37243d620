//go:build !linux

package redistest

import "syscall"

// sysProcAttr: no parent-death signal outside Linux; t.Cleanup still stops
// the child by PID.
func sysProcAttr() *syscall.SysProcAttr { return nil }
