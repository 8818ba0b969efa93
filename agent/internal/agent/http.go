package agent

import (
	"crypto/tls"
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

// NewHTTPClientTLS is NewHTTPClient with a TLS configuration, e.g. the
// device's client certificate from Credentials.HTTPTLS.
func NewHTTPClientTLS(t *tls.Config) *http.Client {
	c := NewHTTPClient()
	c.Transport.(*http.Transport).TLSClientConfig = t
	return c
}
