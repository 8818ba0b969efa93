package ingest_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/aftercare/aftercare/internal/testenv"
	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/server/internal/broker"
	"github.com/aftercare/aftercare/server/internal/deviceca"
	"github.com/aftercare/aftercare/server/internal/ingest"
	"github.com/aftercare/aftercare/server/internal/mqttbridge"
	"github.com/aftercare/aftercare/server/internal/store"
)

const prefix = protocol.DefaultTopicPrefix

var t0 = time.Date(2026, 11, 23, 2, 0, 0, 0, time.UTC)

// fleet is a broker, a store holding enrolled devices, and how to connect
// to the broker as them or as the server: the embedded broker with mutual
// TLS (newFleet), or a shared external Mosquitto without TLS
// (newMosquittoFleet).
type fleet struct {
	ca     *deviceca.CA
	broker *broker.Broker // nil: external
	opts   broker.Options // the embedded broker's, for a restart
	url    string
	store  *store.Store
	server tls.Certificate
	// On a shared external broker, a tag keeps this test's topics, client
	// IDs and share group apart from anyone else's; "" on the embedded one.
	tag    string
	prefix string
}

// mosquittoAddr is the test machine's stock Mosquitto (no TLS, anonymous).
const mosquittoAddr = "127.0.0.1:1883"

// newMosquittoFleet uses the Mosquitto at mosquittoAddr, skipping (failing
// under CI) when it is absent. Its ACLs are tested in the broker package;
// here it carries the messages.
func newMosquittoFleet(t testing.TB, s *store.Store) *fleet {
	t.Helper()
	testenv.Need(t, "Mosquitto", mosquittoAddr, "mosquitto -d")
	b := make([]byte, 4)
	rand.Read(b)
	tag := "t" + hex.EncodeToString(b)
	return &fleet{url: "tcp://" + mosquittoAddr, store: s, tag: tag, prefix: tag + "/" + prefix}
}

func issue(t testing.TB, ca *deviceca.CA, cn string, usage x509.ExtKeyUsage, hosts []string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := ca.IssueService(cn, &key.PublicKey, usage, hosts, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(iss.DER)
	return tls.Certificate{Certificate: [][]byte{iss.DER}, PrivateKey: key, Leaf: leaf}
}

// newFleet starts a broker; the store's devices are checked at connect.
func newFleet(t testing.TB, s *store.Store) *fleet {
	t.Helper()
	ca, err := deviceca.Open(t.TempDir(), "", "", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	f := &fleet{ca: ca, store: s, server: issue(t, ca, deviceca.ServerCN, x509.ExtKeyUsageClientAuth, nil), prefix: prefix}
	brokerCert := issue(t, ca, "broker", x509.ExtKeyUsageServerAuth, []string{"127.0.0.1"})
	devices := func(ctx context.Context, id string, cert *x509.Certificate) bool {
		// The TLS layer verified the chain; the CN is the device ID.
		d, err := s.DeviceSites(ctx, []string{id})
		return err == nil && len(d) == 1 && cert.Subject.CommonName == id
	}
	f.opts = broker.Options{
		Listen: "127.0.0.1:0", TopicPrefix: prefix, ServerCN: deviceca.ServerCN, Devices: devices,
		TLS: &tls.Config{Certificates: []tls.Certificate{brokerCert}, ClientCAs: ca.Pool(), MinVersion: tls.VersionTLS12},
		Log: slog.New(slog.DiscardHandler),
	}
	if f.broker, err = broker.Start(f.opts); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.broker.Close() })
	f.url = f.broker.URL()
	f.opts.Listen = f.broker.Addr().String() // a restart keeps the address
	return f
}

// restart shuts the embedded broker and the server down as the fleet
// server's process does (Server.Shutdown: drain the broker, stop the
// server's client and ingester, close the broker) and starts both again
// on the same address, keeping nothing but the store. The devices
// reconnect by themselves.
func (f *fleet) restart(t testing.TB, ss *serverSide, opts ingest.Options) *serverSide {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := f.broker.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	ss.stop()
	f.broker.Close()
	var err error
	if f.broker, err = broker.Start(f.opts); err != nil { // newFleet's cleanup closes it
		t.Fatal(err)
	}
	return f.startServer(t, opts)
}

// forgetSession removes, once t is done, the persistent session a client
// leaves on a shared external broker (Mosquitto keeps them forever by
// default): the cleanup connects with a clean session under its ID.
// Register it before the client's own cleanup, which then runs first.
func (f *fleet) forgetSession(t testing.TB, clientID string) {
	if f.broker != nil {
		return // the embedded broker ends with the test
	}
	t.Cleanup(func() {
		c := paho.NewClient(paho.NewClientOptions().AddBroker(f.url).SetClientID(clientID).SetCleanSession(true))
		if tok := c.Connect(); tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
			c.Disconnect(0)
		}
	})
}

// tls returns the TLS configuration of a client with the certificate cert
// makes, or nil on a broker without TLS.
func (f *fleet) tls(cert func() tls.Certificate) *tls.Config {
	if f.ca == nil {
		return nil
	}
	return &tls.Config{RootCAs: f.ca.Pool(), Certificates: []tls.Certificate{cert()}, MinVersion: tls.VersionTLS12}
}

// enroll makes a site and n devices dev-0000.. in the store.
func enroll(t testing.TB, s *store.Store, siteID string, n int) []string {
	t.Helper()
	ctx := context.Background()
	if err := s.CreateSite(ctx, store.Site{ID: siteID, Name: siteID, Organisation: "org-" + siteID, CreatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-dev-%04d", siteID, i)
		tok := "tok-" + ids[i]
		if err := s.CreateEnrollmentToken(ctx, siteID, tok, t0, t0.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Enroll(ctx, tok, "cred-"+ids[i], t0, store.Device{ID: ids[i], Model: "pump-x1", InstalledVersion: "1.0.0"}); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

// serverSide is the server's MQTT client and ingester, restartable.
type serverSide struct {
	in     *ingest.Ingester
	bridge *mqttbridge.Bridge
	cancel context.CancelFunc
	done   chan struct{}
}

func (f *fleet) startServer(t testing.TB, opts ingest.Options) *serverSide {
	t.Helper()
	opts.Store, opts.Log = f.store, slog.New(slog.DiscardHandler)
	in, err := ingest.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ss := &serverSide{in: in, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(ss.done)
		in.Run(ctx)
	}()
	f.forgetSession(t, "aftercare-server-test"+f.tag)
	ss.bridge, err = mqttbridge.Open(context.Background(), mqttbridge.Options{
		BrokerURL: f.url, ClientID: "aftercare-server-test" + f.tag, TopicPrefix: f.prefix, ShareGroup: "aftercare" + f.tag,
		TLS:     f.tls(func() tls.Certificate { return f.server }),
		OnState: func(context.Context, string, []byte) error { return nil },
		OnEvents: func(deviceID string, payload []byte, ack func()) {
			in.Submit(ctx, ingest.Message{DeviceID: deviceID, Payload: payload, Ack: ack})
		},
		Log: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ss.stop)
	return ss
}

// stop disconnects the server's client and stops its ingester; whatever
// it had not acknowledged stays with the broker.
func (ss *serverSide) stop() {
	if ss.bridge != nil {
		ss.bridge.Close()
		ss.bridge = nil
	}
	ss.cancel()
	<-ss.done
}

// device is one simulated device's MQTT connection.
type device struct {
	id     string
	prefix string
	client paho.Client
}

func (f *fleet) connect(t testing.TB, id string) *device {
	t.Helper()
	f.forgetSession(t, f.tag+id)
	c := paho.NewClient(paho.NewClientOptions().AddBroker(f.url).SetClientID(f.tag + id).
		SetTLSConfig(f.tls(func() tls.Certificate { return issue(t, f.ca, id, x509.ExtKeyUsageClientAuth, nil) })).
		SetCleanSession(false).SetAutoReconnect(true).SetMaxReconnectInterval(time.Second).SetConnectTimeout(30 * time.Second))
	if tok := c.Connect(); !tok.WaitTimeout(60*time.Second) || tok.Error() != nil {
		t.Fatalf("device %s connect: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return &device{id: id, prefix: f.prefix, client: c}
}

// publish sends raw on the device's events topic and waits for the PUBACK.
func (d *device) publish(t testing.TB, payload []byte) {
	t.Helper()
	tok := d.client.Publish(protocol.DeviceTopic(d.prefix, d.id, protocol.KindEvents), 1, false, payload)
	if !tok.WaitTimeout(60*time.Second) || tok.Error() != nil {
		t.Errorf("device %s publish: %v", d.id, tok.Error())
	}
}

// deliver publishes payload as the agent's outbox does: again after a
// failed attempt, until the broker acknowledged it (a minute at most).
func (d *device) deliver(t testing.TB, payload []byte) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		tok := d.client.Publish(protocol.DeviceTopic(d.prefix, d.id, protocol.KindEvents), 1, false, payload)
		if tok.WaitTimeout(time.Until(deadline)) && tok.Error() == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("device %s: no PUBACK within a minute: %v", d.id, tok.Error())
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// batch encodes events first..first+n-1 of a device.
func batch(id string, first uint64, n int, cat protocol.Category) []byte {
	b := protocol.EventBatch{Format: protocol.EventFormat, DeviceID: id}
	for i := range n {
		seq := first + uint64(i)
		b.Events = append(b.Events, protocol.Event{
			Seq: seq, Time: t0.Add(time.Duration(seq) * time.Second), Source: protocol.SourceSyslog, Category: cat,
			Severity: protocol.SeverityNotice, Message: fmt.Sprintf("event %d of %s", seq, id),
		})
	}
	out, _ := json.Marshal(b)
	return out
}

// sendAll has every device publish perDevice events in batches of size,
// concurrently, starting at seq first.
func sendAll(t testing.TB, devs []*device, first uint64, perDevice, size int) {
	t.Helper()
	var wg sync.WaitGroup
	for _, d := range devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := first; seq < first+uint64(perDevice); seq += uint64(size) {
				d.publish(t, batch(d.id, seq, size, protocol.CategoryApp))
			}
		}()
	}
	wg.Wait()
}
