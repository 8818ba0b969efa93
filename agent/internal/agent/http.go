package agent

import (
	"net"
	"net/http"
	"time"
)

// NewHTTPClient returns the agent's HTTP client: bounded connect, TLS and
// response-header waits, no overall timeout (image downloads are long; the
// installer bounds what it reads).
func NewHTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   4,
	}}
}
