// Command freeport prints N free TCP ports on 127.0.0.1, one a line, for
// programs that must be told their port in advance (the service's
// HTTP_ADDR/ADMIN_ADDR). All N listeners are held open together so the ports
// differ; the kernel may hand one out again after they close, so callers
// check the program they start really listens.
//
//	freeport 2
package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
)

func main() {
	n := 1
	if len(os.Args) > 1 {
		v, err := strconv.Atoi(os.Args[1])
		if err != nil || v < 1 || v > 64 {
			fmt.Fprintln(os.Stderr, "usage: freeport [N]   (1 <= N <= 64)")
			os.Exit(2)
		}
		n = v
	}
	lns := make([]net.Listener, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Fprintln(os.Stderr, "freeport:", err)
			os.Exit(1)
		}
		lns = append(lns, ln)
	}
	for _, ln := range lns {
		fmt.Println(ln.Addr().(*net.TCPAddr).Port)
		ln.Close()
	}
}
