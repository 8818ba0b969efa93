// Package testenv decides what a test does when a service it needs is not
// running: on a developer's machine it skips with one line saying what to
// start; under CI (CI=true) it fails, because CI must run every test.
package testenv

import (
	"net"
	"os"
	"testing"
	"time"
)

// Need skips t, or fails it under CI, when addr does not accept TCP
// connections. start says how to start the service.
func Need(t testing.TB, what, addr, start string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err == nil {
		conn.Close()
		return
	}
	Missing(t, what+" is not reachable on "+addr+"; start it with: "+start)
}

// Missing skips t with msg, or fails it under CI.
func Missing(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + " (CI=true: every service must be up)")
	}
	t.Skip(msg)
}

// Getenv returns the environment variable name, or def when it is unset.
func Getenv(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// FreeAddr returns a loopback address whose port was free a moment ago,
// for a server the test starts in another process.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// Stop sends p sig and waits until exited is closed (by whoever waits for
// p); if p has not exited after grace, it kills p and waits again.
func Stop(p *os.Process, exited <-chan struct{}, sig os.Signal, grace time.Duration) {
	p.Signal(sig)
	select {
	case <-exited:
	case <-time.After(grace):
		p.Kill()
		<-exited
	}
}
