package install_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aftercare/aftercare/agent/internal/boot"
	"github.com/aftercare/aftercare/agent/internal/download"
	"github.com/aftercare/aftercare/agent/internal/install"
	"github.com/aftercare/aftercare/firmware"
)

// rssChildEnv selects the child mode of the test binary that installs one
// image and prints its peak RSS.
const rssChildEnv = "AFTERCARE_INSTALL_RSS_CHILD"

// bench1GiBEnv enables the 1 GiB peak-RSS measurement (1 GiB of disk for
// the raw image, its compressed form and the slot, and a minute or so).
const bench1GiBEnv = "AFTERCARE_BENCH_1GIB"

// benchImage is a firmware-like raw image and its zstd form on disk.
type benchImage struct {
	raw, stored string
	img         firmware.Image
}

// makeBenchImage writes n bytes of firmware-like content to dir and
// compresses it with firmware.Encoder (frames of firmware.FrameBytes).
func makeBenchImage(b *testing.B, dir string, n int64) benchImage {
	b.Helper()
	bi := benchImage{raw: filepath.Join(dir, "raw.img"), stored: filepath.Join(dir, "image.zst")}
	raw, err := os.Create(bi.raw)
	if err != nil {
		b.Fatal(err)
	}
	stored, err := os.Create(bi.stored)
	if err != nil {
		b.Fatal(err)
	}
	enc, err := firmware.Encoder(firmware.CompressionZstd, stored)
	if err != nil {
		b.Fatal(err)
	}
	bw := bufio.NewWriterSize(io.MultiWriter(raw, enc), 1<<20)
	if err := writeFirmwareLike(bw, n, 42); err != nil {
		b.Fatal(err)
	}
	if err := bw.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := enc.Close(); err != nil {
		b.Fatal(err)
	}
	if err := raw.Close(); err != nil {
		b.Fatal(err)
	}
	if err := stored.Close(); err != nil {
		b.Fatal(err)
	}
	if bi.img, err = firmware.DescribeImage(bi.stored, firmware.CompressionZstd); err != nil {
		b.Fatal(err)
	}
	return bi
}

// serveFile serves path with Range support.
func serveFile(b *testing.B, path string) *httptest.Server {
	b.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := os.Open(path)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer f.Close()
		http.ServeContent(w, r, "image.zst", time.Time{}, f)
	}))
	b.Cleanup(srv.Close)
	return srv
}

// timeTool runs a baseline tool and returns its duration.
func timeTool(b *testing.B, name string, args ...string) time.Duration {
	b.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		b.Skipf("baseline tool %s is not installed (apt-get install %s); the install throughput has nothing to be compared with", name, name)
	}
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer devnull.Close()
	cmd := exec.Command(path, args...)
	cmd.Stdout = devnull
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		b.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, stderr.String())
	}
	return time.Since(start)
}

// BenchmarkInstall installs a 256 MiB firmware-like zstd image from a
// local HTTP server into a file slot (decode, both hashes, write,
// checkpoints, fsync) and compares its throughput with the serial bound of
// the three steps done by the usual tools on the same data, measured in
// the same run: 1/(1/openssl dgst -sha256 + 1/zstd -dc + 1/dd conv=fsync).
// The read-back is timed apart. Peak RSS comes from a child process doing
// the same install (and, with AFTERCARE_BENCH_1GIB=1, a 1 GiB one).
func BenchmarkInstall(b *testing.B) {
	const size = 256 << 20
	dir := b.TempDir()
	bi := makeBenchImage(b, dir, size)
	mb := float64(bi.img.RawLength) / (1 << 20)

	// Baseline, on the same data.
	tSSL := timeTool(b, "openssl", "dgst", "-sha256", bi.raw)
	tZstd := timeTool(b, "zstd", "-dc", "-q", bi.stored)
	tDD := timeTool(b, "dd", "if="+bi.raw, "of="+filepath.Join(dir, "dd.out"), "bs=1M", "conv=fsync", "status=none")
	os.Remove(filepath.Join(dir, "dd.out"))
	serial := 1 / (tSSL.Seconds()/mb + tZstd.Seconds()/mb + tDD.Seconds()/mb) // MiB/s

	srv := serveFile(b, bi.stored)
	dev := filepath.Join(dir, "device")
	bl, err := boot.OpenFile(filepath.Join(dev, "boot"))
	if err != nil {
		b.Fatal(err)
	}
	bl.PowerOn()
	var written, verified time.Time
	inst, err := install.New(install.Options{
		Boot: bl, Slots: slotPaths(dev), Dir: dev, Log: slog.New(slog.DiscardHandler),
		Hook: func(p install.Point) {
			switch p {
			case install.PointWritten:
				written = time.Now()
			case install.PointVerified:
				verified = time.Now()
			}
		},
	}, "1.0.0")
	if err != nil {
		b.Fatal(err)
	}
	job := install.Job{RolloutID: "bench", Target: "pump/2.0.0/image.zst", Version: "2.0.0", Image: bi.img}
	src := download.Source{HTTP: &http.Client{Timeout: 10 * time.Minute}, URL: srv.URL, Length: bi.img.Length}
	var tInstall, tReadBack time.Duration
	n := 0
	b.SetBytes(bi.img.RawLength)
	for b.Loop() {
		os.Remove(slotPaths(dev)[firmware.SlotB]) // a fresh file, like dd's
		start := time.Now()
		if _, err := inst.Install(context.Background(), src.Open, job); err != nil {
			b.Fatal(err)
		}
		tInstall += written.Sub(start)
		tReadBack += verified.Sub(written)
		n++
		if err := inst.Abandon(); err != nil { // so the next iteration does not resume
			b.Fatal(err)
		}
	}
	rate := mb / (tInstall.Seconds() / float64(n))
	b.ReportMetric(rate, "install-MiB/s")
	b.ReportMetric(mb/(tReadBack.Seconds()/float64(n)), "readback-MiB/s")
	b.ReportMetric(serial, "serial-bound-MiB/s")
	b.ReportMetric(rate/serial, "x-serial-bound")
	b.Logf("install %.0f MiB/s (read-back apart: %.0f MiB/s); openssl %.0f, zstd -dc %.0f, dd conv=fsync %.0f MiB/s; serial bound %.0f MiB/s; ratio %.2f",
		rate, mb/(tReadBack.Seconds()/float64(n)), mb/tSSL.Seconds(), mb/tZstd.Seconds(), mb/tDD.Seconds(), serial, rate/serial)

	b.ReportMetric(peakRSS(b, dev, srv.URL, job), "peak-RSS-MiB")
	if os.Getenv(bench1GiBEnv) != "" {
		big := filepath.Join(dir, "1gib")
		os.MkdirAll(big, 0o755)
		os.Remove(bi.raw)
		bigImg := makeBenchImage(b, big, 1<<30)
		os.Remove(bigImg.raw)
		bigSrv := serveFile(b, bigImg.stored)
		bigJob := install.Job{RolloutID: "bench", Target: "pump/3.0.0/image.zst", Version: "3.0.0", Image: bigImg.img}
		b.ReportMetric(peakRSS(b, filepath.Join(big, "device"), bigSrv.URL, bigJob), "peak-RSS-1GiB-MiB")
	}
}

// rssSpec is what the parent tells the RSS child.
type rssSpec struct {
	Dir string      `json:"dir"`
	URL string      `json:"url"`
	Job install.Job `json:"job"`
}

// peakRSS installs job in a child process and returns its peak RSS in MiB.
func peakRSS(b *testing.B, dir, url string, job install.Job) float64 {
	b.Helper()
	os.RemoveAll(dir)
	spec, _ := json.Marshal(rssSpec{Dir: dir, URL: url, Job: job})
	cmd := selfCommand("-test.run=^TestInstallRSSChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), rssChildEnv+"="+string(spec))
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("RSS child: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM-kB "); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb / 1024
		}
	}
	b.Fatalf("RSS child printed no VmHWM:\n%s", out)
	return 0
}

// TestInstallRSSChild is the child of peakRSS; it does nothing in a normal
// run.
func TestInstallRSSChild(t *testing.T) {
	env := os.Getenv(rssChildEnv)
	if env == "" {
		return
	}
	var spec rssSpec
	if err := json.Unmarshal([]byte(env), &spec); err != nil {
		t.Fatal(err)
	}
	bl, err := boot.OpenFile(filepath.Join(spec.Dir, "boot"))
	if err != nil {
		t.Fatal(err)
	}
	bl.PowerOn()
	inst, err := install.New(install.Options{Boot: bl, Slots: slotPaths(spec.Dir), Dir: spec.Dir, Log: slog.New(slog.DiscardHandler)}, "1.0.0")
	if err != nil {
		t.Fatal(err)
	}
	src := download.Source{HTTP: &http.Client{Timeout: 30 * time.Minute}, URL: spec.URL, Length: spec.Job.Image.Length}
	if _, err := inst.Install(context.Background(), src.Open, spec.Job); err != nil {
		t.Fatal(err)
	}
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			fmt.Printf("VmHWM-kB %s\n", strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	os.Remove(slotPaths(spec.Dir)[firmware.SlotB])
}
