package testkit

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
)

// Listening reads the service's JSON log lines from r until its
// "listening" line and returns the public and admin addresses it names. The
// rest of the output stays in r for the caller to read (or, to stall the
// service's stdout, not to).
func Listening(r *bufio.Reader) (public, admin string, err error) {
	for {
		line, err := r.ReadBytes('\n')
		var m map[string]any
		if json.Unmarshal(line, &m) == nil && m["msg"] == "listening" {
			return fmt.Sprint(m["public"]), fmt.Sprint(m["admin"]), nil
		}
		if err != nil {
			return "", "", errors.Join(errors.New("the service stopped before it listened"), err)
		}
	}
}
