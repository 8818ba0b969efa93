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
//
// It also tracks the connections it handed to mochi that mochi has not
// started reading yet (handedConn), so Broker.Close can wait for them:
// mochi (v2.7.9) counts a connection in its clients' WaitGroup only in
// the goroutine that then reads it (attachClient), so a connection
// accepted just before Server.Close would be added while Close waits on
// that group, a data race.
type handshakeListener struct {
	ln    net.Listener
	conf  *tls.Config
	log   *slog.Logger
	ready chan *tls.Conn
	done  chan struct{}
	close sync.Once

	mu      sync.Mutex
	closed  bool // guarded by mu
	handing int  // connections handed to mochi and not yet read; guarded by mu
}

func newHandshakeListener(ln net.Listener, conf *tls.Config, log *slog.Logger) *handshakeListener {
	l := &handshakeListener{ln: ln, conf: conf, log: log, ready: make(chan *tls.Conn), done: make(chan struct{})}
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
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.closed {
			c.Close()
			return nil, net.ErrClosed
		}
		l.handing++
		return &handedConn{Conn: c, l: l}, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *handshakeListener) Close() error {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	l.close.Do(func() { close(l.done) })
	return l.ln.Close()
}

// quiesce closes the listener and waits, at most for timeout, until mochi
// has started reading every connection handed to it.
func (l *handshakeListener) quiesce(timeout time.Duration) {
	l.Close()
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		l.mu.Lock()
		n := l.handing
		l.mu.Unlock()
		if n == 0 {
			return
		}
	}
}

// A handedConn is a connection handed to mochi; its first Read (or its
// Close) tells the listener mochi has taken it.
type handedConn struct {
	*tls.Conn
	l     *handshakeListener
	taken sync.Once
}

func (c *handedConn) take() {
	c.taken.Do(func() {
		c.l.mu.Lock()
		c.l.handing--
		c.l.mu.Unlock()
	})
}

func (c *handedConn) Read(b []byte) (int, error) {
	c.take()
	return c.Conn.Read(b)
}

func (c *handedConn) Close() error {
	c.take()
	return c.Conn.Close()
}

func (l *handshakeListener) Addr() net.Addr { return l.ln.Addr() }
