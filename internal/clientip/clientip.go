// Package clientip finds a request's client IP the way Gin's
// Context.ClientIP does, without its allocations on the common path.
package clientip

import (
	"net/netip"
	"strings"

	"github.com/gin-gonic/gin"
)

// Of returns what c.ClientIP() returns for an engine with Gin's default
// RemoteIPHeaders (X-Forwarded-For, X-Real-IP) and no TrustedPlatform, the
// configuration of this service. A request without forwarding headers has
// the peer address as its client IP whoever the peer is; that address is
// taken from RemoteAddr as it stands when it is already in canonical form,
// instead of parsing it into a net.IP and formatting it again (two
// allocations, on every request, twice: the rate limiter's key and the
// access line). Anything else (forwarding headers, an unusual address) is
// Gin's to decide.
func Of(c *gin.Context) string {
	r := c.Request
	if len(r.Header["X-Forwarded-For"]) > 0 || len(r.Header["X-Real-Ip"]) > 0 {
		return c.ClientIP()
	}
	host, ok := hostOf(r.RemoteAddr)
	if !ok {
		return c.ClientIP()
	}
	return host
}

// hostOf returns the IP of an "ip:port" or "[ipv6]:port" address when it is
// a plain IP literal already in the form net.IP.String would print.
func hostOf(addr string) (string, bool) {
	i := strings.LastIndexByte(addr, ':')
	if i <= 0 {
		return "", false
	}
	host := addr[:i]
	if host[0] == '[' {
		if len(host) < 2 || host[len(host)-1] != ']' {
			return "", false
		}
		host = host[1 : len(host)-1]
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || ip.Zone() != "" {
		return "", false
	}
	if ip.Is4() {
		// netip rejects leading zeros and short forms: what parses is canonical.
		return host, true
	}
	if ip.Is4In6() {
		return "", false // net.IP prints these as IPv4
	}
	var buf [64]byte
	if string(ip.AppendTo(buf[:0])) != host {
		return "", false
	}
	return host, true
}
