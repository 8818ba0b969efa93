package broker

import (
	"bytes"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// rescueHook delivers the QoS 1 messages mochi would lose after it
// acknowledged them to the device that published them: those it strands
// when a persistent session is taken over, and those it drops when a
// subscriber's queue of pending writes is full.
//
// Takeover (the fleet server's client is taken over on every reconnect):
// mochi (v2.7.9, Server.inheritClientSession and attachClient) takes a
// session over in steps while devices keep publishing: it marks the old
// client taken over, clones its inflight messages into the new client,
// clears the old client's inflight messages, and only then makes the new
// client the one that Clients.Get returns. A message fanned out to the
// old client after the clone is either cleared with the rest (mochi calls
// OnQosDropped) or left in the old client, which nothing reads again
// (mochi called OnQosPublish on a client already taken over). Either way
// the device had its PUBACK, so the message was lost: this was the loss
// across a server restart in notes/issue-7-events.md.
//
// The hook collects every message that reaches a client already taken
// over, and when the new session is established (CONNACK sent, inflight
// resent, nothing read yet) delivers to it those it did not inherit;
// one that arrives later still goes to the session established since.
//
// Full queue: mochi queues at most MaximumClientWritesPending (1,024)
// messages per client for its writer and drops a message that finds the
// queue full (OnPublishDropped), even at QoS 1. The server's client holds
// a message of every device that is publishing, so a burst of more
// devices than that while it is slow lost reports. The hook writes such a
// message itself, in the publisher's goroutine: the publisher waits for
// the server, which is back-pressure instead of loss.
//
// A message delivered twice is harmless (the store de-duplicates by
// device sequence), one dropped is not.
type rescueHook struct {
	mqtt.HookBase
	srv *mqtt.Server

	mu      sync.Mutex
	live    map[string]*mqtt.Client     // established session by client ID; guarded by mu
	orphans map[string][]packets.Packet // stranded messages by client ID; guarded by mu
}

func newRescueHook(srv *mqtt.Server) *rescueHook {
	return &rescueHook{srv: srv, live: map[string]*mqtt.Client{}, orphans: map[string][]packets.Packet{}}
}

func (h *rescueHook) ID() string { return "aftercare-rescue" }

func (h *rescueHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnQosPublish, mqtt.OnQosDropped, mqtt.OnPublishDropped, mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnClientExpired}, []byte{b})
}

// OnPublishDropped writes a QoS 1 message mochi found no room for.
func (h *rescueHook) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	if pk.FixedHeader.Type == packets.Publish && pk.FixedHeader.Qos > 0 {
		h.deliver(cl, pk)
	}
}

func (h *rescueHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, _ int) {
	h.strand(cl, pk)
}

func (h *rescueHook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	h.strand(cl, pk)
}

// strand keeps pk if cl has been taken over, or delivers it to the
// session that took over, if that is established already.
func (h *rescueHook) strand(cl *mqtt.Client, pk packets.Packet) {
	if pk.FixedHeader.Type != packets.Publish || !cl.IsTakenOver() {
		return
	}
	h.mu.Lock()
	next := h.live[cl.ID]
	if next == nil || next == cl {
		h.orphans[cl.ID] = append(h.orphans[cl.ID], pk.Copy(false))
		h.mu.Unlock()
		return
	}
	h.mu.Unlock()
	h.deliver(next, pk)
}

// OnSessionEstablished runs after the CONNACK and the resend of the
// inherited inflight messages, before the client's packets are read: its
// inflight messages are exactly what it inherited and what was sent to it
// since.
func (h *rescueHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	h.mu.Lock()
	h.live[cl.ID] = cl
	stranded := h.orphans[cl.ID]
	delete(h.orphans, cl.ID)
	h.mu.Unlock()
	if len(stranded) == 0 {
		return
	}
	held := map[string]bool{}
	for _, pk := range cl.State.Inflight.GetAll(false) {
		held[pk.TopicName+"\x00"+string(pk.Payload)] = true
	}
	for _, pk := range stranded {
		if !held[pk.TopicName+"\x00"+string(pk.Payload)] {
			h.deliver(cl, pk)
		}
	}
}

// deliver writes pk to cl as a new QoS 1 message if cl holds a QoS 1
// subscription to its topic; a connection that is gone keeps it inflight
// for its next session, like any other.
func (h *rescueHook) deliver(cl *mqtt.Client, pk packets.Packet) {
	subs := h.srv.Topics.Subscribers(pk.TopicName)
	sub, subscribed := subs.Subscriptions[cl.ID]
	for _, group := range subs.Shared {
		if s, in := group[cl.ID]; in && !subscribed {
			sub, subscribed = s, true
		}
	}
	if subscribed && sub.Qos == 0 {
		return // QoS 0 promises nothing
	}
	if !subscribed {
		h.srv.Log.Warn("broker dropped a message: the session it was for is not subscribed to it now", "client", cl.ID, "topic", pk.TopicName)
		return
	}
	id, err := cl.NextPacketID()
	if err != nil {
		h.srv.Log.Warn("broker dropped a message: no packet ID free", "client", cl.ID, "topic", pk.TopicName)
		return
	}
	out := pk.Copy(false)
	out.PacketID = uint16(id)
	out.FixedHeader.Dup = false
	out.FixedHeader.Retain = false
	out.FixedHeader.Qos = 1
	if cl.State.Inflight.Set(out) {
		atomic.AddInt64(&h.srv.Info.Inflight, 1)
	}
	_ = cl.WritePacket(out) // on error the message stays inflight for the next session
}

// OnDisconnect forgets a session that ends with its connection.
func (h *rescueHook) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if expire {
		h.forget(cl)
	}
}

// OnClientExpired forgets a session kept past its connection.
func (h *rescueHook) OnClientExpired(cl *mqtt.Client) { h.forget(cl) }

func (h *rescueHook) forget(cl *mqtt.Client) {
	h.mu.Lock()
	if h.live[cl.ID] == cl {
		delete(h.live, cl.ID)
	}
	h.mu.Unlock()
}
