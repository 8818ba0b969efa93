package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/aftercare/aftercare/internal/testenv"
)

// browser starts headless Chromium for t, or skips (fails under CI) when
// it is not installed.
func browser(t *testing.T) context.Context {
	t.Helper()
	path := os.Getenv("AFTERCARE_CHROMIUM")
	if path == "" {
		for _, p := range []string{"chromium", "chromium-browser", "google-chrome"} {
			if found, err := exec.LookPath(p); err == nil {
				path = found
				break
			}
		}
	}
	if path == "" {
		testenv.Missing(t, "Chromium is not installed; install it with: apt-get install -y chromium")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox, // the tests run as root
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start Chromium %s: %v", path, err)
	}
	return ctx
}

// run runs browser actions with a hang detector.
func run(t *testing.T, ctx context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, rolloutTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatalf("console: %s: %v", what, err)
	}
}

// textOf reads the visible text of the first element matching sel, or ""
// when there is none. It reads in one step inside the page, because the
// page replaces its tables on every refresh and a node found by one
// protocol call may be gone by the next.
func textOf(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, rolloutTimeout)
	defer cancel()
	q, _ := json.Marshal(sel)
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`(document.querySelector(`+string(q)+`) || {}).innerText || ""`))
	if err != nil {
		t.Fatalf("console: read %s: %v", sel, err)
	}
	return s
}

// TestConsoleWatchesARollout drives the web console in headless Chromium as
// a person would: a wrong token is refused, the patch-state page follows a
// rollout without reloading until both sites run the new version, a site
// and a device can be opened, and signing out forgets the token.
func TestConsoleWatchesARollout(t *testing.T) {
	ctx := browser(t)
	s := startServer(t, serverOptions{})
	f := enroll(t, s, twoSites)
	runSim(t, s, f, "", time.Minute)
	waitReported(t, s, f)

	res, err := http.Get(s.url + "/console/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if csp := res.Header.Get("Content-Security-Policy"); res.StatusCode != http.StatusOK || !strings.Contains(csp, "script-src 'self'") {
		t.Fatalf("GET /console/ = %s with CSP %q, want 200 with a self-only script policy", res.Status, csp)
	}

	run(t, ctx, "sign in with a wrong token",
		chromedp.Navigate(s.url+"/console/"),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("token"), "not-the-token"),
		chromedp.Click(chromedp.CSS("#signin-form button")),
		chromedp.WaitVisible(chromedp.ID("signin-error")),
	)
	waitFor(t, 10*time.Second, "the wrong token is refused", func() bool {
		return strings.Contains(textOf(t, ctx, "#signin-error"), "not accepted")
	})

	run(t, ctx, "sign in",
		chromedp.SetValue(chromedp.ID("token"), s.token),
		chromedp.Click(chromedp.CSS("#signin-form button")),
		chromedp.WaitVisible(chromedp.ID("sites")),
	)
	for name := range twoSites {
		if got := textOf(t, ctx, "#sites"); !strings.Contains(got, name) {
			t.Fatalf("patch-state page = %q, want site %q", got, name)
		}
	}

	rel := publish(t, s, "1.1.0")
	runCLI(t, s.cliEnv(), "rollout", "create", "--release", rel)
	// The page refreshes itself; nobody reloads it.
	waitFor(t, rolloutTimeout, "the console shows both sites on 1.1.0", func() bool {
		got := textOf(t, ctx, "#sites")
		return strings.Contains(got, "1.1.0×2") && strings.Contains(got, "1.1.0×1") && !strings.Contains(got, "1.0.0")
	})

	run(t, ctx, "open a site",
		chromedp.Click(chromedp.Search(`//a[text()="St. Mary Radiology"]`)),
		chromedp.WaitVisible(chromedp.ID("site-name")),
	)
	if got := textOf(t, ctx, "#site-counts"); !strings.Contains(got, "2 devices: 2 current") {
		t.Errorf("site page counts = %q, want 2 devices both current", got)
	}
	run(t, ctx, "open a device",
		chromedp.Click(chromedp.CSS(`#devices tbody a`)),
		chromedp.WaitVisible(chromedp.ID("reports")),
	)
	if got := textOf(t, ctx, "#reports"); !strings.Contains(got, "committed") || !strings.Contains(got, "downloading") {
		t.Errorf("device history = %q, want the install's states through committed", got)
	}

	run(t, ctx, "ask about a CVE nobody imported",
		chromedp.Navigate(s.url+"/console/#/exposure/CVE-2099-0001"),
		chromedp.WaitVisible(chromedp.ID("exposure-answer")),
	)
	if got := textOf(t, ctx, "#exposure-answer"); !strings.Contains(got, "no device runs an affected release") {
		t.Errorf("exposure answer = %q, want no exposure", got)
	}

	run(t, ctx, "sign out",
		chromedp.Click(chromedp.ID("signout")),
		chromedp.WaitVisible(chromedp.ID("signin")),
	)
	stored, err := chromedp.Run(ctx, chromedp.Evaluate[string](`String(sessionStorage.getItem("aftercare.token"))`))
	if err != nil {
		t.Fatal(err)
	}
	if stored != "null" {
		t.Errorf("after sign-out sessionStorage holds %q, want no token", stored)
	}
}
