package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/aftercare/aftercare/agent/internal/update/reposim"
	"github.com/aftercare/aftercare/protocol"
)

// Goals of issue 5 for the device binary and its idle memory.
const (
	maxAgentBytes     = 12 << 20 // stripped armv7 binary
	maxOverFloorBytes = 2 << 20  // above the dependency floor
	maxIdleRSSBytes   = 15 << 20 // connected, subscribed, metadata cached
)

const mib = 1 << 20

// buildStripped builds pkg as `make agent` does (static, stripped, no cgo)
// for goarch ("arm" means armv7) and returns the binary's path.
func buildStripped(b *testing.B, dir, pkg, goarch string) string {
	b.Helper()
	out := filepath.Join(dir, filepath.Base(pkg)+"-"+goarch)
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w -buildid=", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch, "GOARM=7")
	if msg, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build %s for %s: %v\n%s", pkg, goarch, err, msg)
	}
	return out
}

func fileSize(b *testing.B, path string) int64 {
	b.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	return fi.Size()
}

// BenchmarkBinarySize reports the stripped armv7 agent's size and how far it
// is above the dependency floor (agent/internal/floor), both built in this
// run. The loop does nothing: the figures are sizes, not times.
func BenchmarkBinarySize(b *testing.B) {
	dir := b.TempDir()
	agentBin := buildStripped(b, dir, ".", "arm")
	floorBin := buildStripped(b, dir, "../../internal/floor", "arm")
	agentSize, floorSize := fileSize(b, agentBin), fileSize(b, floorBin)
	for b.Loop() {
	}
	b.ReportMetric(float64(agentSize)/mib, "agent-MiB")
	b.ReportMetric(float64(floorSize)/mib, "floor-MiB")
	b.ReportMetric(float64(agentSize-floorSize)/mib, "over-floor-MiB")
	b.ReportMetric(float64(agentSize)/float64(floorSize), "agent/floor")
	if agentSize > maxAgentBytes || agentSize-floorSize > maxOverFloorBytes {
		b.Errorf("armv7 agent is %.2f MiB, %.2f MiB above the floor; goals are at most %d MiB and %d MiB above",
			float64(agentSize)/mib, float64(agentSize-floorSize)/mib, maxAgentBytes/mib, maxOverFloorBytes/mib)
	}
}

// BenchmarkIdleRSS runs the real agent binary (built for this machine as
// `make agent` builds it) against simulated repositories and an in-process
// broker until it is connected, subscribed to its hints, has verified and
// cached both repositories' metadata and delivered its report; then reads
// its resident memory (VmRSS) from /proc. The baseline is the dependency
// floor program, idle, in the same run.
func BenchmarkIdleRSS(b *testing.B) {
	dir := b.TempDir()
	agentBin := buildStripped(b, dir, ".", "amd64")
	floorBin := buildStripped(b, dir, "../../internal/floor", "amd64")

	const deviceID = "d7b1a2c3-0000-4000-8000-0000000000bb"
	sim := reposim.New(b)
	m := sim.AddRelease("1.0.0", false, "pump-x1") // what the device runs
	sim.Publish(sim.Release)
	sim.Assign(deviceID, "rollout-1", m.TargetPath())
	sim.Publish(sim.Rollout)
	broker, brokerURL := startBroker(b)

	state := filepath.Join(dir, "state")
	os.MkdirAll(state, 0o700)
	id, _ := json.Marshal(map[string]any{"format": 1, "device_id": deviceID, "credential": "x", "site_id": "s",
		"broker_url": brokerURL, "topic_prefix": protocol.DefaultTopicPrefix})
	os.WriteFile(filepath.Join(state, "identity.json"), id, 0o600)
	os.WriteFile(filepath.Join(dir, "root.json"), sim.Release.RootJSON(1), 0o600)
	os.WriteFile(filepath.Join(dir, "rollout-root.json"), sim.Rollout.RootJSON(1), 0o600)
	os.WriteFile(filepath.Join(dir, "slot-a.img"), []byte("factory"), 0o600)
	cfg := fmt.Sprintf("server_url: %s\nstate_dir: %s\nmodel: pump-x1\nfactory_version: 1.0.0\ntrusted_root: %s\n"+
		"trusted_rollout_root: %s\nslot_a: %s\nslot_b: %s\nlog_level: warn\n",
		sim.ServerURL(), state, filepath.Join(dir, "root.json"), filepath.Join(dir, "rollout-root.json"),
		filepath.Join(dir, "slot-a.img"), filepath.Join(dir, "slot-b.img"))
	os.WriteFile(filepath.Join(dir, "agent.yaml"), []byte(cfg), 0o600)

	agent := exec.Command(agentBin, "-config", filepath.Join(dir, "agent.yaml"))
	agent.Stderr = os.Stderr
	if err := agent.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { agent.Process.Kill(); agent.Wait() })
	hints := protocol.DeviceTopic(protocol.DefaultTopicPrefix, deviceID, protocol.KindHint)
	waitUntil(b, "the agent is idle", func() bool {
		outbox, _ := filepath.Glob(filepath.Join(state, "outbox", "0*.json"))
		_, relErr := os.Stat(filepath.Join(state, "tuf", "release", "trusted", "timestamp.json"))
		_, rolErr := os.Stat(filepath.Join(state, "tuf", "rollout", "trusted", "timestamp.json"))
		return len(broker.Topics.Subscribers(hints).Subscriptions) > 0 && relErr == nil && rolErr == nil && len(outbox) == 0
	})
	agentRSS := vmRSS(b, agent.Process.Pid)

	floor := exec.Command(floorBin, "idle")
	out, _ := floor.StdoutPipe()
	if err := floor.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { floor.Process.Kill(); floor.Wait() })
	if line, _ := bufio.NewReader(out).ReadString('\n'); line != "ready\n" {
		b.Fatalf("floor idle printed %q", line)
	}
	floorRSS := vmRSS(b, floor.Process.Pid)
	for b.Loop() {
	}
	b.ReportMetric(float64(agentRSS)/mib, "idle-RSS-MiB")
	b.ReportMetric(float64(floorRSS)/mib, "floor-RSS-MiB")
	b.ReportMetric(float64(agentRSS)/float64(floorRSS), "agent/floor")
	if agentRSS > maxIdleRSSBytes {
		b.Errorf("idle agent RSS is %.1f MiB; the goal is at most %d MiB", float64(agentRSS)/mib, maxIdleRSSBytes/mib)
	}
}

// vmRSS reads a process's resident set size.
func vmRSS(b *testing.B, pid int) int64 {
	b.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb << 10
		}
	}
	b.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// waitUntil polls cond while another process works; it never paces the
// code under test.
func waitUntil(b *testing.B, what string, cond func() bool) {
	b.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startBroker runs an in-process MQTT broker that lets every client in.
func startBroker(b *testing.B) (*mqtt.Server, string) {
	b.Helper()
	srv := mqtt.New(&mqtt.Options{InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
	if err := srv.AddHook(new(allowAll), nil); err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	if err := srv.AddListener(listeners.NewNet("tcp", ln)); err != nil {
		b.Fatal(err)
	}
	go srv.Serve()
	b.Cleanup(func() { srv.Close() })
	return srv, "tcp://" + ln.Addr().String()
}

type allowAll struct{ mqtt.HookBase }

func (*allowAll) ID() string { return "allow-all" }
func (*allowAll) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}
func (*allowAll) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }
func (*allowAll) OnACLCheck(*mqtt.Client, string, bool) bool              { return true }
