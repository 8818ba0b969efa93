package report

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/aftercare/aftercare/protocol"
)

// publishTimeout bounds the wait for one PUBACK.
const publishTimeout = 30 * time.Second

// LinkOptions configures the device's MQTT connection.
type LinkOptions struct {
	BrokerURL string // required
	DeviceID  string // client ID and username; required
	// TLS is used for ssl:// (tls://, mqtts://) broker URLs: the device's
	// client certificate (its identity to the broker) and the roots that
	// verify the broker. nil: no client certificate.
	TLS         *tls.Config
	TopicPrefix string // required
	Log         *slog.Logger
}

// Link is the device's MQTT connection. It reconnects on its own; hints
// arrive on Hints. It is safe for concurrent use.
type Link struct {
	opts   LinkOptions
	client paho.Client
	hints  chan struct{}
	up     chan struct{}
}

// Connect starts connecting in the background and returns at once; a
// broker that is down only delays reports and hints.
func Connect(opts LinkOptions) (*Link, error) {
	if opts.BrokerURL == "" || !protocol.ValidID(opts.DeviceID) || opts.TopicPrefix == "" || opts.Log == nil {
		return nil, errors.New("report: BrokerURL, a valid DeviceID, TopicPrefix and Log are required")
	}
	l := &Link{opts: opts, hints: make(chan struct{}, 1), up: make(chan struct{}, 1)}
	hintTopic := protocol.DeviceTopic(opts.TopicPrefix, opts.DeviceID, protocol.KindHint)
	co := paho.NewClientOptions().
		AddBroker(opts.BrokerURL).
		SetClientID(opts.DeviceID).
		SetUsername(opts.DeviceID).
		SetTLSConfig(opts.TLS).
		SetCleanSession(false).
		SetAutoReconnect(true).
		SetConnectRetry(true).
		SetConnectRetryInterval(2 * time.Second).
		SetMaxReconnectInterval(time.Minute).
		SetKeepAlive(60 * time.Second).
		SetOnConnectHandler(func(c paho.Client) {
			t := c.Subscribe(hintTopic, 1, l.onHint)
			if t.WaitTimeout(publishTimeout) && t.Error() == nil {
				opts.Log.Debug("subscribed to hints", "topic", hintTopic)
			} else {
				opts.Log.Warn("subscribe to hints failed; polling only", "err", t.Error())
			}
			signal(l.up)
		}).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			opts.Log.Info("broker connection lost", "err", err)
		})
	l.client = paho.NewClient(co)
	l.client.Connect()
	return l, nil
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// onHint wakes the agent. The payload is checked only for form: a hint is
// never trusted, and a forged one causes nothing but an early check.
func (l *Link) onHint(_ paho.Client, m paho.Message) {
	if _, err := protocol.ParseHint(m.Payload()); err != nil {
		l.opts.Log.Warn("malformed hint ignored", "err", err)
		return
	}
	signal(l.hints)
}

// Hints delivers a value for every hint received (coalesced).
func (l *Link) Hints() <-chan struct{} { return l.hints }

// publish sends one payload with QoS 1 and waits for the broker's PUBACK.
func (l *Link) publish(ctx context.Context, kind string, payload []byte) error {
	if !l.client.IsConnectionOpen() {
		return errors.New("not connected to the broker")
	}
	t := l.client.Publish(protocol.DeviceTopic(l.opts.TopicPrefix, l.opts.DeviceID, kind), 1, false, payload)
	select {
	case <-t.Done():
		return t.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(publishTimeout):
		return fmt.Errorf("no PUBACK within %s", publishTimeout)
	}
}

// Close disconnects, giving in-flight messages a moment.
func (l *Link) Close() { l.client.Disconnect(250) }

// Deliver publishes the outbox in order until ctx ends, removing each report
// once the broker acknowledged it. It waits for the connection when it is
// down and for new reports when the outbox is empty.
func Deliver(ctx context.Context, o *Outbox, l *Link, log *slog.Logger) {
	const retry = 2 * time.Second
	for {
		sent, err := deliverPending(ctx, o, l)
		if err != nil && ctx.Err() == nil {
			log.Debug("report delivery paused", "err", err, "sent", sent)
		}
		wait := retry
		if err == nil {
			wait = time.Hour // nothing pending: wake on Notify
		}
		select {
		case <-ctx.Done():
			return
		case <-o.Notify():
		case <-l.up:
		case <-time.After(wait):
		}
	}
}

func deliverPending(ctx context.Context, o *Outbox, l *Link) (int, error) {
	pending, err := o.Pending()
	if err != nil {
		return 0, err
	}
	sent := 0
	for len(pending) > 0 {
		e := pending[0]
		kind, payload, n := protocol.KindState, e.Payload, 1
		if e.Kind == protocol.KindEvents {
			// Consecutive events go as one batch; a damaged entry is
			// dropped rather than blocking the queue forever.
			kind = protocol.KindEvents
			payload, n, err = batchEvents(l.opts.DeviceID, pending)
			if err != nil {
				l.opts.Log.Warn("outbox event dropped", "seq", e.Seq, "err", err)
				if err := o.Delivered(e.Seq); err != nil {
					return sent, err
				}
				pending = pending[1:]
				continue
			}
		}
		if err := l.publish(ctx, kind, payload); err != nil {
			return sent, err
		}
		for _, d := range pending[:n] {
			if err := o.Delivered(d.Seq); err != nil {
				return sent, err
			}
		}
		sent += n
		pending = pending[n:]
	}
	return sent, nil
}
