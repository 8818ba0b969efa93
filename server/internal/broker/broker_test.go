package broker_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/server/internal/broker"
)

const prefix = "aftercare/v1"

// devices and their credentials known to the test broker.
var creds = map[string]string{"dev-a": "secret-a", "dev-b": "secret-b"}

func startBroker(t *testing.T) *broker.Broker {
	t.Helper()
	b, err := broker.Start(broker.Options{
		Listen: "127.0.0.1:0", TopicPrefix: prefix, ServerUsername: "server", ServerPassword: "server-secret",
		Devices: func(_ context.Context, id, cred string) bool { return creds[id] == cred && cred != "" },
		Log:     slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func connect(t *testing.T, b *broker.Broker, clientID, user, pass string, opts ...func(*paho.ClientOptions)) (paho.Client, error) {
	t.Helper()
	o := paho.NewClientOptions().AddBroker(b.URL()).SetClientID(clientID).SetUsername(user).SetPassword(pass).SetConnectTimeout(5 * time.Second)
	for _, f := range opts {
		f(o)
	}
	c := paho.NewClient(o)
	tok := c.Connect()
	tok.WaitTimeout(5 * time.Second)
	if tok.Error() != nil {
		return nil, tok.Error()
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c, nil
}

// collector records what a subscription receives.
type collector struct {
	mu  sync.Mutex
	got []string
}

func (c *collector) handle(_ paho.Client, m paho.Message) {
	c.mu.Lock()
	c.got = append(c.got, m.Topic()+" "+string(m.Payload()))
	c.mu.Unlock()
}

func (c *collector) all() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.got...)
}

func TestDeviceConnections(t *testing.T) {
	b := startBroker(t)
	tests := []struct {
		name, clientID, user, pass string
		will                       string // will topic, or ""
		ok                         bool
	}{
		{"valid-device", "dev-a", "dev-a", "secret-a", "", true},
		{"wrong-credential", "dev-a", "dev-a", "secret-b", "", false},
		{"no-credential", "dev-a", "dev-a", "", "", false},
		{"client-id-of-another-device", "dev-b", "dev-a", "secret-a", "", false},
		{"wildcard-id", "dev+", "dev+", "x", "", false},
		{"will-on-own-state-topic", "dev-a", "dev-a", "secret-a", protocol.DeviceTopic(prefix, "dev-a", protocol.KindState), true},
		{"will-on-another-device-topic", "dev-a", "dev-a", "secret-a", protocol.DeviceTopic(prefix, "dev-b", protocol.KindState), false},
		{"server-with-wrong-secret", "srv", "server", "guess", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := connect(t, b, tt.clientID, tt.user, tt.pass, func(o *paho.ClientOptions) {
				if tt.will != "" {
					o.SetWill(tt.will, "gone", 1, false)
				}
			})
			if (err == nil) != tt.ok {
				t.Fatalf("connect = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDeviceCanOnlyReadItsOwnHints(t *testing.T) {
	b := startBroker(t)
	srv, err := connect(t, b, "srv", "server", "server-secret")
	if err != nil {
		t.Fatal(err)
	}
	a, err := connect(t, b, "dev-a", "dev-a", "secret-a")
	if err != nil {
		t.Fatal(err)
	}
	var hints collector
	for _, tt := range []struct {
		filter string
		want   byte
	}{
		{protocol.DeviceTopic(prefix, "dev-b", protocol.KindHint), 0x80},
		{prefix + "/dev/+/hint", 0x80},
		{prefix + "/#", 0x80},
		{protocol.DeviceTopic(prefix, "dev-a", protocol.KindHint), 1},
	} {
		tok := a.Subscribe(tt.filter, 1, hints.handle).(*paho.SubscribeToken)
		tok.Wait()
		if got := tok.Result()[tt.filter]; got != tt.want {
			t.Errorf("SUBACK for %q = %#x, want %#x", tt.filter, got, tt.want)
		}
	}
	srv.Publish(protocol.DeviceTopic(prefix, "dev-b", protocol.KindHint), 1, false, "for-b").Wait()
	srv.Publish(protocol.DeviceTopic(prefix, "dev-a", protocol.KindHint), 1, false, "for-a").Wait()
	waitUntil(t, "device A gets its own hint", func() bool { return len(hints.all()) > 0 })
	// The hint for B was published first; had the broker let A read it,
	// it would have arrived first. (paho hands one message to every local
	// handler whose filter matches, so "for-a" may be counted more than once.)
	for _, got := range hints.all() {
		if got != prefix+"/dev/dev-a/hint for-a" {
			t.Fatalf("device A received %q, want only its own hint", got)
		}
	}
}

func TestForgedReportIsDroppedAndTheForgerDisconnected(t *testing.T) {
	b := startBroker(t)
	srv, err := connect(t, b, "srv", "server", "server-secret")
	if err != nil {
		t.Fatal(err)
	}
	var reports collector
	srv.Subscribe("$share/g/"+protocol.DeviceWildcard(prefix, protocol.KindState), 1, reports.handle).Wait()
	forger, err := connect(t, b, "dev-a", "dev-a", "secret-a", func(o *paho.ClientOptions) { o.SetAutoReconnect(false) })
	if err != nil {
		t.Fatal(err)
	}
	forger.Publish(protocol.DeviceTopic(prefix, "dev-b", protocol.KindState), 1, false, "forged")
	// MQTT 3.1.1 cannot refuse a single QoS 1 publish: the broker drops
	// the connection instead.
	waitUntil(t, "the broker disconnects the forger", func() bool { return !forger.IsConnectionOpen() })
	honest, err := connect(t, b, "dev-a", "dev-a", "secret-a")
	if err != nil {
		t.Fatal(err)
	}
	honest.Publish(protocol.DeviceTopic(prefix, "dev-a", protocol.KindState), 1, false, "genuine").Wait()
	waitUntil(t, "the genuine report arrives", func() bool { return len(reports.all()) > 0 })
	if got := reports.all(); len(got) != 1 || got[0] != prefix+"/dev/dev-a/state genuine" {
		t.Fatalf("the server received %q, want only the genuine report", got)
	}
}
