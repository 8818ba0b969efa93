package broker_test

import (
	"bytes"
	"crypto/tls"
	"encoding/pem"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/server/internal/broker"
	"github.com/aftercare/aftercare/server/internal/deviceca"
)

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestEmbeddedBrokerLimits checks that the packet-size and client limits
// hold: an oversized publish on the device's own topic ends its
// connection and reaches nobody, and a client past the limit is refused.
func TestEmbeddedBrokerLimits(t *testing.T) {
	p := newPKI(t)
	b, err := broker.Start(broker.Options{
		Listen: "127.0.0.1:0", TopicPrefix: prefix,
		TLS:      &tls.Config{Certificates: []tls.Certificate{p.broker}, ClientCAs: p.ca.Pool()},
		ServerCN: deviceca.ServerCN, Devices: p.devices,
		Limits: broker.Limits{MaxPacketBytes: 4 << 10, MaxClients: 2},
		Log:    slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	cert := func(id string) *tls.Certificate { c := p.certs[id]; return &c }
	srv, err := dial(t, p, b.URL(), dialOptions{cert: cert(deviceca.ServerCN), clientID: "srv"})
	if err != nil {
		t.Fatal(err)
	}
	var reports collector
	srv.Subscribe(protocol.DeviceWildcard(prefix, protocol.KindState), 1, reports.handle).Wait()
	lost := make(chan struct{}, 1)
	a, err := dial(t, p, b.URL(), dialOptions{cert: cert("dev-a"), clientID: "dev-a", onLost: func() { lost <- struct{}{} }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dial(t, p, b.URL(), dialOptions{cert: cert("dev-b"), clientID: "dev-b"}); err == nil {
		t.Error("a third client connected past MaxClients 2")
	}
	a.Publish(protocol.DeviceTopic(prefix, "dev-a", protocol.KindState), 1, false, bytes.Repeat([]byte("x"), 8<<10))
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatal("an 8 KiB packet past MaxPacketBytes 4 KiB did not end the connection")
	}
	if got := reports.all(); len(got) != 0 {
		t.Fatalf("the oversized report was delivered: %d messages", len(got))
	}
}

// TestSmallQueueLosesNothing: with a write queue of 8 packets per
// connection and a server that acknowledges only in batches, three
// devices send 60 reports at once and every one arrives: mochi would drop
// those that find the server's queue full, the rescue hook writes them.
func TestSmallQueueLosesNothing(t *testing.T) {
	const batch, perDevice = 4, 20
	p := newPKI(t)
	b, err := broker.Start(broker.Options{
		Listen: "127.0.0.1:0", TopicPrefix: prefix,
		TLS:      &tls.Config{Certificates: []tls.Certificate{p.broker}, ClientCAs: p.ca.Pool()},
		ServerCN: deviceca.ServerCN, Devices: p.devices,
		Limits: broker.Limits{ClientQueue: 8},
		Log:    slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	srvCert := p.certs[deviceca.ServerCN]
	srv := paho.NewClient(paho.NewClientOptions().AddBroker(b.URL()).SetClientID("srv").
		SetTLSConfig(&tls.Config{RootCAs: p.ca.Pool(), Certificates: []tls.Certificate{srvCert}, MinVersion: tls.VersionTLS12}).
		SetAutoAckDisabled(true).SetOrderMatters(false).SetAutoReconnect(false))
	if tok := srv.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("server connect: %v", tok.Error())
	}
	t.Cleanup(func() { srv.Disconnect(0) })
	var (
		mu   sync.Mutex
		held []paho.Message
		got  = map[string]bool{}
	)
	tok := srv.Subscribe("$share/g/"+protocol.DeviceWildcard(prefix, protocol.KindState), 1, func(_ paho.Client, m paho.Message) {
		mu.Lock()
		defer mu.Unlock()
		held = append(held, m)
		got[string(m.Payload())] = true
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	var tokens []paho.Token
	for _, id := range []string{"dev-a", "dev-b", "dev-c"} {
		cert := p.certs[id]
		d, err := dial(t, p, b.URL(), dialOptions{cert: &cert, clientID: id})
		if err != nil {
			t.Fatal(err)
		}
		for i := range perDevice {
			tokens = append(tokens, d.Publish(protocol.DeviceTopic(prefix, id, protocol.KindState), 1, false, fmt.Sprintf("%s-%d", id, i)))
		}
	}
	total := 3 * perDevice
	for {
		var acks []paho.Message
		waitUntil(t, "the server holds a batch or every message", func() bool {
			mu.Lock()
			defer mu.Unlock()
			if len(held) >= batch || len(got) == total && len(held) > 0 {
				acks, held = held, nil
				return true
			}
			return len(got) == total
		})
		for _, m := range acks {
			m.Ack()
		}
		mu.Lock()
		done := len(got) == total && len(held) == 0
		mu.Unlock()
		if done {
			break
		}
	}
	for _, tok := range tokens {
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("device publish: %v", tok.Error())
		}
	}
	if len(got) != total {
		t.Errorf("%d of %d messages arrived", len(got), total)
	}
}
