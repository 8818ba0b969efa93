// Package broker runs the embedded MQTT broker (mochi-mqtt) for single-node
// installs. The fleet server does not use it directly: it connects to it
// over TLS with the same paho client it uses for an external broker, so one
// code path is tested.
//
// Every client connects over TLS with a client certificate the device CA
// signed (mutual TLS); the identity is the certificate's subject CN, never
// a name the client chooses. The hook denies whatever no rule allows:
//   - the server's own client (CN deviceca.ServerCN, which no device ID can
//     equal) may publish and subscribe anywhere under the topic prefix,
//     shared subscriptions included;
//   - a device (CN = device ID) must use its device ID as client ID, and
//     its certificate must be current (Options.Devices: issued to it, not
//     revoked). It may publish only in its own subtree, on
//     {prefix}/dev/{id}/state and .../events (not on its hint topic), and
//     subscribe only to its own hint topic;
//   - a will message is checked like a publish at connect: mochi publishes
//     a will without asking the ACL hook, so a connect with a will topic
//     the client may not write is refused;
//   - a device is refused ("server unavailable") while no client holds a
//     subscription to its state topic. An MQTT broker acknowledges a QoS 1
//     publish to the device and then delivers it only to the subscriptions
//     that exist at that moment: with none, the message is dropped, and the
//     device has already deleted it from its outbox. A broker that has just
//     started (its sessions are in memory) has none until the fleet
//     server's client has subscribed; devices retry their connect.
//
// Limits: packet size, connected clients, inflight messages, receive
// maximum and session expiry are bounded (Limits); mochi's defaults are
// unbounded. Each connection's outbound queue is small (Limits.ClientQueue),
// since every idle device pays for its own; a QoS 1 message that finds a
// subscriber's queue full, which mochi would drop after acknowledging it
// to the device, is written by the rescue hook instead (rescue.go).
package broker

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/aftercare/aftercare/protocol"
)

// authTimeout bounds the check of one device's certificate at connect.
const authTimeout = 10 * time.Second

// A DeviceAuthenticator checks a device's verified client certificate and
// returns false for an unknown or revoked device or a certificate not
// issued to it.
type DeviceAuthenticator func(ctx context.Context, deviceID string, cert *x509.Certificate) bool

// Limits bound what clients can make the broker hold.
type Limits struct {
	MaxPacketBytes   uint32        // largest MQTT packet; default 256 KiB
	MaxClients       int64         // connected clients; default 100,000
	MaxInflight      uint16        // QoS>0 messages held per client; default 65,535
	ReceiveMaximum   uint16        // concurrent QoS>0 publishes per client; default 64
	MaxSessionExpiry time.Duration // how long a disconnected session is kept; default 7 days
	// ClientQueue is the packets queued for writing to one connection,
	// the server's included; each connection allocates 8 bytes per packet
	// at connect. Default 256.
	ClientQueue int32
}

// clientReadBuffer is each connection's read buffer (mochi's default 2
// KiB, held for the connection's life). Devices send a few small packets
// at a time; a larger packet is read past the buffer, and TLS buffers
// each record itself.
const clientReadBuffer = 512

// DefaultLimits returns the limits used for zero fields.
func DefaultLimits() Limits {
	return Limits{
		MaxPacketBytes: 256 << 10, // device payloads are at most protocol.MaxPayloadBytes
		MaxClients:     100_000,
		// mochi has one cap for every client, and the server's shared
		// subscription holds every device's unacknowledged reports while
		// the ingester commits them (it acknowledges only after commit):
		// over the cap mochi drops messages the devices were already told
		// had arrived. Devices receive only their hints, so the large cap
		// lets a device hold no more than before.
		MaxInflight:      65535,
		ReceiveMaximum:   64,
		MaxSessionExpiry: 7 * 24 * time.Hour,
		// mochi's default queue of 8,192 packets costs 64 KiB per idle
		// device; a device receives only its hints.
		ClientQueue: 256,
	}
}

// Options configures the embedded broker.
type Options struct {
	Listen      string // TCP address, e.g. "127.0.0.1:8884"; required
	TopicPrefix string // required
	// TLS is the listener's configuration: the broker's certificate, and
	// ClientCAs holding the device CA; required. Start requires and
	// verifies a client certificate whatever ClientAuth says.
	TLS *tls.Config
	// ServerCN is the CN of the fleet server's own client certificate;
	// required.
	ServerCN string
	Devices  DeviceAuthenticator // required
	Limits   Limits              // zero fields take DefaultLimits
	Log      *slog.Logger        // required
}

// Broker is a running embedded broker. It is safe for concurrent use.
type Broker struct {
	srv  *mqtt.Server
	ln   *handshakeListener
	addr net.Addr
	log  *slog.Logger
	auth *authHook
}

// Start starts the broker listening on opts.Listen.
func Start(opts Options) (*Broker, error) {
	if opts.Listen == "" || opts.TopicPrefix == "" || opts.TLS == nil || opts.TLS.ClientCAs == nil || opts.ServerCN == "" || opts.Devices == nil || opts.Log == nil {
		return nil, errors.New("broker: Listen, TopicPrefix, TLS with ClientCAs, ServerCN, Devices and Log are required")
	}
	if protocol.ValidID(opts.ServerCN) {
		return nil, fmt.Errorf("broker: ServerCN %q could be a device ID; it must hold a character device IDs cannot", opts.ServerCN)
	}
	opts.Limits = withDefaults(opts.Limits)
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = opts.Limits.MaxPacketBytes
	caps.MaximumClients = opts.Limits.MaxClients
	caps.MaximumInflight = opts.Limits.MaxInflight
	caps.ReceiveMaximum = opts.Limits.ReceiveMaximum
	caps.MaximumSessionExpiryInterval = uint32(opts.Limits.MaxSessionExpiry / time.Second)
	caps.MaximumClientWritesPending = opts.Limits.ClientQueue
	log := opts.Log.With("component", "broker")
	srv := mqtt.New(&mqtt.Options{
		Capabilities:            caps,
		Logger:                  log,
		ClientNetReadBufferSize: clientReadBuffer,
	})
	auth := &authHook{opts: opts, log: log, srv: srv}
	if err := srv.AddHook(auth, nil); err != nil {
		return nil, err
	}
	if err := srv.AddHook(newRescueHook(srv), nil); err != nil {
		return nil, err
	}
	tlsConf := opts.TLS.Clone()
	tlsConf.ClientAuth = tls.RequireAndVerifyClientCert
	if tlsConf.MinVersion < tls.VersionTLS12 {
		tlsConf.MinVersion = tls.VersionTLS12
	}
	// Listen here rather than in mochi so a ":0" address reports its port.
	ln, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		return nil, fmt.Errorf("broker: listen on %s: %w", opts.Listen, err)
	}
	hl := newHandshakeListener(ln, tlsConf, log)
	tcp := listeners.NewNet("mtls", hl)
	if err := srv.AddListener(tcp); err != nil {
		ln.Close()
		return nil, err
	}
	if err := srv.Serve(); err != nil {
		return nil, fmt.Errorf("broker: serve: %w", err)
	}
	return &Broker{srv: srv, ln: hl, addr: ln.Addr(), log: log, auth: auth}, nil
}

func withDefaults(l Limits) Limits {
	d := DefaultLimits()
	if l.MaxPacketBytes == 0 {
		l.MaxPacketBytes = d.MaxPacketBytes
	}
	if l.MaxClients == 0 {
		l.MaxClients = d.MaxClients
	}
	if l.MaxInflight == 0 {
		l.MaxInflight = d.MaxInflight
	}
	if l.ReceiveMaximum == 0 {
		l.ReceiveMaximum = d.ReceiveMaximum
	}
	if l.MaxSessionExpiry == 0 {
		l.MaxSessionExpiry = d.MaxSessionExpiry
	}
	if l.ClientQueue == 0 {
		l.ClientQueue = d.ClientQueue
	}
	return l
}

// Addr is the address the broker listens on.
func (b *Broker) Addr() net.Addr { return b.addr }

// URL is the broker's address as a paho URL, e.g. "ssl://127.0.0.1:8884".
func (b *Broker) URL() string { return "ssl://" + b.addr.String() }

// Disconnect closes the connection of the device, if it is connected. The
// fleet service calls it when it revokes the device; the device's next
// connect is refused by Options.Devices.
func (b *Broker) Disconnect(deviceID string) {
	cl, ok := b.srv.Clients.Get(deviceID)
	if !ok || cl.Closed() {
		return
	}
	b.log.Warn("disconnecting a revoked device", "device_id", deviceID)
	if cl.Properties.ProtocolVersion == 5 {
		b.srv.DisconnectClient(cl, packets.ErrNotAuthorized) // [MQTT-3.14.2-1]: with a reason
		return
	}
	// MQTT 3.1.1 has no server DISCONNECT: close the connection.
	cl.Stop(packets.ErrNotAuthorized)
}

// Close stops the broker and disconnects every client. Sessions and
// the messages they hold are in memory only: see Drain.
// It first stops accepting and lets mochi take the connections already
// accepted (see handshakeListener).
func (b *Broker) Close() error {
	b.ln.quiesce(time.Second)
	return b.srv.Close()
}

// drainPoll is how often Drain looks at the broker's state.
const drainPoll = 10 * time.Millisecond

// Drain readies the broker to be closed without losing a message it has
// acknowledged to a device: it refuses devices from now on, closes their
// connections, waits until their last packets are handled, and then until
// the server's client has acknowledged every message the broker holds for
// it (the server acknowledges after commit), or ctx ends. Devices keep
// what was not acknowledged to them in their outbox and send it to the
// next broker. Call it while the server's client and what it feeds still
// run; then close them and the broker. A broker that dies without Drain
// loses the messages it acknowledged and had not yet delivered.
func (b *Broker) Drain(ctx context.Context) error {
	b.auth.draining.Store(true)
	t := time.NewTicker(drainPoll)
	defer t.Stop()
	for {
		// Close the devices' connections (again: one may have passed the
		// connect check just before draining began). A connection counts
		// in ClientsConnected until its last packet is handled, and a
		// publish acknowledged to a device may be fanned out until then.
		servers := int64(0)
		for _, cl := range b.srv.Clients.GetAll() {
			switch {
			case cl.Net.Inline:
			case identity(cl) == b.auth.opts.ServerCN:
				if !cl.Closed() {
					servers++
				}
			case !cl.Closed():
				cl.Stop(packets.ErrServerShuttingDown)
			}
		}
		if atomic.LoadInt64(&b.srv.Info.ClientsConnected) <= servers && b.serverInflight() == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("broker: drain: %w (connected clients %d, messages not acknowledged by the server %d)",
				ctx.Err(), atomic.LoadInt64(&b.srv.Info.ClientsConnected), b.serverInflight())
		case <-t.C:
		}
	}
}

// serverInflight counts the messages the server's sessions have not
// acknowledged.
func (b *Broker) serverInflight() int {
	n := 0
	for _, cl := range b.srv.Clients.GetAll() {
		if !cl.Net.Inline && identity(cl) == b.auth.opts.ServerCN {
			n += cl.State.Inflight.Len()
		}
	}
	return n
}

type authHook struct {
	mqtt.HookBase
	opts     Options
	log      *slog.Logger
	srv      *mqtt.Server
	draining atomic.Bool // set by Drain: devices are refused
}

func (h *authHook) ID() string { return "aftercare-auth" }

func (h *authHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck}, []byte{b})
}

// errNoSubscriber refuses a device's connect while nobody would receive
// its reports.
var errNoSubscriber = errors.New("no subscriber for device reports yet")

// OnConnect refuses a device while no client (the fleet server's, in
// practice) is subscribed to its state topic: see the package comment.
// Refusing the connect, rather than its publishes, keeps the messages in
// the device's outbox, which it sends once it is let in.
func (h *authHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	id := identity(cl)
	if id == h.opts.ServerCN || !protocol.ValidID(id) {
		return nil // OnConnectAuthenticate decides
	}
	if !h.draining.Load() {
		subs := h.srv.Topics.Subscribers(protocol.DeviceTopic(h.opts.TopicPrefix, id, protocol.KindState))
		if len(subs.Shared) > 0 || len(subs.Subscriptions) > 0 {
			return nil
		}
	}
	h.log.Debug("broker refused a device: no subscriber for device reports, or shutting down", "device_id", id)
	if err := h.srv.SendConnack(cl, packets.ErrServerUnavailable, false, nil); err != nil {
		return err
	}
	return errNoSubscriber
}

// peer returns the client's verified certificate, or nil. The TLS
// listener required and verified it against the device CA before the
// CONNECT packet could be read.
func peer(cl *mqtt.Client) *x509.Certificate {
	conn, ok := cl.Net.Conn.(interface{ ConnectionState() tls.ConnectionState })
	if !ok {
		return nil
	}
	st := conn.ConnectionState()
	if !st.HandshakeComplete || len(st.VerifiedChains) == 0 || len(st.PeerCertificates) == 0 {
		return nil
	}
	return st.PeerCertificates[0]
}

// identity is the client's certificate CN, or "" without a verified one.
func identity(cl *mqtt.Client) string {
	if c := peer(cl); c != nil {
		return c.Subject.CommonName
	}
	return ""
}

func (h *authHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	cert := peer(cl)
	if cert == nil {
		h.log.Warn("broker refused a client without a verified certificate", "remote", cl.Net.Remote)
		return false
	}
	id := cert.Subject.CommonName
	if id == h.opts.ServerCN {
		return true
	}
	// A device's client ID is its certificate's identity, so no device can
	// take over another's session by choosing its client ID.
	if !protocol.ValidID(id) || pk.Connect.ClientIdentifier != id {
		h.log.Warn("broker refused a client ID that is not the certificate's device ID", "device_id", id, "client_id", pk.Connect.ClientIdentifier)
		return false
	}
	// mochi's hooks carry no context; bound the store lookup instead.
	ctx, cancel := context.WithTimeout(context.Background(), authTimeout)
	defer cancel()
	if !h.opts.Devices(ctx, id, cert) {
		return false
	}
	if pk.Connect.WillFlag && !h.deviceMayWrite(id, pk.Connect.WillTopic) {
		h.log.Warn("broker refused a will message outside the device's subtree", "device_id", id, "topic", pk.Connect.WillTopic)
		return false
	}
	return true
}

func (h *authHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	id := identity(cl)
	if id == "" {
		return false
	}
	if id == h.opts.ServerCN {
		return strings.HasPrefix(topic, h.opts.TopicPrefix+"/") ||
			strings.HasPrefix(topic, "$share/") && strings.Contains(topic, "/"+h.opts.TopicPrefix+"/")
	}
	if write {
		return h.deviceMayWrite(id, topic)
	}
	return topic == protocol.DeviceTopic(h.opts.TopicPrefix, id, protocol.KindHint)
}

// deviceMayWrite allows {prefix}/dev/{device}/{kind} for the kinds a
// device sends (protocol.DeviceWritable), as deploy/mosquitto/aftercare.acl
// does.
func (h *authHook) deviceMayWrite(device, topic string) bool {
	kind, ok := strings.CutPrefix(topic, h.opts.TopicPrefix+"/dev/"+device+"/")
	return ok && protocol.DeviceWritable(kind)
}
