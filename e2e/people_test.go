package e2e

import (
	"database/sql"
	"path/filepath"
	"strings"
	"testing"

	_ "github.com/mattn/go-sqlite3"
)

// TestPeopleAndAudit plays the access story with the real binaries: the
// admin makes two hospitals, a user for each hospital's IT and an auditor;
// Lakeside's IT sees only its own site and is refused St. Mary's; every
// decision and refusal is in the audit log, which `aftercare audit verify`
// checks, until a row is edited behind the server's back.
func TestPeopleAndAudit(t *testing.T) {
	s := startServer(t, serverOptions{})
	admin := s.cliEnv()
	runCLI(t, admin, "orgs", "create", "St. Mary Hospital", "--reason", "contract 2026-114")
	runCLI(t, admin, "orgs", "create", "Lakeside Clinic")
	var mary, lake site
	cliJSON(t, s, &mary, "site", "create", "St. Mary Radiology", "--organisation", "St. Mary Hospital")
	cliJSON(t, s, &lake, "site", "create", "Lakeside Cardiology", "--organisation", "Lakeside Clinic")
	runCLI(t, admin, "users", "create", "it-lakeside", "--role", "hospital_it", "--organisation", "Lakeside Clinic")
	runCLI(t, admin, "users", "create", "olga", "--role", "auditor")
	lakeToken := strings.TrimSpace(runCLI(t, admin, "tokens", "create", "it-lakeside", "--name", "laptop", "--expires-in", "720h"))
	auditorToken := strings.TrimSpace(runCLI(t, admin, "tokens", "create", "olga"))
	if !strings.HasPrefix(lakeToken, "act_") || strings.Contains(lakeToken, "\n") {
		t.Fatalf("tokens create printed %q, want the token alone", lakeToken)
	}
	lakeEnv := []string{"AFTERCARE_SERVER=" + s.url, "AFTERCARE_TOKEN=" + lakeToken}
	auditorEnv := []string{"AFTERCARE_SERVER=" + s.url, "AFTERCARE_TOKEN=" + auditorToken}

	sites := runCLI(t, lakeEnv, "site", "list")
	if !strings.Contains(sites, "Lakeside Cardiology") || strings.Contains(sites, "St. Mary") {
		t.Fatalf("Lakeside's IT lists:\n%s", sites)
	}
	if out, err := tryCLI(lakeEnv, "site", "tokens", mary.ID); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("Lakeside's IT making St. Mary's enrollment tokens: %v %s", err, out)
	}
	if _, err := tryCLI(lakeEnv, "users", "create", "mallory", "--role", "admin"); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("Lakeside's IT making an admin: %v", err)
	}
	runCLI(t, lakeEnv, "site", "tokens", lake.ID)
	if _, err := tryCLI(auditorEnv, "orgs", "create", "Auditor Inc"); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("the auditor creating an organisation: %v", err)
	}

	log := runCLI(t, auditorEnv, "audit", "list", "--limit", "1000")
	for _, want := range []string{"organisation.create", "contract 2026-114", "site.create", "user.create", "token.create",
		"enrollment_tokens.create", "denied"} {
		if !strings.Contains(log, want) {
			t.Errorf("audit list lacks %q:\n%s", want, log)
		}
	}
	verified := runCLI(t, auditorEnv, "audit", "verify")
	if !strings.HasPrefix(verified, "audit log intact:") {
		t.Fatalf("audit verify: %s", verified)
	}
	head := strings.TrimSpace(verified[strings.LastIndex(verified, " ")+1:])
	runCLI(t, auditorEnv, "audit", "verify", "--expect-head", head)

	// Revoking the token locks Lakeside's IT out at once.
	var toks struct {
		Tokens []struct{ ID, User string } `json:"tokens"`
	}
	cliJSON(t, s, &toks, "tokens", "list", "--user", "it-lakeside")
	runCLI(t, admin, "tokens", "revoke", toks.Tokens[0].ID, "--reason", "laptop lost")
	if _, err := tryCLI(lakeEnv, "site", "list"); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("revoked token: %v", err)
	}

	// Someone with the database file edits an entry: verify names it.
	db, err := sql.Open("sqlite3", "file:"+filepath.Join(s.dataDir, "aftercare.db")+"?_busy_timeout=10000")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`UPDATE audit_log SET reason = 'routine' WHERE seq = 1`); err != nil {
		t.Fatal(err)
	}
	out, err := tryCLI(auditorEnv, "audit", "verify")
	if err == nil || !strings.Contains(err.Error(), "broken at seq 1") || !strings.Contains(err.Error(), "edited") {
		t.Fatalf("audit verify after an edit: %v %s", err, out)
	}
}
