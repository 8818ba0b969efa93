package broker

import (
	"bytes"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// takeoverHook delivers the QoS 1 messages that mochi strands when a
// persistent session is taken over, as the fleet server's client does on
// every reconnect.
//
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
// A message delivered twice is harmless (the store de-duplicates by
// device sequence), one dropped is not.
type takeoverHook struct {
	mqtt.HookBase
	srv *mqtt.Server

	mu      sync.Mutex
	live    map[string]*mqtt.Client     // established session by client ID; guarded by mu
	orphans map[string][]packets.Packet // stranded messages by client ID; guarded by mu
	lost    atomic.Int64                // messages no session was subscribed to take
}

func newTakeoverHook(srv *mqtt.Server) *takeoverHook {
	return &takeoverHook{srv: srv, live: map[string]*mqtt.Client{}, orphans: map[string][]packets.Packet{}}
}

func (h *takeoverHook) ID() string { return "aftercare-takeover" }

func (h *takeoverHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnQosPublish, mqtt.OnQosDropped, mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnClientExpired}, []byte{b})
}

func (h *takeoverHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, _ int) {
	h.strand(cl, pk)
}

func (h *takeoverHook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	h.strand(cl, pk)
}

// strand keeps pk if cl has been taken over, or delivers it to the
// session that took over, if that is established already.
func (h *takeoverHook) strand(cl *mqtt.Client, pk packets.Packet) {
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
func (h *takeoverHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
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

// deliver sends pk to cl as a new QoS 1 message if cl is subscribed to
// its topic; a connection that is gone keeps it inflight for its next
// session, like any other.
func (h *takeoverHook) deliver(cl *mqtt.Client, pk packets.Packet) {
	subs := h.srv.Topics.Subscribers(pk.TopicName)
	_, direct := subs.Subscriptions[cl.ID]
	shared := false
	for _, group := range subs.Shared {
		_, in := group[cl.ID]
		shared = shared || in
	}
	if !direct && !shared {
		h.lost.Add(1)
		h.srv.Log.Warn("broker dropped a message stranded by a session takeover: the new session is not subscribed", "client", cl.ID, "topic", pk.TopicName)
		return
	}
	id, err := cl.NextPacketID()
	if err != nil {
		h.lost.Add(1)
		h.srv.Log.Warn("broker dropped a message stranded by a session takeover: no packet ID free", "client", cl.ID, "topic", pk.TopicName)
		return
	}
	out := pk.Copy(false)
	out.PacketID = uint16(id)
	out.FixedHeader.Dup = false
	if cl.State.Inflight.Set(out) {
		atomic.AddInt64(&h.srv.Info.Inflight, 1)
	}
	_ = cl.WritePacket(out) // on error the message stays inflight for the next session
}

// OnDisconnect forgets a session that ends with its connection.
func (h *takeoverHook) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if expire {
		h.forget(cl)
	}
}

// OnClientExpired forgets a session kept past its connection.
func (h *takeoverHook) OnClientExpired(cl *mqtt.Client) { h.forget(cl) }

func (h *takeoverHook) forget(cl *mqtt.Client) {
	h.mu.Lock()
	if h.live[cl.ID] == cl {
		delete(h.live, cl.ID)
	}
	h.mu.Unlock()
}
