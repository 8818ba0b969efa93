package broker_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/server/internal/broker"
	"github.com/aftercare/aftercare/server/internal/deviceca"
)

// prefix is the topic prefix of the shipped Mosquitto ACL.
const prefix = protocol.DefaultTopicPrefix

// pki is a device CA made in t.TempDir() with the certificates the attack
// table uses: devices A, B and C (C is revoked during the test), the
// server's own client, the broker, and a stranger's CA issuing a
// certificate with A's name. Nothing here is a secret: the keys exist only
// for the test.
type pki struct {
	dir      string
	ca       *deviceca.CA
	mu       sync.Mutex
	issued   map[string]string // serial -> device ID; guarded by mu
	revoked  map[string]bool   // device ID; guarded by mu
	certs    map[string]tls.Certificate
	stranger tls.Certificate
	broker   tls.Certificate
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	now := time.Now()
	p := &pki{dir: t.TempDir(), issued: map[string]string{}, revoked: map[string]bool{}, certs: map[string]tls.Certificate{}}
	var err error
	if p.ca, err = deviceca.Open(p.dir, "", "", now); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"dev-a", "dev-b", "dev-c"} {
		p.certs[id] = issue(t, p.ca, id, x509.ExtKeyUsageClientAuth, nil, func(serial string) { p.issued[serial] = id })
	}
	p.certs[deviceca.ServerCN] = issue(t, p.ca, deviceca.ServerCN, x509.ExtKeyUsageClientAuth, nil, nil)
	p.broker = issue(t, p.ca, "broker", x509.ExtKeyUsageServerAuth, []string{"127.0.0.1", "localhost"}, nil)
	stranger, err := deviceca.Open(t.TempDir(), "", "", now)
	if err != nil {
		t.Fatal(err)
	}
	p.stranger = issue(t, stranger, "dev-a", x509.ExtKeyUsageClientAuth, nil, nil)
	return p
}

func issue(t testing.TB, ca *deviceca.CA, cn string, usage x509.ExtKeyUsage, hosts []string, record func(serial string)) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := ca.IssueService(cn, &key.PublicKey, usage, hosts, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if record != nil {
		record(iss.Serial)
	}
	leaf, _ := x509.ParseCertificate(iss.DER)
	return tls.Certificate{Certificate: [][]byte{iss.DER}, PrivateKey: key, Leaf: leaf}
}

// devices is the embedded broker's DeviceAuthenticator over the test PKI.
func (p *pki) devices(_ context.Context, id string, cert *x509.Certificate) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.issued[deviceca.SerialOf(cert)] == id && !p.revoked[id]
}

// crl writes the CRL of the revoked devices' certificates to path.
func (p *pki) crl(t *testing.T, path string) {
	t.Helper()
	p.mu.Lock()
	var entries []deviceca.Revoked
	for serial, id := range p.issued {
		if p.revoked[id] {
			entries = append(entries, deviceca.Revoked{Serial: serial, At: time.Now()})
		}
	}
	p.mu.Unlock()
	b, err := p.ca.CRL(entries, time.Now().UnixNano(), time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// A brokerUnderTest is the embedded broker or a Mosquitto process with the
// shipped configuration.
type brokerUnderTest struct {
	url string
	// revoke cuts a device off the way production does: the embedded
	// broker through the fleet service's callbacks, Mosquitto through the
	// CRL and a restart.
	revoke func(t *testing.T, id string)
	// clientIDReplaced: Mosquitto replaces a client ID with the
	// certificate's identity (use_username_as_clientid) instead of
	// refusing the connect.
	clientIDReplaced bool
	// willCheckedAtSend: Mosquitto accepts a connect with any will topic
	// and checks the ACL when it would publish the will; the embedded
	// broker refuses the connect.
	willCheckedAtSend bool
	// subackGrantsDenied: Mosquitto grants a SUBACK for a filter the ACL
	// denies and then delivers nothing through it; the embedded broker
	// answers 0x80.
	subackGrantsDenied bool
}

func startEmbedded(t *testing.T, p *pki) *brokerUnderTest {
	t.Helper()
	b, err := broker.Start(broker.Options{
		Listen: "127.0.0.1:0", TopicPrefix: prefix,
		TLS:      &tls.Config{Certificates: []tls.Certificate{p.broker}, ClientCAs: p.ca.Pool()},
		ServerCN: deviceca.ServerCN, Devices: p.devices,
		Log: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return &brokerUnderTest{url: b.URL(), revoke: func(t *testing.T, id string) {
		p.mu.Lock()
		p.revoked[id] = true
		p.mu.Unlock()
		b.Disconnect(id)
	}}
}

type dialOptions struct {
	cert     *tls.Certificate // nil: none
	clientID string
	will     string // will topic, or ""
	onLost   func()
}

func dial(t *testing.T, p *pki, url string, o dialOptions) (paho.Client, error) {
	t.Helper()
	tc := &tls.Config{RootCAs: p.ca.Pool(), MinVersion: tls.VersionTLS12}
	if o.cert != nil {
		tc.Certificates = []tls.Certificate{*o.cert}
	}
	po := paho.NewClientOptions().AddBroker(url).SetClientID(o.clientID).SetTLSConfig(tc).
		SetConnectTimeout(5 * time.Second).SetAutoReconnect(false).SetCleanSession(true)
	if o.will != "" {
		po.SetWill(o.will, "gone", 1, false)
	}
	if o.onLost != nil {
		po.SetConnectionLostHandler(func(paho.Client, error) { o.onLost() })
	}
	c := paho.NewClient(po)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, context.DeadlineExceeded
	}
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

// waitUntil polls cond; it waits on the broker, a separate party, and
// never paces the code under test.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestEmbeddedBrokerAttacks(t *testing.T) {
	p := newPKI(t)
	runAttacks(t, p, startEmbedded(t, p))
}

// runAttacks is the attack table both brokers must pass.
func runAttacks(t *testing.T, p *pki, b *brokerUnderTest) {
	cert := func(id string) *tls.Certificate { c := p.certs[id]; return &c }
	topic := func(id, kind string) string { return protocol.DeviceTopic(prefix, id, kind) }
	srv, err := dial(t, p, b.url, dialOptions{cert: cert(deviceca.ServerCN), clientID: "aftercare-server-test"})
	if err != nil {
		t.Fatalf("the server's own client cannot connect: %v", err)
	}
	var reports collector
	if tok := srv.Subscribe("$share/g/"+protocol.DeviceWildcard(prefix, protocol.KindState), 1, reports.handle); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("server subscribe: %v", tok.Error())
	}

	t.Run("connects", func(t *testing.T) {
		tests := []struct {
			name string
			o    dialOptions
			ok   bool
		}{
			{"device-with-its-own-id", dialOptions{cert: cert("dev-a"), clientID: "dev-a"}, true},
			{"no-certificate", dialOptions{clientID: "dev-a"}, false},
			{"certificate-from-another-ca", dialOptions{cert: &p.stranger, clientID: "dev-a"}, false},
			{"will-on-own-state-topic", dialOptions{cert: cert("dev-a"), clientID: "dev-a", will: topic("dev-a", protocol.KindState)}, true},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				c, err := dial(t, p, b.url, tt.o)
				if (err == nil) != tt.ok {
					t.Fatalf("connect = %v, want ok=%v", err, tt.ok)
				}
				if c != nil {
					c.Disconnect(0)
				}
			})
		}
	})

	t.Run("will-messages", func(t *testing.T) {
		var all collector
		if tok := srv.Subscribe(prefix+"/#", 1, all.handle); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("server subscribe: %v", tok.Error())
		}
		defer srv.Unsubscribe(prefix + "/#").Wait()
		for _, forged := range []string{topic("dev-b", protocol.KindState), topic("dev-a", protocol.KindHint), prefix + "/other"} {
			accepted := rawConnectWithWill(t, p, b.url, cert("dev-a"), "dev-a", forged, "forged-will")
			if accepted && !b.willCheckedAtSend {
				t.Errorf("connect with a will on %q accepted", forged)
			}
		}
		// Control: a will the device may send arrives once its connection
		// drops; the forged ones were dropped before it.
		if !rawConnectWithWill(t, p, b.url, cert("dev-a"), "dev-a", topic("dev-a", protocol.KindState), "own-will") {
			t.Fatal("connect with a will on the device's own state topic refused")
		}
		// The broker may hand the will to either of the server's
		// overlapping subscriptions.
		seen := func() []string { return append(all.all(), reports.all()...) }
		waitUntil(t, "the permitted will arrives", func() bool { return contains(seen(), topic("dev-a", protocol.KindState)+" own-will") })
		for _, got := range seen() {
			if strings.HasSuffix(got, " forged-will") {
				t.Fatalf("a forged will was published: %q", got)
			}
		}
	})

	t.Run("client-id-of-another-device", func(t *testing.T) {
		lost := make(chan struct{}, 1)
		devB, err := dial(t, p, b.url, dialOptions{cert: cert("dev-b"), clientID: "dev-b", onLost: func() { lost <- struct{}{} }})
		if err != nil {
			t.Fatal(err)
		}
		_, err = dial(t, p, b.url, dialOptions{cert: cert("dev-a"), clientID: "dev-b"})
		if err == nil && !b.clientIDReplaced {
			t.Fatal("A connected with B's client ID")
		}
		// Had A taken B's client ID, the broker would have ended B's
		// session; B still publishes.
		devB.Publish(topic("dev-b", protocol.KindState), 1, false, "b-still-here").Wait()
		waitUntil(t, "B's report arrives", func() bool { return contains(reports.all(), topic("dev-b", protocol.KindState)+" b-still-here") })
		select {
		case <-lost:
			t.Fatal("B lost its connection when A used B's client ID")
		default:
		}
	})

	t.Run("subscribe-to-another-device-hints", func(t *testing.T) {
		a, err := dial(t, p, b.url, dialOptions{cert: cert("dev-a"), clientID: "dev-a"})
		if err != nil {
			t.Fatal(err)
		}
		var hints collector
		for _, tt := range []struct {
			filter string
			ok     bool
		}{
			{topic("dev-b", protocol.KindHint), false},
			{prefix + "/dev/+/hint", false},
			{prefix + "/#", false},
			{"#", false},
			{topic("dev-b", protocol.KindState), false},
			{topic("dev-a", protocol.KindHint), true},
		} {
			tok := a.Subscribe(tt.filter, 1, hints.handle).(*paho.SubscribeToken)
			tok.WaitTimeout(5 * time.Second)
			granted := tok.Result()[tt.filter] != 0x80
			if granted != tt.ok && (tt.ok || !b.subackGrantsDenied) {
				t.Errorf("SUBACK for %q granted=%v, want %v", tt.filter, granted, tt.ok)
			}
		}
		srv.Publish(topic("dev-b", protocol.KindHint), 1, false, "for-b").Wait()
		srv.Publish(topic("dev-b", protocol.KindState), 1, false, "b-state").Wait()
		srv.Publish(topic("dev-a", protocol.KindHint), 1, false, "for-a").Wait()
		waitUntil(t, "A gets its own hint", func() bool { return len(hints.all()) > 0 })
		// The messages for B were published first on the same
		// connection; had A been let read them they would have come
		// first. (paho hands one message to every matching local
		// handler, so "for-a" may be counted more than once.)
		for _, got := range hints.all() {
			if got != topic("dev-a", protocol.KindHint)+" for-a" {
				t.Fatalf("device A received %q, want only its own hint", got)
			}
		}
	})

	t.Run("publish-as-another-device", func(t *testing.T) {
		forger, err := dial(t, p, b.url, dialOptions{cert: cert("dev-a"), clientID: "dev-a"})
		if err != nil {
			t.Fatal(err)
		}
		for _, forged := range []string{topic("dev-b", protocol.KindState), topic("dev-b", protocol.KindEvents), topic("dev-a", protocol.KindHint), prefix + "/other"} {
			forger.Publish(forged, 1, false, "forged").WaitTimeout(2 * time.Second)
		}
		honest, err := dial(t, p, b.url, dialOptions{cert: cert("dev-a"), clientID: "dev-a"})
		if err != nil {
			t.Fatal(err)
		}
		honest.Publish(topic("dev-a", protocol.KindState), 1, false, "genuine").Wait()
		waitUntil(t, "the genuine report arrives", func() bool { return contains(reports.all(), topic("dev-a", protocol.KindState)+" genuine") })
		for _, got := range reports.all() {
			if got == topic("dev-b", protocol.KindState)+" forged" {
				t.Fatalf("the server received a report A forged as B")
			}
		}
	})

	t.Run("revoked-device", func(t *testing.T) {
		lost := make(chan struct{}, 1)
		_, err := dial(t, p, b.url, dialOptions{cert: cert("dev-c"), clientID: "dev-c", onLost: func() { lost <- struct{}{} }})
		if err != nil {
			t.Fatalf("device C before revocation: %v", err)
		}
		b.revoke(t, "dev-c")
		select {
		case <-lost:
		case <-time.After(10 * time.Second):
			t.Fatal("the revoked device's live connection was not closed")
		}
		if _, err := dial(t, p, b.url, dialOptions{cert: cert("dev-c"), clientID: "dev-c"}); err == nil {
			t.Fatal("the revoked device connected again")
		}
		if _, err := dial(t, p, b.url, dialOptions{cert: cert("dev-a"), clientID: "dev-a"}); err != nil {
			t.Fatalf("device A after C's revocation: %v", err)
		}
	})
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// writeCert writes a certificate and its key as PEM files.
func writeCert(t *testing.T, dir, name string, c tls.Certificate) (certPath, keyPath string) {
	t.Helper()
	certPath, keyPath = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
	der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, certPath, "CERTIFICATE", c.Certificate[0])
	writePEM(t, keyPath, "PRIVATE KEY", der)
	return certPath, keyPath
}
