package broker

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"
)

// handshakeTimeout bounds a client's TLS handshake.
const handshakeTimeout = 10 * time.Second

// handshakeListener hands mochi only TLS connections whose handshake is
// complete, each done in a goroutine of its own within handshakeTimeout.
// The handshake's deep stack (certificate verification, key exchange)
// then ends with that goroutine, instead of staying with the connection's
// reader for as long as the device is connected, and a client that never
// finishes its handshake holds nothing past the timeout.
type handshakeListener struct {
	ln    net.Listener
	conf  *tls.Config
	log   *slog.Logger
	ready chan net.Conn
	done  chan struct{}
	close sync.Once
}

func newHandshakeListener(ln net.Listener, conf *tls.Config, log *slog.Logger) *handshakeListener {
	l := &handshakeListener{ln: ln, conf: conf, log: log, ready: make(chan net.Conn), done: make(chan struct{})}
	go l.acceptLoop()
	return l
}

func (l *handshakeListener) acceptLoop() {
	backoff := 5 * time.Millisecond
	for {
		c, err := l.ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			l.Close()
			return
		}
		if err != nil {
			// Out of descriptors or the like: wait a little, as
			// net/http does, rather than spin.
			l.log.Warn("broker accept failed", "err", err, "retry_in", backoff)
			select {
			case <-l.done:
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		go l.handshake(c)
	}
}

func (l *handshakeListener) handshake(c net.Conn) {
	tc := tls.Server(c, l.conf)
	tc.SetDeadline(time.Now().Add(handshakeTimeout))
	if err := tc.Handshake(); err != nil {
		l.log.Warn("broker refused a client at the TLS handshake", "remote", c.RemoteAddr().String(), "err", err)
		c.Close()
		return
	}
	tc.SetDeadline(time.Time{})
	select {
	case l.ready <- tc:
	case <-l.done:
		tc.Close()
	}
}

func (l *handshakeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *handshakeListener) Close() error {
	l.close.Do(func() { close(l.done) })
	return l.ln.Close()
}

func (l *handshakeListener) Addr() net.Addr { return l.ln.Addr() }
