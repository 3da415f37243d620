package server

import (
	"bytes"
	"crypto/tls"
	"encoding/pem"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hardenedgo/ginservice/internal/testkit"
)

func TestLoadCertificateNamesTheFile(t *testing.T) {
	certFile, keyFile := testkit.WriteSelfSignedCert(t)
	garbage := filepath.Join(t.TempDir(), "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ cert, key, want string }{
		{"/nonexistent/cert.pem", keyFile, "TLS_CERT_FILE"},
		{certFile, "/nonexistent/key.pem", "TLS_KEY_FILE"},
		{garbage, keyFile, "TLS_CERT_FILE " + garbage},
	} {
		_, err := LoadCertificate(c.cert, c.key, slog.New(slog.DiscardHandler))
		if err == nil || !strings.HasPrefix(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("LoadCertificate(%s, %s) = %v, want one line starting with %q", c.cert, c.key, err, c.want)
		}
	}
}

// A renewed pair (new files, as cert-manager writes them) is served from the
// first handshake CertCheckInterval after the last look, without a
// restart; a pair that does not load leaves the previous one in service.
func TestCertificateReload(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	stamp := time.Now()
	write := func(certPEM, keyPEM []byte) {
		t.Helper()
		stamp = stamp.Add(time.Minute) // a new modification time, whatever the file system's resolution
		for f, b := range map[string][]byte{certFile: certPEM, keyFile: keyPEM} {
			if err := os.WriteFile(f, b, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(f, stamp, stamp); err != nil {
				t.Fatal(err)
			}
		}
	}
	_, aCert, aKey := testkit.SelfSignedCert(t)
	_, bCert, bKey := testkit.SelfSignedCert(t)
	_, cCert, _ := testkit.SelfSignedCert(t)
	write(aCert, aKey)

	var logs bytes.Buffer
	var logMu sync.Mutex
	logger := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		logMu.Lock()
		defer logMu.Unlock()
		return logs.Write(p)
	}), nil))
	c, err := LoadCertificate(certFile, keyFile, logger)
	if err != nil {
		t.Fatal(err)
	}
	var clock sync.Mutex
	now := time.Now()
	c.now = func() time.Time { clock.Lock(); defer clock.Unlock(); return now }
	advance := func() { clock.Lock(); now = now.Add(CertCheckInterval); clock.Unlock() }

	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{GetCertificate: c.GetCertificate, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _ = conn.(*tls.Conn).Handshake(); conn.Close() }()
		}
	}()
	served := func() []byte {
		t.Helper()
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].Raw
	}
	der := func(certPEM []byte) []byte {
		block, _ := pem.Decode(certPEM)
		return block.Bytes
	}

	if !bytes.Equal(served(), der(aCert)) {
		t.Fatal("not serving the certificate it loaded")
	}
	write(bCert, bKey)
	if !bytes.Equal(served(), der(aCert)) {
		t.Fatal("looked at the files again before CertCheckInterval")
	}
	advance()
	if !bytes.Equal(served(), der(bCert)) {
		t.Fatal("the renewed certificate is not served after CertCheckInterval")
	}
	write(cCert, bKey) // a certificate that does not match the key
	advance()
	if !bytes.Equal(served(), der(bCert)) {
		t.Fatal("a pair that does not load replaced the one in service")
	}
	logMu.Lock()
	defer logMu.Unlock()
	if !strings.Contains(logs.String(), "certificate reloaded") || !strings.Contains(logs.String(), "does not load") {
		t.Errorf("logs:\n%s", logs.String())
	}
}

type writerFunc func(p []byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
