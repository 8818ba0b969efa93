// Package broker runs the embedded MQTT broker (mochi-mqtt) for single-node
// installs. The fleet server does not use it directly: it connects to it
// over TCP with the same paho client it uses for an external broker, so one
// code path is tested.
//
// Access is denied unless a rule allows it:
//   - the server's own client (a username and a secret generated per
//     process) may publish and subscribe anywhere under the topic prefix;
//   - a device connects with its device ID as both client ID and username
//     and its device credential as password, and may publish only to its
//     own state topic and subscribe only to its own hint topic. A will
//     message is checked like a publish.
package broker

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/aftercare/aftercare/protocol"
)

// maxPacketBytes bounds every MQTT packet; device payloads are at most
// protocol.MaxPayloadBytes.
const maxPacketBytes = 256 << 10 // 256 KiB

// A DeviceAuthenticator checks a device's credential and returns false for
// an unknown device or a wrong credential.
type DeviceAuthenticator func(ctx context.Context, deviceID, credential string) bool

// Options configures the embedded broker.
type Options struct {
	Listen         string // TCP address, e.g. "127.0.0.1:1884"; required
	TopicPrefix    string // required
	ServerUsername string // the fleet server's own client; required
	ServerPassword string // required
	Devices        DeviceAuthenticator
	Log            *slog.Logger // required
}

// Broker is a running embedded broker.
type Broker struct {
	srv  *mqtt.Server
	addr net.Addr
}

// Start starts the broker listening on opts.Listen.
func Start(opts Options) (*Broker, error) {
	if opts.Listen == "" || opts.TopicPrefix == "" || opts.ServerUsername == "" || opts.ServerPassword == "" || opts.Devices == nil || opts.Log == nil {
		return nil, errors.New("broker: Listen, TopicPrefix, server credentials, Devices and Log are required")
	}
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = maxPacketBytes
	srv := mqtt.New(&mqtt.Options{
		Capabilities: caps,
		Logger:       opts.Log.With("component", "broker"),
	})
	if err := srv.AddHook(&authHook{opts: opts}, nil); err != nil {
		return nil, err
	}
	// Listen here rather than in mochi so a ":0" address reports its port.
	ln, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		return nil, fmt.Errorf("broker: listen on %s: %w", opts.Listen, err)
	}
	tcp := listeners.NewNet("tcp", ln)
	if err := srv.AddListener(tcp); err != nil {
		ln.Close()
		return nil, err
	}
	if err := srv.Serve(); err != nil {
		return nil, fmt.Errorf("broker: serve: %w", err)
	}
	return &Broker{srv: srv, addr: ln.Addr()}, nil
}

// Addr is the address the broker listens on.
func (b *Broker) Addr() net.Addr { return b.addr }

// URL is the broker's address as a paho URL, e.g. "tcp://127.0.0.1:1884".
func (b *Broker) URL() string { return "tcp://" + b.addr.String() }

// Close stops the broker and disconnects every client.
func (b *Broker) Close() error { return b.srv.Close() }

type authHook struct {
	mqtt.HookBase
	opts Options
}

func (h *authHook) ID() string { return "aftercare-auth" }

func (h *authHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck}, []byte{b})
}

func (h *authHook) isServer(cl *mqtt.Client) bool {
	return string(cl.Properties.Username) == h.opts.ServerUsername
}

func (h *authHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	user := string(pk.Connect.Username)
	pass := string(pk.Connect.Password)
	if user == h.opts.ServerUsername {
		return subtle.ConstantTimeCompare([]byte(pass), []byte(h.opts.ServerPassword)) == 1
	}
	// A device's client ID is its identity, so no device can take over
	// another's session by choosing its client ID.
	if !protocol.ValidID(user) || pk.Connect.ClientIdentifier != user {
		return false
	}
	if !h.opts.Devices(context.Background(), user, pass) {
		return false
	}
	if pk.Connect.WillFlag && !h.deviceMayWrite(user, pk.Connect.WillTopic) {
		h.opts.Log.Warn("broker refused a will message outside the device's subtree", "device_id", user, "topic", pk.Connect.WillTopic)
		return false
	}
	return true
}

func (h *authHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if h.isServer(cl) {
		return strings.HasPrefix(topic, h.opts.TopicPrefix+"/") ||
			strings.HasPrefix(topic, "$share/") && strings.Contains(topic, "/"+h.opts.TopicPrefix+"/")
	}
	device := string(cl.Properties.Username)
	if write {
		return h.deviceMayWrite(device, topic)
	}
	return topic == protocol.DeviceTopic(h.opts.TopicPrefix, device, protocol.KindHint)
}

func (h *authHook) deviceMayWrite(device, topic string) bool {
	return topic == protocol.DeviceTopic(h.opts.TopicPrefix, device, protocol.KindState)
}
