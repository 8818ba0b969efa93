package broker_test

import (
	"crypto/tls"
	"log/slog"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/aftercare/aftercare/server/internal/broker"
	"github.com/aftercare/aftercare/server/internal/deviceca"
)

// BenchmarkDeviceConnect measures a device's whole connect to the embedded
// broker (mutual TLS handshake, CONNECT, the hook's certificate check,
// CONNACK) and reports it as a ratio to a bare mutual TLS handshake with
// the same certificates measured in the same run ("x_tls_handshake").
func BenchmarkDeviceConnect(b *testing.B) {
	p := newPKI(b)
	serverTLS := &tls.Config{Certificates: []tls.Certificate{p.broker}, ClientCAs: p.ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}
	clientTLS := &tls.Config{RootCAs: p.ca.Pool(), Certificates: []tls.Certificate{p.certs["dev-a"]}, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}

	// Baseline: a TLS listener that only completes the handshake.
	ln, err := tls.Listen("tcp", "127.0.0.1:0", serverTLS)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { c.(*tls.Conn).Handshake(); c.Close() }()
		}
	}()
	const rounds = 50
	start := time.Now()
	for range rounds {
		c, err := tls.Dial("tcp", ln.Addr().String(), clientTLS)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
	handshake := time.Since(start) / rounds

	br, err := broker.Start(broker.Options{
		Listen: "127.0.0.1:0", TopicPrefix: prefix, TLS: serverTLS,
		ServerCN: deviceca.ServerCN, Devices: p.devices, Log: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		b.Fatal(err)
	}
	defer br.Close()
	b.ResetTimer()
	for range b.N {
		c := paho.NewClient(paho.NewClientOptions().AddBroker(br.URL()).SetClientID("dev-a").
			SetTLSConfig(clientTLS).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			b.Fatalf("connect: %v", tok.Error())
		}
		c.Disconnect(0)
	}
	b.StopTimer()
	perConnect := b.Elapsed() / time.Duration(b.N)
	b.ReportMetric(float64(perConnect)/float64(handshake), "x_tls_handshake")
	b.ReportMetric(float64(handshake.Microseconds()), "handshake_us")
}
