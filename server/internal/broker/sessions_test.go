package broker_test

import (
	"crypto/tls"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/server/internal/deviceca"
)

// TestSessionTakeoverLosesNothing reconnects the server's persistent
// session again and again while devices publish QoS 1 reports without
// pause: every report a device had acknowledged reaches the server.
// mochi stranded the reports fanned out to the old session during the
// takeover (see rescue.go).
func TestSessionTakeoverLosesNothing(t *testing.T) {
	p := newPKI(t)
	b := startEmbedded(t, p)
	const perDevice, reconnects = 600, 12
	devices := []string{"dev-a", "dev-b"}
	filter := "$share/g/" + protocol.DeviceWildcard(prefix, protocol.KindState)

	var mu sync.Mutex
	got := map[string]bool{} // guarded by mu
	handle := func(_ paho.Client, m paho.Message) {
		mu.Lock()
		got[string(m.Payload())] = true
		mu.Unlock()
	}
	connectServer := func() paho.Client {
		c := paho.NewClient(paho.NewClientOptions().AddBroker(b.url).SetClientID("aftercare-server-test").
			SetTLSConfig(&tls.Config{RootCAs: p.ca.Pool(), Certificates: []tls.Certificate{p.certs[deviceca.ServerCN]}, MinVersion: tls.VersionTLS12}).
			SetCleanSession(false).SetAutoReconnect(false).SetOrderMatters(false).SetDefaultPublishHandler(handle))
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("server connect: %v", tok.Error())
		}
		if tok := c.Subscribe(filter, 1, handle); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("server subscribe: %v", tok.Error())
		}
		return c
	}
	srv := connectServer()

	wg := publishReports(t, p, b.url, devices, perDevice, 1, "", 10*time.Second)
	for range reconnects {
		time.Sleep(20 * time.Millisecond)
		srv.Disconnect(0)
		srv = connectServer()
	}
	wg.Wait()
	want := perDevice * len(devices)
	waitUntil(t, fmt.Sprintf("all %d reports at the server", want), func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == want
	})
	srv.Disconnect(0)
}

// TestDevicesWaitForTheServer: a device is refused while no client is
// subscribed to its reports (they would be acknowledged and dropped), and
// let in once the server's client has subscribed.
func TestDevicesWaitForTheServer(t *testing.T) {
	p := newPKI(t)
	b := startEmbedded(t, p)
	a := p.certs["dev-a"]
	if _, err := dial(t, p, b.url, dialOptions{cert: &a, clientID: "dev-a"}); err == nil {
		t.Fatal("a device connected before anyone subscribed to its reports")
	}
	s := p.certs[deviceca.ServerCN]
	srv, err := dial(t, p, b.url, dialOptions{cert: &s, clientID: "aftercare-server-test"})
	if err != nil {
		t.Fatal(err)
	}
	if tok := srv.Subscribe("$share/g/"+protocol.DeviceWildcard(prefix, protocol.KindState), 1, func(paho.Client, paho.Message) {}); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("server subscribe: %v", tok.Error())
	}
	if _, err := dial(t, p, b.url, dialOptions{cert: &a, clientID: "dev-a"}); err != nil {
		t.Fatalf("a device was refused with the server subscribed: %v", err)
	}
}

// TestSlowServerLosesNothing: while the server's client reads nothing,
// devices publish far more than mochi's queue of pending writes per
// client (1,024) and the socket buffers hold; once it reads again, every
// report a device had acknowledged reaches it. mochi dropped a message
// that found the queue full (see rescue.go, OnPublishDropped).
func TestSlowServerLosesNothing(t *testing.T) {
	p := newPKI(t)
	b := startEmbedded(t, p)
	const perDevice = 3000
	devices := []string{"dev-a", "dev-b"}
	payload := strings.Repeat("x", 16<<10)

	release := make(chan struct{})
	var mu sync.Mutex
	got := map[string]bool{} // guarded by mu
	handle := func(_ paho.Client, m paho.Message) {
		<-release
		mu.Lock()
		got[strings.TrimSuffix(string(m.Payload()), payload)] = true
		mu.Unlock()
	}
	srv := paho.NewClient(paho.NewClientOptions().AddBroker(b.url).SetClientID("aftercare-server-test").
		SetTLSConfig(&tls.Config{RootCAs: p.ca.Pool(), Certificates: []tls.Certificate{p.certs[deviceca.ServerCN]}, MinVersion: tls.VersionTLS12}).
		SetCleanSession(false).SetOrderMatters(true).SetKeepAlive(time.Minute))
	if tok := srv.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("server connect: %v", tok.Error())
	}
	t.Cleanup(func() { srv.Disconnect(0) })
	if tok := srv.Subscribe("$share/g/"+protocol.DeviceWildcard(prefix, protocol.KindState), 1, handle); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("server subscribe: %v", tok.Error())
	}
	wg := publishReports(t, p, b.url, devices, perDevice, perDevice, payload, time.Minute)
	time.Sleep(2 * time.Second) // let the devices fill every queue
	close(release)
	wg.Wait()
	want := perDevice * len(devices)
	deadline := time.Now().Add(time.Minute)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server received %d of %d acknowledged reports", n, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// publishReports connects each device and has it publish n state reports,
// "<device> <i>" followed by suffix, at QoS 1, with at most inFlight of
// them awaiting their PUBACK at a time and each acknowledged within
// ackWait. The group is done when every device is.
func publishReports(t *testing.T, p *pki, url string, devices []string, n, inFlight int, suffix string, ackWait time.Duration) *sync.WaitGroup {
	t.Helper()
	var wg sync.WaitGroup
	for _, id := range devices {
		c := p.certs[id]
		dev, err := dial(t, p, url, dialOptions{cert: &c, clientID: id})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var toks []paho.Token
			for i := range n {
				toks = append(toks, dev.Publish(protocol.DeviceTopic(prefix, id, protocol.KindState), 1, false, fmt.Sprintf("%s %d", id, i)+suffix))
				if len(toks) < inFlight && i < n-1 {
					continue
				}
				for j, tok := range toks {
					if !tok.WaitTimeout(ackWait) || tok.Error() != nil {
						t.Errorf("%s publish %d: %v", id, i-len(toks)+1+j, tok.Error())
						return
					}
				}
				toks = toks[:0]
			}
		}()
	}
	return &wg
}
