package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The agent runs on small devices and verifies only: it must not link the
// server's web framework, SQL drivers, the broker, KMS clients or cgo.
func TestForbiddenDependencies(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}} {{if .CgoFiles}}cgo{{end}}", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	forbidden := []string{
		"github.com/labstack/echo",
		"github.com/mattn/go-sqlite3",
		"github.com/jackc/pgx",
		"database/sql",
		"github.com/mochi-mqtt/server",
		"github.com/sigstore/sigstore/pkg/signature/kms",
		"cloud.google.com/",
		"github.com/aws/",
		"github.com/Azure/",
		"github.com/aftercare/aftercare/server",
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, cgo, _ := strings.Cut(line, " ")
		for _, f := range forbidden {
			if strings.HasPrefix(pkg, f) {
				t.Errorf("aftercare-agent depends on %s", pkg)
			}
		}
		if cgo == "cgo" && pkg != "runtime/cgo" && !strings.HasPrefix(pkg, "net") && !strings.HasPrefix(pkg, "os/user") {
			t.Errorf("aftercare-agent depends on cgo package %s", pkg)
		}
	}
}
