// Package mqttbridge connects the fleet server to the MQTT broker with paho,
// whether the broker is embedded or external: hints go out to devices, state
// reports come in.
//
// Reports arrive on a shared subscription ($share/{group}/{prefix}/dev/+/state),
// so several server replicas split the stream; security events likewise on
// .../events, handed to OnEvents with the function that acknowledges them,
// which the ingester calls after its group commit. A report is acknowledged only
// after the handler returned nil, that is after it is durable in the store;
// a report the handler rejects as malformed is acknowledged too (redelivery
// would not make it valid) and counted.
package mqttbridge

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/server/internal/problem"
)

// A Handler processes one state report payload from a device. It returns
// nil once the report is durable; a *problem.InvalidError or an error
// wrapping problem.ErrNotFound for a message that can never be accepted,
// which is acknowledged and dropped; or another error to leave the message
// unacknowledged so the broker redelivers it.
type Handler func(ctx context.Context, deviceID string, payload []byte) error

// Options configures the bridge.
type Options struct {
	BrokerURL string // e.g. "tcp://127.0.0.1:1883"; required
	ClientID  string // stable per server replica; required
	Username  string
	Password  string // empty when the broker needs none
	// TLS is used for ssl:// (and tls://, mqtts://) broker URLs: the CA
	// that signed the broker's certificate and, for a broker that takes
	// the identity from the client certificate, the server's own client
	// certificate. nil uses the system roots and no client certificate.
	TLS         *tls.Config
	TopicPrefix string // required
	ShareGroup  string // shared-subscription group; default "aftercare"
	OnState     Handler
	// OnEvents takes a message from a device's events topic; it must call
	// ack once the events are durable (or rejected for good). nil: the
	// bridge does not subscribe to events.
	OnEvents func(deviceID string, payload []byte, ack func())
	Log      *slog.Logger // required
}

// Bridge is a connected MQTT client. It is safe for concurrent use.
type Bridge struct {
	opts     Options
	client   paho.Client
	rejected atomic.Int64
}

// connectTimeout bounds the first connection; later reconnects retry forever.
const connectTimeout = 15 * time.Second

// Open connects to the broker and subscribes to device state reports (and
// events); it returns once the broker granted the subscriptions.
func Open(ctx context.Context, opts Options) (*Bridge, error) {
	if opts.BrokerURL == "" || opts.ClientID == "" || opts.TopicPrefix == "" || opts.Log == nil || opts.OnState == nil {
		return nil, errors.New("mqttbridge: BrokerURL, ClientID, TopicPrefix, OnState and Log are required")
	}
	if opts.ShareGroup == "" {
		opts.ShareGroup = "aftercare"
	}
	b := &Bridge{opts: opts}
	// The first connect's subscription result: Open returns only once the
	// broker granted it, because a broker delivers a message only to the
	// subscriptions that exist when it arrives (it has already
	// acknowledged it to the device), so a caller that lets devices in
	// when Open returns loses nothing.
	subscribed := make(chan error, 1)
	filter := "$share/" + opts.ShareGroup + "/" + protocol.DeviceWildcard(opts.TopicPrefix, protocol.KindState)
	filters := map[string]byte{filter: 1}
	if opts.OnEvents != nil {
		filters["$share/"+opts.ShareGroup+"/"+protocol.DeviceWildcard(opts.TopicPrefix, protocol.KindEvents)] = 1
	}
	co := paho.NewClientOptions().
		AddBroker(opts.BrokerURL).
		SetClientID(opts.ClientID).
		SetUsername(opts.Username).
		SetPassword(opts.Password).
		SetTLSConfig(opts.TLS).
		// A persistent session keeps QoS 1 reports queued at the broker
		// while this replica restarts.
		SetCleanSession(false).
		SetAutoReconnect(true).
		SetMaxReconnectInterval(10 * time.Second).
		SetConnectRetry(true).
		SetAutoAckDisabled(true).
		SetOrderMatters(false).
		SetKeepAlive(30 * time.Second).
		// A persistent session makes the broker resend unacknowledged
		// messages right after CONNACK, before the subscription below is
		// made again; without a default handler paho drops them unacked
		// and they stay stuck at the broker until the next reconnect.
		SetDefaultPublishHandler(b.onMessage).
		SetOnConnectHandler(func(c paho.Client) {
			// Subscribe on every connect: a broker without the session
			// (restarted, or clean) has forgotten the subscription.
			err := subscribe(c, filters, b.onMessage)
			if err != nil {
				opts.Log.Error("subscribe to device reports failed", "filters", filters, "err", err)
			} else {
				opts.Log.Info("subscribed to device reports", "filters", filters)
			}
			select {
			case subscribed <- err:
			default: // a later connect; Open has returned
			}
		}).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			opts.Log.Warn("broker connection lost", "err", err)
		})
	b.client = paho.NewClient(co)
	t := b.client.Connect()
	timeout := time.After(connectTimeout)
	select {
	case <-t.Done():
		if err := t.Error(); err != nil {
			return nil, fmt.Errorf("mqttbridge: connect to %s: %w", opts.BrokerURL, err)
		}
	case <-ctx.Done():
		b.client.Disconnect(0)
		return nil, ctx.Err()
	case <-timeout:
		b.client.Disconnect(0)
		return nil, fmt.Errorf("mqttbridge: connect to %s: no answer in %s", opts.BrokerURL, connectTimeout)
	}
	select {
	case err := <-subscribed:
		if err != nil {
			b.client.Disconnect(0)
			return nil, fmt.Errorf("mqttbridge: %s: %w", opts.BrokerURL, err)
		}
	case <-ctx.Done():
		b.client.Disconnect(0)
		return nil, ctx.Err()
	case <-timeout:
		b.client.Disconnect(0)
		return nil, fmt.Errorf("mqttbridge: subscribe at %s: no answer in %s", opts.BrokerURL, connectTimeout)
	}
	return b, nil
}

// subscribe makes the subscriptions and waits for the broker to grant
// every one (a SUBACK return code 0x80 is a refusal).
func subscribe(c paho.Client, filters map[string]byte, h paho.MessageHandler) error {
	t := c.SubscribeMultiple(filters, h)
	if !t.WaitTimeout(connectTimeout) {
		return fmt.Errorf("subscribe to device reports: no answer in %s", connectTimeout)
	}
	if err := t.Error(); err != nil {
		return fmt.Errorf("subscribe to device reports: %w", err)
	}
	st, ok := t.(*paho.SubscribeToken)
	if !ok {
		return nil
	}
	for filter, code := range st.Result() {
		if code == 0x80 {
			return fmt.Errorf("subscribe to device reports: the broker refused %q", filter)
		}
	}
	return nil
}

func (b *Bridge) onMessage(_ paho.Client, m paho.Message) {
	deviceID, kind, err := protocol.ParseDeviceTopic(b.opts.TopicPrefix, m.Topic())
	if err == nil && kind == protocol.KindEvents && b.opts.OnEvents != nil {
		b.opts.OnEvents(deviceID, m.Payload(), m.Ack)
		return
	}
	if err != nil || kind != protocol.KindState {
		b.rejected.Add(1)
		b.opts.Log.Warn("report on an unexpected topic dropped", "topic", m.Topic())
		m.Ack()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = b.opts.OnState(ctx, deviceID, m.Payload())
	switch {
	case err == nil:
		m.Ack()
	case rejected(err):
		b.rejected.Add(1)
		b.opts.Log.Warn("device report rejected", "device_id", deviceID, "err", err)
		m.Ack()
	default:
		// Not acknowledged: the broker redelivers it when this client
		// reconnects, and the store de-duplicates by sequence number.
		b.opts.Log.Error("device report not stored", "device_id", deviceID, "err", err)
	}
}

func rejected(err error) bool {
	var invalid *problem.InvalidError
	return errors.As(err, &invalid) || errors.Is(err, problem.ErrNotFound)
}

// Rejected counts the messages dropped as malformed since Open.
func (b *Bridge) Rejected() int64 { return b.rejected.Load() }

// Hint asks a device to check for its assignment now. Delivery is best
// effort: a device also polls, so a lost hint only delays.
func (b *Bridge) Hint(ctx context.Context, deviceID, reason string) error {
	payload, err := json.Marshal(protocol.Hint{Format: protocol.Format, Time: time.Now().UTC(), Reason: reason})
	if err != nil {
		return err
	}
	t := b.client.Publish(protocol.DeviceTopic(b.opts.TopicPrefix, deviceID, protocol.KindHint), 1, false, payload)
	select {
	case <-t.Done():
		return t.Error()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close disconnects, waiting up to a second for in-flight work.
func (b *Bridge) Close() {
	b.client.Disconnect(1000)
}
