package server

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// CertCheckInterval is how often, at most, Certificate looks at its files
// for a renewed certificate (on a TLS handshake, not in the background).
var CertCheckInterval = 10 * time.Second

// Certificate is the public listener's TLS certificate from TLS_CERT_FILE
// and TLS_KEY_FILE. It picks up renewed files without a restart: when a
// handshake comes CertCheckInterval or more after the last look and either
// file has a new modification time, the pair is read again. cert-manager
// and the kubelet renew a mounted Secret by swapping the files under it;
// a server that read them once at start serves the old certificate until it
// expires. A pair that fails to load (half-written, mismatched) is logged
// and the previous one stays in use.
type Certificate struct {
	certFile, keyFile string
	logger            *slog.Logger

	mu              sync.Mutex
	cert            *tls.Certificate
	checked         time.Time
	certMod, keyMod time.Time
	now             func() time.Time
}

// LoadCertificate reads the pair once; its error names the file at fault.
func LoadCertificate(certFile, keyFile string, logger *slog.Logger) (*Certificate, error) {
	c := &Certificate{certFile: certFile, keyFile: keyFile, logger: logger, now: time.Now}
	cm, km, err := c.modTimes()
	if err != nil {
		return nil, err
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("TLS_CERT_FILE %s, TLS_KEY_FILE %s: %w", certFile, keyFile, err)
	}
	c.cert, c.certMod, c.keyMod, c.checked = &pair, cm, km, c.now()
	return c, nil
}

func (c *Certificate) modTimes() (cert, key time.Time, err error) {
	ci, err := os.Stat(c.certFile)
	if err != nil {
		return cert, key, fmt.Errorf("TLS_CERT_FILE: %w", err)
	}
	ki, err := os.Stat(c.keyFile)
	if err != nil {
		return cert, key, fmt.Errorf("TLS_KEY_FILE: %w", err)
	}
	return ci.ModTime(), ki.ModTime(), nil
}

// NotAfter is the expiry of the certificate in service (of the leaf).
func (c *Certificate) NotAfter() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cert.Leaf == nil {
		return time.Time{}
	}
	return c.cert.Leaf.NotAfter
}

// GetCertificate is for tls.Config.GetCertificate.
func (c *Certificate) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now := c.now(); now.Sub(c.checked) >= CertCheckInterval {
		c.checked = now
		c.reloadLocked()
	}
	return c.cert, nil
}

func (c *Certificate) reloadLocked() {
	cm, km, err := c.modTimes()
	if err != nil {
		c.logger.Warn("tls: certificate files unreadable, serving the previous certificate", slog.String("error", err.Error()))
		return
	}
	if cm.Equal(c.certMod) && km.Equal(c.keyMod) {
		return
	}
	pair, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		// Often a renewal caught halfway (the certificate written, not yet
		// the key): the next look, CertCheckInterval later, tries again.
		c.logger.Warn("tls: renewed certificate does not load, serving the previous one", slog.String("error", err.Error()))
		return
	}
	c.cert, c.certMod, c.keyMod = &pair, cm, km
	c.logger.Info("tls: certificate reloaded", slog.String("cert_file", c.certFile))
}
