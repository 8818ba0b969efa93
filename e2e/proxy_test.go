package e2e

import (
	"io"
	"net"
	"sync"
	"testing"

	"github.com/aftercare/aftercare/internal/testenv"
)

// tcpProxy forwards connections from its own loopback address to a target
// (the broker). cut closes the listener and every connection, as a pulled
// network cable; restore listens again on the same address.
type tcpProxy struct {
	addr, target string

	mu    sync.Mutex
	ln    net.Listener          // guarded by mu; nil while cut
	conns map[net.Conn]struct{} // guarded by mu
	wg    sync.WaitGroup
}

func newTCPProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	p := &tcpProxy{addr: testenv.FreeAddr(t), target: target, conns: map[net.Conn]struct{}{}}
	p.restore(t)
	t.Cleanup(func() {
		p.cut()
		p.wg.Wait()
	})
	return p
}

// restore starts accepting connections again.
func (p *tcpProxy) restore(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		t.Fatalf("proxy listen on %s: %v", p.addr, err)
	}
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.forward(c)
		}
	}()
}

// forward pipes one accepted connection to the target.
func (p *tcpProxy) forward(c net.Conn) {
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	if p.ln == nil {
		p.mu.Unlock()
		c.Close()
		up.Close()
		return
	}
	p.conns[c], p.conns[up] = struct{}{}, struct{}{}
	p.mu.Unlock()
	pipe := func(dst, src net.Conn) {
		defer p.wg.Done()
		io.Copy(dst, src)
		dst.Close()
		src.Close()
	}
	p.wg.Add(2)
	go pipe(up, c)
	go pipe(c, up)
}

// cut drops the listener and every open connection.
func (p *tcpProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}
