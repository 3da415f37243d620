package items

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// Doer sends one HTTP request. *http.Client and the resilient client of
// internal/resilience both satisfy it; items does not import the latter
// (resilience depends on items).
type Doer interface {
	Do(req *http.Request) (*http.Response, error)
}

// maxItemBytes bounds what we read from the dependency: a misbehaving peer
// must not make us buffer without limit.
const maxItemBytes = 1 << 20

// HTTPSource fetches items from a remote dependency: GET {base}/items/{id}.
type HTTPSource struct {
	base   string // without trailing slash
	shown  string // base for error messages and logs: a password is masked
	client Doer
}

var _ Source = (*HTTPSource)(nil)

// NewHTTPSource returns a Source for the dependency at baseURL (absolute
// http or https URL, optionally with a path prefix).
func NewHTTPSource(baseURL string, client Doer) (*HTTPSource, error) {
	// Errors name the URL with its password masked: it may carry one.
	u, err := url.Parse(baseURL)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL it quotes
		}
		return nil, fmt.Errorf("items: base URL: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("items: base URL %q: want an absolute http(s) URL", u.Redacted())
	}
	if u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
		return nil, fmt.Errorf("items: base URL %q: must not have a query or fragment", u.Redacted())
	}
	if client == nil {
		return nil, errors.New("items: nil HTTP client")
	}
	// Credentials in the URL are sent as basic auth by net/http; they must
	// not reach the logs through our error messages.
	return &HTTPSource{base: strings.TrimRight(u.String(), "/"), shown: strings.TrimRight(u.Redacted(), "/"), client: client}, nil
}

// StatusError is a non-2xx answer other than 404 and 410.
type StatusError struct {
	StatusCode int
	URL        string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("items: GET %s: %d %s", e.URL, e.StatusCode, http.StatusText(e.StatusCode))
}

// CallerError reports whether the status blames the request rather than
// the dependency's health: 4xx except 408 (timeout), 429 (overload) and
// 401, 403, 407, which blame this service's own credentials or
// configuration: every call fails the same way, and the circuit should
// open and readiness say degraded. A circuit breaker must not open on the
// others.
func (e *StatusError) CallerError() bool {
	switch e.StatusCode {
	case http.StatusRequestTimeout, http.StatusTooManyRequests,
		http.StatusUnauthorized, http.StatusForbidden, http.StatusProxyAuthRequired:
		return false
	}
	return e.StatusCode >= 400 && e.StatusCode < 500
}

// Get implements Source: 200 -> the item, 404 and 410 -> ErrNotFound,
// other non-2xx -> *StatusError, transport and decoding errors wrapped.
func (s *HTTPSource) Get(ctx context.Context, id string) (Item, error) {
	path := "/items/" + url.PathEscape(id)
	u := s.shown + path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.base+path, nil)
	if err != nil {
		return Item{}, fmt.Errorf("items: build request: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return Item{}, fmt.Errorf("items: GET %s: %w", u, err)
	}
	defer func() {
		// Drain a little so the connection can be reused, then close.
		_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
		_ = resp.Body.Close()
	}()
	switch {
	case resp.StatusCode == http.StatusNotFound, resp.StatusCode == http.StatusGone:
		return Item{}, ErrNotFound
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		return Item{}, &StatusError{StatusCode: resp.StatusCode, URL: u}
	}
	var it Item
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxItemBytes)).Decode(&it); err != nil {
		return Item{}, fmt.Errorf("items: GET %s: decode: %w", u, err)
	}
	if it.ID == "" {
		it.ID = id
	}
	if it.Source == "" {
		it.Source = "downstream"
	}
	return it, nil
}
