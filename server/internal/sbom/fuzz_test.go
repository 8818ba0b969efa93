package sbom

import (
	"os"
	"path/filepath"
	"testing"
)

func FuzzParse(f *testing.F) {
	for _, dir := range []string{"testdata/real", "testdata/bad", "testdata/yocto"} {
		files, _ := filepath.Glob(filepath.Join(dir, "*.json"))
		for _, name := range files {
			b, err := os.ReadFile(name)
			if err != nil {
				f.Fatal(err)
			}
			if len(b) < 64<<10 {
				f.Add(b)
			}
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		doc, err := Parse(b, Limits{MaxBytes: 1 << 20, MaxDepth: 32, MaxComponents: 1000})
		if err != nil {
			return
		}
		if len(doc.Components) > 1000 {
			t.Fatalf("Parse accepted %d components over the limit of 1000", len(doc.Components))
		}
		for _, c := range doc.Components {
			for _, cpe := range c.CPEs {
				if ValidCPE(cpe) != nil {
					t.Fatalf("Parse kept invalid CPE %q", cpe)
				}
			}
		}
	})
}
