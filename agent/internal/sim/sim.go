// Package sim runs a fleet of simulated devices in one process: each has
// its own state directory, slot files, file-backed bootloader and
// identity, and runs the real agent. A reboot is simulated by the file
// bootloader's PowerOn followed by a fresh agent on the same directory, so
// everything an agent persists is exercised across the reboot.
//
// The simulator is used by the demo, the end-to-end tests and the fleet
// benchmarks.
package sim

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/aftercare/aftercare/agent/internal/agent"
	"github.com/aftercare/aftercare/agent/internal/boot"
	"github.com/aftercare/aftercare/agent/internal/health"
	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/protocol"
)

// A Device describes one simulated device.
type Device struct {
	Serial           string `json:"serial"` // also its directory name; required
	Model            string `json:"model"`
	HardwareRevision string `json:"hardware_revision"`
	Version          string `json:"version"` // factory version of slot A
	// Token is a one-time enrollment token; needed only until the device
	// has enrolled (its identity is then kept in its directory).
	Token string `json:"token,omitempty"`
	// FailHealth makes every post-update health check fail, to exercise
	// rollback.
	FailHealth bool `json:"fail_health,omitempty"`
}

// Options configures a simulated fleet.
type Options struct {
	ServerURL     string // required
	BootstrapRoot []byte // release repository root; required
	RolloutRoot   []byte // rollout repository root; required
	Dir           string // one subdirectory per device; required
	Devices       []Device
	BrokerURL     string        // overrides the broker URL from enrollment
	PollInterval  time.Duration // default 1 minute
	FactoryBytes  int           // size of the factory image in slot A; default 64 KiB
	HTTP          *http.Client  // required
	Log           *slog.Logger  // required
}

// A Running device of the fleet.
type Running struct {
	Device
	DeviceID string
	Dir      string
	Boot     *boot.File
}

// Fleet is a running simulated fleet.
type Fleet struct {
	Devices []Running
	wg      sync.WaitGroup
	mu      sync.Mutex
	errs    []error // guarded by mu
}

// Start enrolls every device that has no identity yet, then runs each in
// its own goroutine until ctx ends.
func Start(ctx context.Context, opts Options) (*Fleet, error) {
	if opts.ServerURL == "" || len(opts.BootstrapRoot) == 0 || len(opts.RolloutRoot) == 0 || opts.Dir == "" || opts.HTTP == nil || opts.Log == nil {
		return nil, errors.New("sim: ServerURL, BootstrapRoot, RolloutRoot, Dir, HTTP and Log are required")
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = time.Minute
	}
	if opts.FactoryBytes <= 0 {
		opts.FactoryBytes = 64 << 10
	}
	f := &Fleet{}
	for _, d := range opts.Devices {
		r, err := prepare(ctx, opts, d)
		if err != nil {
			return nil, fmt.Errorf("sim device %s: %w", d.Serial, err)
		}
		f.Devices = append(f.Devices, r)
	}
	for _, r := range f.Devices {
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			if err := run(ctx, opts, r); err != nil {
				f.mu.Lock()
				f.errs = append(f.errs, fmt.Errorf("device %s: %w", r.Serial, err))
				f.mu.Unlock()
			}
		}()
	}
	return f, nil
}

// Wait blocks until every device stopped and returns their errors.
func (f *Fleet) Wait() error {
	f.wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	return errors.Join(f.errs...)
}

// prepare creates a device's slots and boot environment on first use and
// enrolls it.
func prepare(ctx context.Context, opts Options, d Device) (Running, error) {
	if !protocol.ValidID(d.Serial) {
		return Running{}, fmt.Errorf("serial %q must be a valid directory and ID", d.Serial)
	}
	dir := filepath.Join(opts.Dir, d.Serial)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return Running{}, err
	}
	slotA := filepath.Join(dir, "slot-a.img")
	if _, err := os.Stat(slotA); errors.Is(err, os.ErrNotExist) {
		if err := os.WriteFile(slotA, factoryImage(d, opts.FactoryBytes), 0o640); err != nil {
			return Running{}, err
		}
	}
	bl, err := boot.OpenFile(filepath.Join(dir, "boot"))
	if err != nil {
		return Running{}, err
	}
	id, ok, err := agent.LoadIdentity(dir)
	if err != nil {
		return Running{}, err
	}
	if !ok {
		if d.Token == "" {
			return Running{}, errors.New("not enrolled and no enrollment token given")
		}
		id, err = agent.Enroll(ctx, opts.HTTP, opts.ServerURL, dir, protocol.EnrollRequest{
			Token: d.Token, Serial: d.Serial, Model: d.Model, HardwareRevision: d.HardwareRevision, InstalledVersion: d.Version,
		})
		if err != nil {
			return Running{}, err
		}
	}
	return Running{Device: d, DeviceID: id.DeviceID, Dir: dir, Boot: bl}, nil
}

// factoryImage is deterministic filler standing for the factory firmware.
func factoryImage(d Device, n int) []byte {
	out := make([]byte, 0, n+sha256.Size)
	seed := sha256.Sum256([]byte(d.Serial + d.Version))
	for len(out) < n {
		seed = sha256.Sum256(seed[:])
		out = append(out, seed[:]...)
	}
	return out[:n]
}

// run boots the device again and again: every ErrReboot is a power cycle.
func run(ctx context.Context, opts Options, r Running) error {
	log := opts.Log.With("serial", r.Serial)
	id, _, err := agent.LoadIdentity(r.Dir)
	if err != nil {
		return err
	}
	creds, err := agent.LoadCredentials(r.Dir, id.DeviceID)
	if err != nil {
		return err
	}
	httpc := opts.HTTP
	if strings.HasPrefix(opts.ServerURL, "https://") {
		// Each device presents its own certificate to the API.
		t := creds.HTTPTLS(nil)
		if tr, ok := opts.HTTP.Transport.(*http.Transport); ok && tr.TLSClientConfig != nil {
			t.RootCAs = tr.TLSClientConfig.RootCAs
		}
		httpc = agent.NewHTTPClientTLS(t)
	}
	for {
		slot, err := r.Boot.PowerOn()
		if err != nil {
			return err
		}
		log.Debug("power on", "slot", slot)
		checker := health.Checker{ServerURL: opts.ServerURL, HTTP: httpc, Timeout: 30 * time.Second, Retry: 500 * time.Millisecond}
		healthFn := checker.Check
		if r.FailHealth {
			healthFn = func(context.Context) error { return errors.New("simulated health failure") }
		}
		ag, err := agent.New(agent.Options{
			ServerURL: opts.ServerURL, Identity: id, Credentials: creds, BrokerURL: opts.BrokerURL,
			Model: r.Model, HardwareRevision: r.HardwareRevision, FactoryVersion: r.Version,
			BootstrapRoot: opts.BootstrapRoot, RolloutRoot: opts.RolloutRoot, StateDir: r.Dir, Boot: r.Boot,
			Slots: map[firmware.Slot]string{
				firmware.SlotA: filepath.Join(r.Dir, "slot-a.img"),
				firmware.SlotB: filepath.Join(r.Dir, "slot-b.img"),
			},
			Health: healthFn, PollInterval: opts.PollInterval, HTTP: httpc, Log: log,
		})
		if err != nil {
			return err
		}
		err = ag.Run(ctx)
		if !errors.Is(err, agent.ErrReboot) {
			return err
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}
