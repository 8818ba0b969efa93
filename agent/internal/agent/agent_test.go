package agent

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/aftercare/aftercare/agent/internal/boot"
	"github.com/aftercare/aftercare/agent/internal/slowread"
	"github.com/aftercare/aftercare/agent/internal/update"
	"github.com/aftercare/aftercare/agent/internal/update/reposim"
	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/protocol"
)

const testDeviceID = "d7b1a2c3-0000-4000-8000-0000000000aa"

// syncBuffer is a log sink safe for the agent's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testAgent is a device running the real agent against simulated
// repositories, with file slots and the file bootloader.
type testAgent struct {
	*Agent
	dir  string
	boot *boot.File
	log  *syncBuffer
}

func newTestAgent(t *testing.T, sim *reposim.Sim, brokerURL string, limits slowread.Limits, mods ...func(*Options)) *testAgent {
	t.Helper()
	dir := t.TempDir()
	bl, err := boot.OpenFile(filepath.Join(dir, "boot"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bl.PowerOn(); err != nil {
		t.Fatal(err)
	}
	slotA := filepath.Join(dir, "slot-a.img")
	os.WriteFile(slotA, []byte("factory image"), 0o640)
	if brokerURL == "" {
		brokerURL = "tcp://" + deadAddr(t)
	}
	logs := &syncBuffer{}
	opts := Options{
		ServerURL: sim.ServerURL(), Identity: Identity{DeviceID: testDeviceID, TopicPrefix: protocol.DefaultTopicPrefix},
		BrokerURL: brokerURL, Model: "pump-x1", FactoryVersion: "1.0.0",
		BootstrapRoot: sim.Release.RootJSON(1), RolloutRoot: sim.Rollout.RootJSON(1), StateDir: dir, Boot: bl,
		Slots:        map[firmware.Slot]string{firmware.SlotA: slotA, firmware.SlotB: filepath.Join(dir, "slot-b.img")},
		PollInterval: time.Hour, HTTP: NewHTTPClient(), Limits: limits,
		Log: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, mod := range mods {
		mod(&opts)
	}
	a, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return &testAgent{Agent: a, dir: dir, boot: bl, log: logs}
}

// deadAddr is a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// reports returns the state reports in the outbox, oldest first.
func (a *testAgent) reports(t *testing.T) []protocol.StateReport {
	t.Helper()
	pending, err := a.outbox.Pending()
	if err != nil {
		t.Fatal(err)
	}
	var out []protocol.StateReport
	for _, e := range pending {
		if e.Kind == protocol.KindEvents {
			continue
		}
		r, err := protocol.ParseStateReport(e.Payload)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, *r)
	}
	return out
}

// failures returns the reasons of failed reports.
func (a *testAgent) failures(t *testing.T) []string {
	var out []string
	for _, r := range a.reports(t) {
		if r.State == protocol.StateFailed {
			out = append(out, r.Reason)
		}
	}
	return out
}

// notArmed checks the bootloader was never told to try the other slot.
func (a *testAgent) notArmed(t *testing.T) {
	t.Helper()
	b, _ := os.ReadFile(filepath.Join(a.dir, "boot", "bootenv.json"))
	if strings.Contains(string(b), `"try":"b"`) || strings.Contains(string(b), `"primary":"b"`) {
		t.Fatalf("boot environment %s: a refused image was armed", b)
	}
}

// assigned publishes release 1.1.0 and assigns it to the test device.
func assigned(t *testing.T) (*reposim.Sim, firmware.Manifest) {
	t.Helper()
	sim := reposim.New(t)
	m := sim.AddRelease("1.1.0", false, "pump-x1")
	sim.Publish(sim.Release)
	sim.Assign(testDeviceID, "rollout-1", m.TargetPath())
	sim.Publish(sim.Rollout)
	return sim, m
}

func imageFile(m firmware.Manifest) string {
	return "release/targets/pump/1.1.0/" + m.Image.SHA256 + ".image.img"
}

func TestInstallsTheAssignmentBothRepositoriesSign(t *testing.T) {
	sim, _ := assigned(t)
	a := newTestAgent(t, sim, "", slowread.Limits{})
	if err := a.check(context.Background()); !errors.Is(err, ErrReboot) {
		t.Fatalf("check() = %v, want ErrReboot", err)
	}
	if slot, err := a.boot.PowerOn(); err != nil || slot != firmware.SlotB {
		t.Fatalf("after the install the device booted %s (%v), want b", slot, err)
	}
}

func TestAttackEndlessDataImage(t *testing.T) {
	sim, m := assigned(t)
	image := sim.Release.File(strings.TrimPrefix(imageFile(m), "release/"))
	cut := make(chan struct{}, 1)
	sim.SetTamper(func(w http.ResponseWriter, r *http.Request, f string) bool {
		if f != imageFile(m) {
			return false
		}
		// The signed image, then bytes that never end (no Content-Length).
		w.Write(image)
		chunk := bytes.Repeat([]byte{0}, 32<<10)
		for {
			if _, err := w.Write(chunk); err != nil {
				cut <- struct{}{}
				return true
			}
		}
	})
	a := newTestAgent(t, sim, "", slowread.Limits{})
	if err := a.check(context.Background()); err != nil {
		t.Fatalf("check() = %v, want the assignment refused", err)
	}
	select {
	case <-cut:
	case <-time.After(30 * time.Second):
		t.Fatal("the endless download was never cut off")
	}
	fails := a.failures(t)
	if len(fails) != 1 || !strings.Contains(fails[0], "more than the signed") {
		t.Fatalf("failure reports = %q, want one naming the signed length", fails)
	}
	if !strings.Contains(a.log.String(), `"msg":"security event"`) {
		t.Fatal("no security event logged")
	}
	a.notArmed(t)
	// Refused for this rollout: the next check does not download again.
	before := sim.Requests(imageFile(m))
	a.check(context.Background())
	if sim.Requests(imageFile(m)) != before {
		t.Fatal("a refused assignment was downloaded again")
	}
}

func TestAttackMaliciousMirrorImage(t *testing.T) {
	sim, m := assigned(t)
	sim.SetTamper(func(w http.ResponseWriter, r *http.Request, f string) bool {
		if f != imageFile(m) {
			return false
		}
		b := sim.Release.File(strings.TrimPrefix(imageFile(m), "release/"))
		b[len(b)/2] ^= 0x20
		w.Write(b)
		return true
	})
	a := newTestAgent(t, sim, "", slowread.Limits{})
	if err := a.check(context.Background()); err != nil {
		t.Fatalf("check() = %v, want the assignment refused", err)
	}
	if fails := a.failures(t); len(fails) != 1 || !strings.Contains(fails[0], "sha256") {
		t.Fatalf("failure reports = %q, want one naming the digest", fails)
	}
	a.notArmed(t)
}

func TestAttackSlowRetrievalImage(t *testing.T) {
	sim, m := assigned(t)
	sim.SetTamper(func(w http.ResponseWriter, r *http.Request, f string) bool {
		if f != imageFile(m) {
			return false
		}
		reposim.Trickle(w, r, sim.Release.File(strings.TrimPrefix(imageFile(m), "release/")), 20*time.Millisecond)
		return true
	})
	// Short limits keep the test quick; the logic is that of the defaults.
	a := newTestAgent(t, sim, "", slowread.Limits{Idle: 2 * time.Second, MinRate: 1000, Window: 300 * time.Millisecond})
	err := a.check(context.Background())
	if !errors.Is(err, slowread.ErrTooSlow) {
		t.Fatalf("check(trickling image) = %v, want slow retrieval", err)
	}
	if fails := a.failures(t); len(fails) != 1 || !strings.HasPrefix(fails[0], "") || !strings.Contains(fails[0], "slow retrieval") {
		t.Fatalf("failure reports = %q, want one saying slow retrieval", fails)
	}
	if !strings.Contains(a.log.String(), `"event":"slow retrieval"`) {
		t.Fatalf("no slow-retrieval security event in the log:\n%s", a.log.String())
	}
	a.notArmed(t)
	// Slow retrieval is retried, not remembered as a refusal.
	sim.SetTamper(nil)
	if err := a.check(context.Background()); !errors.Is(err, ErrReboot) {
		t.Fatalf("check() once the network is fast again = %v, want the install", err)
	}
}

func TestEveryRefusalIsReportedAndLogged(t *testing.T) {
	tests := []struct {
		name     string
		setup    func(t *testing.T, sim *reposim.Sim)
		wantCode string
	}{
		{"expired-timestamp", func(t *testing.T, sim *reposim.Sim) {
			sim.Publish(sim.Rollout, reposim.PublishOptions{TimestampExpiry: -time.Minute})
		}, update.CodeExpired},
		{"release-signed-by-unknown-key", func(t *testing.T, sim *reposim.Sim) {
			sim.AddRelease("1.2.0", false, "pump-x1")
			sim.Publish(sim.Release, reposim.PublishOptions{TargetsKey: reposim.NewKey(t)})
		}, update.CodeSignature},
		{"not-in-release-repository", func(t *testing.T, sim *reposim.Sim) {
			sim.AssignRaw(testDeviceID, "rollout-2", "pump/6.6.6/image.img", 10, sim.Release.Targets.Signed.Targets["pump/1.1.0/image.img"].Hashes)
			sim.Publish(sim.Rollout)
		}, update.CodeNotSigned},
		{"wrong-model", func(t *testing.T, sim *reposim.Sim) {
			m := sim.AddRelease("1.2.0", false, "ct-scanner")
			sim.Publish(sim.Release)
			sim.Assign(testDeviceID, "rollout-2", m.TargetPath())
			sim.Publish(sim.Rollout)
		}, update.CodeModel},
		{"downgrade", func(t *testing.T, sim *reposim.Sim) {
			m := sim.AddRelease("0.9.0", false, "pump-x1")
			sim.Publish(sim.Release)
			sim.Assign(testDeviceID, "rollout-2", m.TargetPath())
			sim.Publish(sim.Rollout)
		}, update.CodeDowngrade},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sim, _ := assigned(t)
			tt.setup(t, sim)
			a := newTestAgent(t, sim, "", slowread.Limits{})
			if err := a.check(context.Background()); err != nil && !errors.Is(err, update.ErrRefused) {
				t.Fatalf("check() = %v", err)
			}
			fails := a.failures(t)
			if len(fails) != 1 || !strings.HasPrefix(fails[0], tt.wantCode+": ") {
				t.Fatalf("failure reports = %q, want one starting with %q", fails, tt.wantCode)
			}
			if logs := a.log.String(); !strings.Contains(logs, `"msg":"security event"`) || !strings.Contains(logs, `"code":"`+tt.wantCode+`"`) {
				t.Fatalf("log lacks the security event with code %q:\n%s", tt.wantCode, logs)
			}
			a.notArmed(t)
			evs := a.events(t)
			if len(evs) != 1 || evs[0].Category != protocol.CategoryIntegrity || evs[0].Severity != protocol.SeverityError || evs[0].Fields["code"] != tt.wantCode {
				t.Fatalf("security events = %+v, want one integrity error with code %q", evs, tt.wantCode)
			}
			// Checking again reports nothing new.
			a.check(context.Background())
			if again := a.failures(t); len(again) != 1 {
				t.Fatalf("the same refusal was reported %d times", len(again))
			}
			if again := a.events(t); len(again) != 1 {
				t.Fatalf("the same refusal made %d events", len(again))
			}
		})
	}
}

func TestClearedRepositoryProblemIsReported(t *testing.T) {
	sim := reposim.New(t)
	sim.Publish(sim.Rollout, reposim.PublishOptions{TimestampExpiry: -time.Minute})
	a := newTestAgent(t, sim, "", slowread.Limits{})
	a.check(context.Background())
	a.check(context.Background()) // still frozen: not reported again
	sim.Publish(sim.Rollout)
	if err := a.check(context.Background()); err != nil {
		t.Fatalf("check() after the server signs again = %v", err)
	}
	var states []protocol.State
	for _, r := range a.reports(t) {
		states = append(states, r.State)
	}
	if want := []protocol.State{protocol.StateFailed, protocol.StateIdle}; !slicesEqual(states, want) {
		t.Fatalf("reports %v, want %v", states, want)
	}
}

func slicesEqual[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// startBroker runs an in-process MQTT broker that lets everyone in, so the
// test can publish forged hints.
func startBroker(t *testing.T) (*mqtt.Server, string) {
	t.Helper()
	srv := mqtt.New(&mqtt.Options{InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
	if err := srv.AddHook(new(allowAll), nil); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.AddListener(listeners.NewNet("tcp", ln)); err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	t.Cleanup(func() { srv.Close() })
	return srv, "tcp://" + ln.Addr().String()
}

func TestAttackForgedAndReplayedHints(t *testing.T) {
	sim := reposim.New(t)
	m := sim.AddRelease("0.9.0", false, "pump-x1") // older than what the device runs
	sim.Publish(sim.Release)
	sim.Assign(testDeviceID, "rollout-1", m.TargetPath())
	sim.Publish(sim.Rollout)
	refreshed := make(chan struct{}, 64)
	sim.SetTamper(func(w http.ResponseWriter, r *http.Request, f string) bool {
		if f == "rollout/metadata/timestamp.json" {
			refreshed <- struct{}{}
		}
		return false
	})
	broker, brokerURL := startBroker(t)
	// What the device reports reaches the broker (and leaves the outbox).
	var mu sync.Mutex
	delivered := map[uint64]protocol.StateReport{}
	err := broker.Subscribe(protocol.DeviceTopic(protocol.DefaultTopicPrefix, testDeviceID, protocol.KindState), 1,
		func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
			if r, err := protocol.ParseStateReport(pk.Payload); err == nil {
				mu.Lock()
				delivered[r.Seq] = *r
				mu.Unlock()
			}
		})
	if err != nil {
		t.Fatal(err)
	}
	a := newTestAgent(t, sim, brokerURL, slowread.Limits{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer cancel()
	wait := func(what string) {
		t.Helper()
		select {
		case <-refreshed:
		case err := <-done:
			t.Fatalf("the agent stopped: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatalf("no refresh after %s", what)
		}
	}
	wait("start")
	topic := protocol.DeviceTopic(protocol.DefaultTopicPrefix, testDeviceID, protocol.KindHint)
	// The subscription exists once the device's session is in the broker.
	deadline := time.Now().Add(30 * time.Second)
	for !hasSubscriber(broker, topic) {
		if time.Now().After(deadline) {
			t.Fatal("the device never subscribed to its hints")
		}
		time.Sleep(10 * time.Millisecond)
	}
	valid := []byte(`{"v":1,"time":"2020-01-01T00:00:00Z","reason":"rollout"}`)
	for _, payload := range [][]byte{
		valid, valid, valid, // replayed
		[]byte(`{"v":1,"time":"2020-01-01T00:00:00Z","reason":"install pump/6.6.6/image.img now","target":"pump/6.6.6/image.img"}`),
		[]byte("not json at all"),
	} {
		if err := broker.Publish(topic, payload, false, 1); err != nil {
			t.Fatal(err)
		}
	}
	wait("a forged hint")
	// Stop the agent: every report it made is now delivered or queued.
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run() = %v", err)
	}
	a.notArmed(t)
	mu.Lock()
	for _, r := range a.reports(t) {
		delivered[r.Seq] = r
	}
	reports := delivered
	mu.Unlock()
	var fails []string
	for _, r := range reports {
		if r.State == protocol.StateDownloading {
			t.Fatalf("a hint made the device download: %+v", r)
		}
		if r.State == protocol.StateFailed {
			fails = append(fails, r.Reason)
		}
	}
	if len(fails) != 1 || !strings.HasPrefix(fails[0], update.CodeDowngrade) {
		t.Fatalf("failure reports = %q, want the one downgrade refusal, not repeated per hint", fails)
	}
	if !strings.Contains(a.log.String(), "malformed hint ignored") {
		t.Fatal("the malformed hint was not logged")
	}
}

// allowAll lets every client connect, publish and subscribe: the forger
// is a client of the broker like any other.
type allowAll struct{ mqtt.HookBase }

func (*allowAll) ID() string { return "allow-all" }
func (*allowAll) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}
func (*allowAll) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }
func (*allowAll) OnACLCheck(*mqtt.Client, string, bool) bool              { return true }

func hasSubscriber(s *mqtt.Server, topic string) bool {
	return len(s.Topics.Subscribers(topic).Subscriptions) > 0
}
