package feed

import (
	"os"
	"path/filepath"
	"testing"
)

func seeds(f *testing.F, patterns ...string) {
	for _, p := range patterns {
		files, _ := filepath.Glob(filepath.Join("..", "testdata", p))
		for _, name := range files {
			if b, err := os.ReadFile(name); err == nil && len(b) < 64<<10 {
				f.Add(b)
			}
		}
	}
}

var fuzzLimits = Limits{MaxBytes: 1 << 20, MaxRecordBytes: 1 << 16, MaxRecords: 1000}

func FuzzReadOSV(f *testing.F) {
	seeds(f, "osv/*/*/*.json", "bad/osv-*.json")
	f.Fuzz(func(t *testing.T, b []byte) { ReadOSV("fuzz", b, fuzzLimits) })
}

func FuzzReadNVD(f *testing.F) {
	seeds(f, "nvd/CVE-*.json", "bad/nvd-*.json")
	f.Fuzz(func(t *testing.T, b []byte) { ReadNVD("fuzz", b, fuzzLimits) })
}

func FuzzReadKEV(f *testing.F) {
	seeds(f, "bad/kev-*.json")
	f.Fuzz(func(t *testing.T, b []byte) { ReadKEV("fuzz", b, fuzzLimits) })
}

func FuzzReadEPSS(f *testing.F) {
	seeds(f, "epss/*.csv", "bad/epss-*.csv")
	f.Fuzz(func(t *testing.T, b []byte) {
		snap, err := ReadEPSS("fuzz", b, fuzzLimits)
		if err != nil {
			return
		}
		for _, s := range snap.Scores {
			if s.Score < 0 || s.Score > 1 || !ValidCVE(s.CVE) {
				t.Fatalf("ReadEPSS accepted %+v", s)
			}
		}
	})
}
