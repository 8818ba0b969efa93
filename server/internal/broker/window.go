package broker

import (
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// serverWindow keeps the server's own connections from overflowing their
// outbound queues. mochi gives every connection one queue of
// Limits.ClientQueue packets and drops a message, QoS 1 included, when the
// queue of a subscriber is full, after the publishing device was already
// acknowledged. The queue is small, because every idle device pays for
// its own; so devices' publishes are admitted, before the broker
// acknowledges them, only while each connected server client holds fewer
// than Limits.ServerWindow unacknowledged messages (mochi's inflight
// count, which includes its queue). A device waits, its connection
// unread, until the server acknowledges, which is end-to-end flow
// control: the server acknowledges after it has stored the message.
//
// Every device has at most one publish being admitted or fanned out at a
// time (mochi reads each connection in order), so admitted holds a device
// from OnPublish to OnPublished or its disconnect, and the count of
// admitted devices plus a server's inflight bounds that server's queue.
type serverWindow struct {
	limit   int
	maxWait time.Duration

	mu       sync.Mutex
	servers  map[*mqtt.Client]bool // guarded by mu; the server's connections
	admitted map[*mqtt.Client]bool // guarded by mu; devices between admission and fan-out
	waiters  []*windowWaiter       // guarded by mu; first come, first admitted
}

type windowWaiter struct {
	cl    *mqtt.Client
	ready chan struct{} // closed once admitted
}

func newServerWindow(limit int, maxWait time.Duration) *serverWindow {
	return &serverWindow{limit: limit, maxWait: maxWait, servers: map[*mqtt.Client]bool{}, admitted: map[*mqtt.Client]bool{}}
}

func (w *serverWindow) addServer(cl *mqtt.Client) {
	w.mu.Lock()
	w.servers[cl] = true
	w.mu.Unlock()
}

func (w *serverWindow) isServer(cl *mqtt.Client) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.servers[cl]
}

// roomLocked is how many more devices may be admitted now. w.mu must be
// held.
func (w *serverWindow) roomLocked() int {
	room := w.limit - len(w.admitted)
	for s := range w.servers {
		if !s.Closed() {
			room = min(room, w.limit-s.State.Inflight.Len()-len(w.admitted))
		}
	}
	return room
}

// wakeLocked admits waiting devices, first come first, while there is
// room. w.mu must be held.
func (w *serverWindow) wakeLocked() {
	for room := w.roomLocked(); room > 0 && len(w.waiters) > 0; room-- {
		next := w.waiters[0]
		w.waiters = w.waiters[1:]
		w.admitted[next.cl] = true
		close(next.ready)
	}
}

// admit waits until the device's publish may go on; false after maxWait.
func (w *serverWindow) admit(cl *mqtt.Client) bool {
	w.mu.Lock()
	if len(w.waiters) == 0 && w.roomLocked() > 0 {
		w.admitted[cl] = true
		w.mu.Unlock()
		return true
	}
	me := &windowWaiter{cl: cl, ready: make(chan struct{})}
	w.waiters = append(w.waiters, me)
	w.mu.Unlock()
	t := time.NewTimer(w.maxWait)
	defer t.Stop()
	select {
	case <-me.ready:
		return true
	case <-t.C:
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	select {
	case <-me.ready: // admitted while the timer fired
		return true
	default:
	}
	for i, x := range w.waiters {
		if x == me {
			w.waiters = append(w.waiters[:i], w.waiters[i+1:]...)
			break
		}
	}
	return false
}

// published ends a device's admission: its message is in the server's
// inflight count now, or went nowhere.
func (w *serverWindow) published(cl *mqtt.Client) {
	w.mu.Lock()
	if w.admitted[cl] {
		delete(w.admitted, cl)
		w.wakeLocked()
	}
	w.mu.Unlock()
}

// acknowledged notes that a server connection acknowledged a message.
func (w *serverWindow) acknowledged(cl *mqtt.Client) {
	w.mu.Lock()
	if w.servers[cl] {
		w.wakeLocked()
	}
	w.mu.Unlock()
}

// disconnected forgets a connection.
func (w *serverWindow) disconnected(cl *mqtt.Client) {
	w.mu.Lock()
	delete(w.servers, cl)
	delete(w.admitted, cl)
	w.wakeLocked()
	w.mu.Unlock()
}
