package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/aftercare/aftercare/protocol"
)

// A simDevice is a lightweight simulated device for the fleet benchmark.
// It has its own key and device certificate (enrolled through
// fleet.Service.Enroll with a CSR, as a device does over HTTP), connects to
// the broker over mutual TLS with its device ID as client ID, and
// subscribes to its hint topic. On a hint it either
//   - in raw mode, publishes its state reports at once, or
//   - in rollout mode, refreshes the rollout repository's metadata over
//     HTTP as far as its own entry (timestamp, snapshot, targets, its hash
//     bin; parsed, not signature-checked), checks that the entry names the
//     release, then reports the states the real agent reports for an
//     install (downloading, verified, installed, booted, committed), each a
//     protocol.StateReport published at QoS 1 and waited for, one after
//     the other, as the agent's outbox does.
//
// What it leaves out, so the figures measure the server and the broker:
// signature checks and the release repository refresh (the agent's TUF
// client), the image download and write, the reboot, and the agent's
// on-disk outbox. The simulated devices share one HTTP connection pool,
// and while every device fetches every file, a versioned file (immutable)
// is parsed once for all: the devices' CPU is not the server's, and
// 10,000 devices parsing the 256-bin snapshot would take most of the two
// cores the server runs on.
type simDevice struct {
	id     string
	cert   tls.Certificate
	client paho.Client
	seq    uint64 // only the device's install goroutine touches it
}

// simStates are the reports of one install, in the real agent's order.
var simStates = []protocol.State{protocol.StateDownloading, protocol.StateVerified, protocol.StateInstalled, protocol.StateBooted, protocol.StateCommitted}

// newSimDevice makes a device key and the CSR it enrolls with.
func newSimDevice(id string) (*simDevice, *ecdsa.PrivateKey, string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, "", err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id}}, key)
	if err != nil {
		return nil, nil, "", err
	}
	return &simDevice{id: id}, key, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), nil
}

// simAction is what a device does on a hint.
type simAction func(ctx context.Context, d *simDevice) error

// connect opens the device's MQTT connection and subscribes to its hint
// topic; each hint runs act in its own goroutine, and its error goes to
// errs.
func (d *simDevice) connect(brokerURL string, roots *x509.CertPool, act *atomic.Pointer[simAction], errs chan<- error) error {
	hint := protocol.DeviceTopic(protocol.DefaultTopicPrefix, d.id, protocol.KindHint)
	d.client = paho.NewClient(paho.NewClientOptions().AddBroker(brokerURL).SetClientID(d.id).
		SetTLSConfig(&tls.Config{RootCAs: roots, Certificates: []tls.Certificate{d.cert}, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectTimeout(60 * time.Second).SetKeepAlive(5 * time.Minute).
		SetOrderMatters(false))
	// Like the agent, a device refused at connect (the embedded broker
	// refuses devices until the server has subscribed) tries again.
	for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		t := d.client.Connect()
		if t.WaitTimeout(90*time.Second) && t.Error() == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("device %s: connect to %s: %v", d.id, brokerURL, t.Error())
		}
	}
	t := d.client.Subscribe(hint, 1, func(_ paho.Client, m paho.Message) {
		if _, err := protocol.ParseHint(m.Payload()); err != nil {
			errs <- fmt.Errorf("device %s: hint: %w", d.id, err)
			return
		}
		a := act.Load()
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			if err := (*a)(ctx, d); err != nil {
				errs <- fmt.Errorf("device %s: %w", d.id, err)
			}
		}()
	})
	if !t.WaitTimeout(60*time.Second) || t.Error() != nil {
		return fmt.Errorf("device %s: subscribe: %v", d.id, t.Error())
	}
	return nil
}

func (d *simDevice) disconnect() {
	if d.client != nil {
		d.client.Disconnect(0)
		d.client = nil
	}
}

// report publishes one state report and waits for the broker's PUBACK.
func (d *simDevice) report(ctx context.Context, st protocol.State, running, target, version string) error {
	d.seq++
	b, err := json.Marshal(protocol.StateReport{Format: protocol.Format, Seq: d.seq, Time: time.Now().UTC(), State: st, Running: running, Target: target, Version: version})
	if err != nil {
		return err
	}
	t := d.client.Publish(protocol.DeviceTopic(protocol.DefaultTopicPrefix, d.id, protocol.KindState), 1, false, b)
	select {
	case <-t.Done():
		return t.Error()
	case <-ctx.Done():
		return fmt.Errorf("report %s: %w", st, ctx.Err())
	}
}

// install reports the states of one install, from version from to the
// release at target.
func (d *simDevice) install(ctx context.Context, from, target, version string) error {
	running := from
	for _, st := range simStates {
		if st == protocol.StateBooted {
			running = version // the device rebooted into the new slot
		}
		if err := d.report(ctx, st, running, target, version); err != nil {
			return err
		}
	}
	return nil
}

// rolloutRepo reads the server's rollout repository as a device does,
// without checking signatures.
type rolloutRepo struct {
	base   string // e.g. http://127.0.0.1:8080/tuf/rollout/metadata/
	http   *http.Client
	parsed sync.Map // versioned file name -> *parsedFile
}

func newRolloutRepo(serverURL string) *rolloutRepo {
	return &rolloutRepo{
		base: serverURL + "/tuf/rollout/metadata/",
		http: &http.Client{Timeout: time.Minute, Transport: &http.Transport{MaxConnsPerHost: 32, MaxIdleConnsPerHost: 32}},
	}
}

func (r *rolloutRepo) get(ctx context.Context, name string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.base+name, nil)
	if err != nil {
		return nil, err
	}
	res, err := r.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", name, res.Status)
	}
	return b, nil
}

// entry returns the release target path of the device's assignment: the
// TUF refresh order timestamp → snapshot → targets → the device's bin.
func (r *rolloutRepo) entry(ctx context.Context, deviceID string) (string, error) {
	b, err := r.get(ctx, "timestamp.json")
	if err != nil {
		return "", err
	}
	ts, err := new(metadata.Metadata[metadata.TimestampType]).FromBytes(b)
	if err != nil {
		return "", fmt.Errorf("timestamp: %w", err)
	}
	snap, err := fetchParsed[metadata.SnapshotType](ctx, r, fmt.Sprintf("%d.snapshot.json", ts.Signed.Meta["snapshot.json"].Version))
	if err != nil {
		return "", err
	}
	top, err := fetchParsed[metadata.TargetsType](ctx, r, fmt.Sprintf("%d.targets.json", snap.Signed.Meta["targets.json"].Version))
	if err != nil {
		return "", err
	}
	path := protocol.AssignmentPath(deviceID)
	role := metadata.TARGETS
	if d := top.Signed.Delegations; d != nil && d.SuccinctRoles != nil {
		role = d.SuccinctRoles.GetRolesForTarget(path)[0].Name
	}
	targets := top
	if role != metadata.TARGETS {
		mf, ok := snap.Signed.Meta[role+".json"]
		if !ok {
			return "", fmt.Errorf("snapshot names no %s", role)
		}
		if targets, err = fetchParsed[metadata.TargetsType](ctx, r, fmt.Sprintf("%d.%s.json", mf.Version, role)); err != nil {
			return "", err
		}
	}
	tf, ok := targets.Signed.Targets[path]
	if !ok {
		return "", fmt.Errorf("no assignment for %s in %s", deviceID, role)
	}
	c, err := protocol.ParseAssignmentCustom(*tf.Custom)
	if err != nil {
		return "", err
	}
	return c.Target, nil
}

// parsedFile is a versioned metadata file parsed once for all devices.
type parsedFile struct {
	once sync.Once
	m    any // *metadata.Metadata[T]
	err  error
}

// fetchParsed fetches a versioned metadata file and parses it, or takes
// the parse of the same file from the first device that fetched it (the
// devices that fetch it meanwhile wait for that parse).
func fetchParsed[T metadata.Roles](ctx context.Context, r *rolloutRepo, name string) (*metadata.Metadata[T], error) {
	b, err := r.get(ctx, name)
	if err != nil {
		return nil, err
	}
	v, _ := r.parsed.LoadOrStore(name, &parsedFile{})
	p := v.(*parsedFile)
	p.once.Do(func() {
		p.m, p.err = new(metadata.Metadata[T]).FromBytes(b)
		if p.err != nil {
			p.err = fmt.Errorf("%s: %w", name, p.err)
		}
	})
	if p.err != nil {
		return nil, p.err
	}
	return p.m.(*metadata.Metadata[T]), nil
}

// simFleet is a set of connected devices sharing one action.
type simFleet struct {
	devices []*simDevice
	act     atomic.Pointer[simAction]
	errs    chan error
}

func (f *simFleet) setAction(a simAction) { f.act.Store(&a) }

// connectAll connects every device, 50 handshakes at a time so 2 cores
// keep up.
func (f *simFleet) connectAll(brokerURL string, roots *x509.CertPool) error {
	var wg sync.WaitGroup
	errc := make(chan error, len(f.devices))
	sem := make(chan struct{}, 50)
	for _, d := range f.devices {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := d.connect(brokerURL, roots, &f.act, f.errs); err != nil {
				errc <- err
			}
		}()
	}
	wg.Wait()
	close(errc)
	return <-errc
}

func (f *simFleet) disconnectAll() {
	var wg sync.WaitGroup
	for _, d := range f.devices {
		wg.Add(1)
		go func() { defer wg.Done(); d.disconnect() }()
	}
	wg.Wait()
}
