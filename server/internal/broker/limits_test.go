package broker_test

import (
	"bytes"
	"crypto/tls"
	"encoding/pem"
	"log/slog"
	"os"
	"testing"
	"time"

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
