package vuln_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/store/storetest"
	"github.com/aftercare/aftercare/server/internal/vuln"
)

// feedServer serves the KEV catalog with an ETag, and can be told to fail
// or to serve a truncated file.
type feedServer struct {
	mu        sync.Mutex
	body      []byte
	etag      string
	mode      string   // "", "fail", "truncated"
	condition []string // If-None-Match of each request
}

func (f *feedServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.condition = append(f.condition, r.Header.Get("If-None-Match"))
	switch {
	case f.mode == "fail":
		http.Error(w, "maintenance", http.StatusServiceUnavailable)
	case r.Header.Get("If-None-Match") == f.etag:
		w.WriteHeader(http.StatusNotModified)
	case f.mode == "truncated":
		w.Header().Set("ETag", f.etag)
		w.Write(f.body[:len(f.body)/3])
	default:
		w.Header().Set("ETag", f.etag)
		w.Write(f.body)
	}
}

func (f *feedServer) set(mode string) {
	f.mu.Lock()
	f.mode = mode
	f.mu.Unlock()
}

func TestSync(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		f := newFixture(t, s)
		if _, err := f.svc.Import(ctx, vuln.AllSites, "nvd", readFile(t, "testdata/nvd/CVE-2023-4863.json"), vuln.Source{Origin: "CVE-2023-4863.json"}); err != nil {
			t.Fatal(err)
		}
		upstream := &feedServer{body: readFile(t, "testdata/kev/known_exploited_vulnerabilities.json"), etag: `"kev-2025.08.25"`}
		mirror := &feedServer{body: upstream.body, etag: `"mirror-1"`}
		up, mir := httptest.NewServer(upstream), httptest.NewServer(mirror)
		defer up.Close()
		defer mir.Close()
		sources := []vuln.SyncSource{{Name: "kev", Kind: "kev", URLs: []string{mir.URL + "/kev.json", up.URL + "/kev.json"}}}
		if err := vuln.ValidateSyncSources(sources); err != nil {
			t.Fatal(err)
		}
		sync := func() vuln.SyncOutcome {
			t.Helper()
			res, err := f.svc.Sync(ctx, up.Client(), sources, 64<<20)
			if err != nil {
				t.Fatal(err)
			}
			return res.Feeds[0]
		}
		feedState := func() store.Feed {
			feeds, _ := f.svc.Feeds(ctx)
			for _, fd := range feeds {
				if fd.Name == "kev" {
					return fd
				}
			}
			t.Fatal("no kev feed")
			return store.Feed{}
		}
		// 1: the mirror answers.
		if out := sync(); out.Outcome != "imported" || out.URL != mir.URL+"/kev.json" || out.Records != 1404 {
			t.Fatalf("first sync = %+v", out)
		}
		// 2: a conditional request; not modified.
		if out := sync(); out.Outcome != "not-modified" {
			t.Fatalf("second sync = %+v", out)
		}
		if c := mirror.condition; c[len(c)-1] != `"mirror-1"` {
			t.Errorf("second request's If-None-Match = %q, want the stored ETag", c[len(c)-1])
		}
		// 3: the mirror fails; upstream answers.
		mirror.set("fail")
		if out := sync(); out.Outcome != "imported" || out.URL != up.URL+"/kev.json" {
			t.Fatalf("sync with the mirror down = %+v", out)
		}
		// 4: the mirror serves a truncated file and upstream fails: the last
		// good data stays, and the feed says what failed.
		mirror.set("truncated")
		upstream.set("fail")
		good := feedState()
		out := sync()
		if out.Outcome != "failed" || !strings.Contains(out.Error, "invalid kev feed") || !strings.Contains(out.Error, "status 503") {
			t.Fatalf("sync with both broken = %+v", out)
		}
		bad := feedState()
		if bad.Records != 1404 || bad.Source != good.Source || !bad.ImportedAt.Equal(good.ImportedAt) || bad.LastError == "" {
			t.Errorf("after a failed sync the feed is %+v; want the last good import (%+v) kept and the error recorded", bad, good)
		}
		views, _ := f.svc.Findings(ctx, vuln.AllSites, vuln.FindingQuery{VulnID: "CVE-2023-4863"})
		if len(views) == 0 || views[0].KEV == nil {
			t.Errorf("KEV data lost after a failed sync: %+v", views)
		}
		bad2 := []vuln.SyncSource{{Name: "kev", Kind: "cves", URLs: []string{"ftp://x"}}, {Name: "kev", Kind: "kev"}}
		err := vuln.ValidateSyncSources(bad2)
		for _, want := range []string{`vuln_feeds[0].kind "cves"`, `"ftp://x" is not an http(s) URL`, `vuln_feeds[1].name "kev" appears twice`, "vuln_feeds[1].urls: at least one URL"} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("ValidateSyncSources(bad) = %v, want %q", err, want)
			}
		}
	})
}
