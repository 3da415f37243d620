package testkit

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// SelfSignedCert returns a server certificate for 127.0.0.1, signed by
// itself and valid for an hour, with its PEM encodings.
func SelfSignedCert(t testing.TB) (cert tls.Certificate, certPEM, keyPEM []byte) {
	t.Helper()
	return selfSigned(t, x509.ExtKeyUsageServerAuth)
}

// SelfSignedClientCert is SelfSignedCert for a TLS client (mutual TLS).
func SelfSignedClientCert(t testing.TB) (cert tls.Certificate, certPEM, keyPEM []byte) {
	t.Helper()
	return selfSigned(t, x509.ExtKeyUsageClientAuth)
}

func selfSigned(t testing.TB, usage x509.ExtKeyUsage) (cert tls.Certificate, certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

// WriteSelfSignedCert writes SelfSignedCert's PEM files into a temp dir
// (for TLS_CERT_FILE / TLS_KEY_FILE) and returns their paths.
func WriteSelfSignedCert(t testing.TB) (certFile, keyFile string) {
	t.Helper()
	_, certPEM, keyPEM := SelfSignedCert(t)
	return WritePEM(t, certPEM, keyPEM)
}

// WritePEM writes a certificate and its key into a temp dir and returns
// their paths.
func WritePEM(t testing.TB, certPEM, keyPEM []byte) (certFile, keyFile string) {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
