package observability

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hardenedgo/ginservice/internal/testkit"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// clientHello captures the first flight of a real TLS client.
func clientHello(t *testing.T) []byte {
	t.Helper()
	a, b := net.Pipe()
	go func() {
		_ = tls.Client(a, &tls.Config{ServerName: "x", InsecureSkipVerify: true}).Handshake()
	}()
	buf := make([]byte, 4096)
	n, err := b.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	b.Close()
	if n < 100 || buf[0] != 0x16 {
		t.Fatalf("captured %d bytes, not a ClientHello record", n)
	}
	return buf[:n]
}

type tlsServer struct {
	addr     string
	reg      *prometheus.Registry
	conns    *ConnMetrics
	logs     *testkit.SyncBuffer
	errLog   *log.Logger // the server's ErrorLog
	reasonOf func(string) float64
}

// startTLSServer runs a real http.Server over TLS on loopback with the
// error log and connection metrics wired as in production. Its
// ReadHeaderTimeout, which also bounds the handshake, is handshakeTimeout.
func startTLSServer(t *testing.T, handshakeTimeout time.Duration) *tlsServer {
	t.Helper()
	logs := &testkit.SyncBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	reg := prometheus.NewRegistry()
	ts := &tlsServer{reg: reg, logs: logs, conns: NewConnMetrics(reg, logger)}
	ts.errLog = ServerErrorLog(logger, reg, ts.conns)
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }),
		ReadHeaderTimeout: handshakeTimeout,
		ErrorLog:          ts.errLog,
		ConnState:         ts.conns.ConnState,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.addr = ln.Addr().String()
	go srv.ServeTLS(ts.conns.Listener(ln), "", "")
	t.Cleanup(func() { srv.Close() })
	ts.reasonOf = func(reason string) float64 {
		v, ok := testkit.Metric(t, reg, "http_server_tls_handshake_errors_total", "reason", reason)
		if !ok {
			t.Fatalf("no series for reason %q", reason)
		}
		return v
	}
	return ts
}

func TestTLSHandshakeErrorsByReason(t *testing.T) {
	// Every handshake but the stalled one gets all the time it needs: on a
	// loaded machine under -race, a bad-certificate handshake can take
	// longer than the short deadline the stalled one runs into, and would
	// then count as a timeout.
	ts := startTLSServer(t, 10*time.Second)
	stall := startTLSServer(t, 300*time.Millisecond)
	hello := clientHello(t)

	// A TLS client that hangs up mid-handshake: half a ClientHello, then FIN.
	c, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Write(hello[:len(hello)/2])
	c.Close()
	eventually(t, "eof", func() bool { return ts.reasonOf(TLSReasonEOF) == 1 })
	// The same connection, seen by the connection metrics: the peer closed it
	// before its first request.
	eventually(t, "peer close of a new conn", func() bool {
		return testutil.ToFloat64(ts.conns.closed.WithLabelValues(CloseReasonPeerClosed, "new")) == 1
	})

	// One that stalls mid-handshake until the server's deadline.
	c, err = net.Dial("tcp", stall.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(hello[:len(hello)/2])
	eventually(t, "timeout", func() bool { return stall.reasonOf(TLSReasonTimeout) == 1 }, stall.logs.String)
	if !strings.Contains(stall.logs.String(), `"reason":"timeout"`) {
		t.Errorf("no timeout line:\n%s", stall.logs.String())
	}

	// A client that does not trust the self-signed certificate.
	if _, err := tls.Dial("tcp", ts.addr, &tls.Config{}); err == nil {
		t.Fatal("handshake with an untrusted certificate succeeded")
	}
	eventually(t, "bad certificate", func() bool { return ts.reasonOf(TLSReasonBadCertificate) == 1 }, ts.logs.String)

	// Bytes that are not TLS at all, and plain HTTP to the TLS port.
	c2, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	c2.Write([]byte("\x00\x01\x02\x03\x04\x05\x06\x07"))
	io.Copy(io.Discard, c2)
	c2.Close()
	resp, err := http.Get("http://" + ts.addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	// net/http's plain-text answer, as a problem with a request ID; counted
	// as a handshake error, not also as a rejected request.
	if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Content-Type") != "application/problem+json" ||
		len(resp.Header.Get("X-Request-ID")) != 32 || !strings.Contains(string(body), "plain HTTP request sent to the TLS port") {
		t.Errorf("plain HTTP on the TLS port: %d %v %s", resp.StatusCode, resp.Header, body)
	}
	if n := testutil.ToFloat64(ts.conns.rejected.WithLabelValues("400")); n != 0 {
		t.Errorf("plain HTTP on the TLS port counted as a rejected request too: %v", n)
	}
	eventually(t, "other", func() bool { return ts.reasonOf(TLSReasonOther) == 2 })
	// Its handshake error line carries the request ID the client got.
	if id := resp.Header.Get("X-Request-ID"); !strings.Contains(ts.logs.String(), `"request_id":"`+id+`"`) {
		t.Errorf("no log line has the request ID %s of the answer to plain HTTP:\n%s", id, ts.logs.String())
	}

	// A good client still gets through, and is not counted.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err = hc.Get("https://" + ts.addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for reason, want := range map[string]float64{TLSReasonEOF: 1, TLSReasonTimeout: 0, TLSReasonBadCertificate: 1, TLSReasonOther: 2} {
		if got := ts.reasonOf(reason); got != want {
			t.Errorf("%s = %v, want %v", reason, got, want)
		}
	}
	for reason, want := range map[string]float64{TLSReasonEOF: 0, TLSReasonTimeout: 1, TLSReasonBadCertificate: 0, TLSReasonOther: 0} {
		if got := stall.reasonOf(reason); got != want {
			t.Errorf("stalled handshake's server: %s = %v, want %v", reason, got, want)
		}
	}
	logs := ts.logs.String()
	for _, want := range []string{`"msg":"tls handshake error","reason":"eof","remote_addr":"127.0.0.1:`, `"reason":"bad_certificate"`, `client sent an HTTP request to an HTTPS server`} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %s:\n%s", want, logs)
		}
	}
}

// A TLS 1.3 client built on OpenSSL (curl, Python, openssl s_client) that
// refuses the certificate sends its alert unencrypted, after the server has
// switched to encrypted records: crypto/tls fails on it with "bad record
// MAC". It is still a refused certificate.
func TestTLSCertificateRefusedInClear(t *testing.T) {
	ts := startTLSServer(t, 10*time.Second)
	// A Go client whose encrypted alert (the only 19-byte record a TLS 1.3
	// client sends) is replaced by the bytes OpenSSL sends: an alert record
	// in clear, fatal, unknown_ca.
	raw, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(&clearAlertConn{Conn: raw}, &tls.Config{ServerName: "localhost", MinVersion: tls.VersionTLS13})
	if err := c.Handshake(); err == nil {
		t.Fatal("handshake with an untrusted certificate succeeded")
	}
	raw.Close()
	eventually(t, "bad_certificate", func() bool { return ts.reasonOf(TLSReasonBadCertificate) == 1 }, ts.logs.String)
	if got := ts.reasonOf(TLSReasonOther); got != 0 {
		t.Errorf("other = %v, want 0", got)
	}
	if !strings.Contains(ts.logs.String(), `"peer_alert":"tls: unknown certificate authority`) {
		t.Errorf("the line does not name the client's alert:\n%s", ts.logs.String())
	}

	// The real thing, when openssl is here (scripts/ci-deps.sh installs it).
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("openssl not installed (Debian package openssl)")
		}
		t.Skip("openssl not installed")
	}
	for _, version := range []string{"-tls1_3", "-tls1_2"} {
		before := ts.reasonOf(TLSReasonBadCertificate)
		cmd := exec.Command(openssl, "s_client", "-connect", ts.addr, "-servername", "localhost", version, "-verify_return_error")
		cmd.Stdin = strings.NewReader("")
		if out, err := cmd.CombinedOutput(); err == nil {
			t.Fatalf("openssl s_client %s accepted the self-signed certificate:\n%s", version, out)
		}
		eventually(t, "bad_certificate from openssl "+version, func() bool { return ts.reasonOf(TLSReasonBadCertificate) == before+1 }, ts.logs.String)
	}
	if got := ts.reasonOf(TLSReasonOther); got != 0 {
		t.Errorf("other = %v after openssl's refusals, want 0", got)
	}
}

// clearAlertConn rewrites a TLS 1.3 client's encrypted alert record into
// the unencrypted fatal unknown_ca alert OpenSSL sends.
type clearAlertConn struct{ net.Conn }

func (c *clearAlertConn) Write(b []byte) (int, error) {
	// One write may carry several records (the compatibility
	// ChangeCipherSpec goes out with the alert).
	var out []byte
	for rest := b; len(rest) >= 5; {
		n := 5 + (int(rest[3])<<8 | int(rest[4]))
		if n > len(rest) {
			return c.Conn.Write(b) // not whole records: as it is
		}
		if rest[0] == 0x17 && n == 5+19 {
			out = append(out, 0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 48)
		} else {
			out = append(out, rest[:n]...)
		}
		rest = rest[n:]
	}
	if _, err := c.Conn.Write(out); err != nil {
		return 0, err
	}
	return len(b), nil
}

// A handshake flood is counted in full but logged at a bounded rate, which
// leaves room for the lines of another reason; the exit flush gives the
// count held back, by reason.
func TestTLSHandshakeFloodIsRateLimited(t *testing.T) {
	ts := startTLSServer(t, 10*time.Second)
	hello := clientHello(t)
	const n = 80
	for range n {
		c, err := net.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(hello[:20])
		c.Close()
	}
	eventually(t, "all counted", func() bool { return ts.reasonOf(TLSReasonEOF) == n })
	lines := strings.Count(ts.logs.String(), `"msg":"tls handshake error"`)
	if lines < 10 || lines >= n/2 {
		t.Fatalf("%d log lines for %d failed handshakes, want the burst of 10 and a few more", lines, n)
	}

	// A client refusing the certificate, in the middle of the flood.
	if _, err := tls.Dial("tcp", ts.addr, &tls.Config{}); err == nil {
		t.Fatal("handshake with an untrusted certificate succeeded")
	}
	eventually(t, "bad certificate counted", func() bool { return ts.reasonOf(TLSReasonBadCertificate) == 1 })
	if !strings.Contains(ts.logs.String(), `"reason":"bad_certificate"`) {
		t.Errorf("the eof flood hid the bad_certificate line:\n%s", ts.logs.String())
	}

	// Every eof line is either written, or counted as held back by a later
	// line of its limit or by the exit line.
	FlushServerErrorLog(ts.errLog)
	var written, heldLater, heldAtExit int
	for _, l := range strings.Split(strings.TrimSpace(ts.logs.String()), "\n") {
		if !strings.Contains(l, `"msg":"tls handshake error","reason":"eof"`) {
			continue
		}
		var v struct {
			RemoteAddr string `json:"remote_addr"`
			Suppressed int
		}
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Fatal(err)
		}
		if v.RemoteAddr == "" {
			heldAtExit += v.Suppressed
			continue
		}
		written++
		heldLater += v.Suppressed
	}
	if written+heldLater+heldAtExit != n || heldAtExit == 0 {
		t.Errorf("eof lines: %d written, %d held back as later lines say, %d as the exit line says; want %d in all, some at exit:\n%s",
			written, heldLater, heldAtExit, n, ts.logs.String())
	}
}

func TestServerErrorLogOtherLines(t *testing.T) {
	logs := &testkit.SyncBuffer{}
	l := ServerErrorLog(slog.New(slog.NewJSONHandler(logs, nil)), prometheus.NewRegistry(), nil)
	l.Printf("http: Accept error: accept tcp [::]:8080: accept4: too many open files; retrying in 5ms")
	if got := logs.String(); !strings.Contains(got, `"level":"WARN","msg":"http server error","error":"Accept error: accept tcp [::]:8080: accept4: too many open files; retrying in 5ms"`) {
		t.Fatalf("got %s", got)
	}
}

func TestClassifyTLSError(t *testing.T) {
	for msg, want := range map[string]string{
		"EOF":            TLSReasonEOF,
		"unexpected EOF": TLSReasonEOF,
		"read tcp 127.0.0.1:443->127.0.0.1:5555: read: connection reset by peer": TLSReasonEOF,
		"read tcp 127.0.0.1:443->127.0.0.1:5555: i/o timeout":                    TLSReasonTimeout,
		"remote error: tls: bad certificate":                                     TLSReasonBadCertificate,
		"remote error: tls: unknown certificate authority":                       TLSReasonBadCertificate,
		"tls: client didn't provide a certificate":                               TLSReasonBadCertificate,
		"tls: first record does not look like a TLS handshake":                   TLSReasonOther,
		"tls: client offered only unsupported versions: [302 301]":               TLSReasonOther,
	} {
		if got := classifyTLSError(msg); got != want {
			t.Errorf("%q -> %s, want %s", msg, got, want)
		}
	}
}

func selfSigned(t *testing.T) tls.Certificate {
	c, _, _ := testkit.SelfSignedCert(t)
	return c
}
