package redistest

import "syscall"

// sysProcAttr makes the kernel kill the child if the test binary dies first
// (a crashed or timed-out test must not leave redis-server running).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
