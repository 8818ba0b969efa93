package signing_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/signing"
)

func TestEncryptedKeys(t *testing.T) {
	for _, alg := range []signing.Algorithm{signing.Ed25519, signing.ECDSAP256} {
		t.Run(string(alg), func(t *testing.T) {
			priv, _, err := signing.GenerateKey(alg, []byte("correct horse battery"))
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), "k.key")
			os.WriteFile(path, priv, 0o600)
			pass := func(p string) signing.PassFunc { return func() ([]byte, error) { return []byte(p), nil } }
			if _, err := signing.LoadSigner(context.Background(), path, nil); !errors.Is(err, signing.ErrPassphraseRequired) {
				t.Fatalf("LoadSigner(no passphrase) = %v, want ErrPassphraseRequired", err)
			}
			if _, err := signing.LoadSigner(context.Background(), path, pass("wrong")); err == nil {
				t.Fatal("LoadSigner(wrong passphrase) succeeded")
			}
			s, err := signing.LoadSigner(context.Background(), "file://"+path, pass("correct horse battery"))
			if err != nil {
				t.Fatalf("LoadSigner(right passphrase) = %v", err)
			}
			if _, err := signing.TUFKey(s); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestLoadSignerRejects(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big")
	os.WriteFile(big, make([]byte, 1<<20), 0o600)
	junk := filepath.Join(dir, "junk")
	os.WriteFile(junk, []byte("-----BEGIN NONSENSE-----"), 0o600)
	for _, ref := range []string{big, junk, filepath.Join(dir, "missing"), "awskms:///alias/x"} {
		if _, err := signing.LoadSigner(context.Background(), ref, nil); err == nil {
			t.Errorf("LoadSigner(%s) succeeded", ref)
		}
	}
}

// ceremony makes repositories with named holders: root 2 of 3, release
// approval 2 of 2.
// Only TestInitRepositoryThresholds encrypts the keys: scrypt makes each
// encrypted key take a noticeable moment.
func ceremony(t *testing.T, encrypt bool) (string, *signing.InitResult) {
	t.Helper()
	dir := t.TempDir()
	opts := signing.InitOptions{
		Dir:         dir,
		RootHolders: []string{"alice", "bob", "carol"}, RootThreshold: 2,
		TargetsHolders: []string{"release-eng", "quality"}, TargetsThreshold: 2,
	}
	if encrypt {
		// One holder of each role: each encryption takes a moment.
		opts.Passphrase = func(role, holder string) ([]byte, error) {
			if holder == "alice" || holder == "quality" {
				return []byte(holder + " long passphrase"), nil
			}
			return nil, nil
		}
	}
	res, err := signing.InitRepository(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return dir, res
}

func loadKey(t *testing.T, dir, role, holder string) signature.Signer {
	t.Helper()
	s, err := signing.LoadSigner(context.Background(), filepath.Join(dir, signing.OfflineKeyFile(role, holder)), nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func readRoot(t *testing.T, b []byte) *metadata.Metadata[metadata.RootType] {
	t.Helper()
	r, err := new(metadata.Metadata[metadata.RootType]).FromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestInitRepositoryThresholds(t *testing.T) {
	dir, res := ceremony(t, true)
	if len(res.Offline) != 5 || len(res.Online) != 3 || len(res.Devices) != 2 {
		t.Fatalf("InitRepository() = %+v, want 5 offline keys, 3 online keys, 2 device roots", res)
	}
	if _, err := signing.LoadSigner(context.Background(), filepath.Join(dir, signing.OfflineKeyFile("root", "alice")),
		func() ([]byte, error) { return []byte("alice long passphrase"), nil }); err != nil {
		t.Fatalf("alice's root key does not load with her passphrase: %v", err)
	}
	for _, k := range res.Offline {
		b, _ := os.ReadFile(k.Path)
		if encrypted := k.Holder == "alice" || k.Holder == "quality"; strings.Contains(string(b), "ENCRYPTED") != encrypted {
			t.Errorf("offline key %s: encrypted = %t, want %t", k.Path, !encrypted, encrypted)
		}
		if fi, _ := os.Stat(k.Path); fi.Mode().Perm() != 0o600 {
			t.Errorf("offline key %s has mode %v, want 0600", k.Path, fi.Mode().Perm())
		}
	}
	for _, name := range []string{signing.RootFile, signing.RolloutRootFile} {
		b, _ := os.ReadFile(filepath.Join(dir, name))
		root := readRoot(t, b)
		if err := root.VerifyDelegate(metadata.ROOT, root); err != nil {
			t.Fatalf("%s does not verify itself: %v", name, err)
		}
		if r := root.Signed.Roles[metadata.ROOT]; len(r.KeyIDs) != 3 || r.Threshold != 2 {
			t.Errorf("%s root role = %d keys threshold %d, want 3 keys threshold 2", name, len(r.KeyIDs), r.Threshold)
		}
		holders := signing.Holders(root)
		if len(holders) != len(root.Signed.Keys) {
			t.Errorf("%s names %d holders for %d keys", name, len(holders), len(root.Signed.Keys))
		}
	}
	b, _ := os.ReadFile(filepath.Join(dir, signing.RootFile))
	if r := readRoot(t, b).Signed.Roles[metadata.TARGETS]; len(r.KeyIDs) != 2 || r.Threshold != 2 {
		t.Errorf("release targets role = %+v, want 2 keys threshold 2", r)
	}
	if _, err := signing.InitRepository(context.Background(), signing.InitOptions{Dir: dir}); err == nil {
		t.Fatal("InitRepository overwrote an existing repository")
	}
}

func TestInitRepositoryRejectsBadHolders(t *testing.T) {
	dir := t.TempDir()
	_, err := signing.InitRepository(context.Background(), signing.InitOptions{
		Dir: dir, RootHolders: []string{"alice", "alice", "Bad Name"}, RootThreshold: 4,
	})
	var inv *signing.InvalidError
	if !errors.As(err, &inv) || len(inv.Problems) != 3 {
		t.Fatalf("InitRepository(bad holders) = %v, want three problems", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("refused InitRepository wrote %d files", len(entries))
	}
}

func testManifest(version string) *firmware.Manifest {
	h := strings.Repeat("ab", 32)
	return &firmware.Manifest{Format: 1, Product: "pump", Version: version, Models: []string{"x"},
		Image: firmware.Image{Compression: "zstd", Length: 10, SHA256: h, RawLength: 20, RawSHA256: h}}
}

func TestReleaseApprovalThreshold(t *testing.T) {
	dir, _ := ceremony(t, false)
	rootJSON, _ := os.ReadFile(filepath.Join(dir, signing.RootFile))
	root := readRoot(t, rootJSON)
	cur, _ := os.ReadFile(filepath.Join(dir, signing.TargetsFile))
	signed, err := signing.SignRelease(signing.SignReleaseOptions{Current: cur, Manifest: testManifest("1.0.0"), Signer: loadKey(t, dir, "targets", "release-eng")})
	if err != nil {
		t.Fatal(err)
	}
	st, err := signing.TargetsStatus(rootJSON, signed)
	if err != nil || st.Met() || len(st.Signed) != 1 || st.Signed[0] != "release-eng" || len(st.Missing) != 1 || st.Missing[0] != "quality" {
		t.Fatalf("TargetsStatus(one signature) = %+v, %v; want signed release-eng, missing quality", st, err)
	}
	tm, _ := new(metadata.Metadata[metadata.TargetsType]).FromBytes(signed)
	if err := root.VerifyDelegate(metadata.TARGETS, tm); err == nil {
		t.Fatal("one of two release signatures verified to threshold")
	}
	if _, err := signing.Approve(signed, loadKey(t, dir, "targets", "release-eng")); err == nil {
		t.Fatal("the same key approved twice")
	}
	approved, err := signing.Approve(signed, loadKey(t, dir, "targets", "quality"))
	if err != nil {
		t.Fatal(err)
	}
	st, _ = signing.TargetsStatus(rootJSON, approved)
	if !st.Met() || len(st.Missing) != 0 {
		t.Fatalf("TargetsStatus(approved) = %v, want threshold met", st)
	}
	tm, _ = new(metadata.Metadata[metadata.TargetsType]).FromBytes(approved)
	if err := root.VerifyDelegate(metadata.TARGETS, tm); err != nil || tm.Signed.Version != 2 {
		t.Fatalf("approved targets v%d does not verify: %v", tm.Signed.Version, err)
	}
	// A root key is not a release key: its signature is shown as not counted.
	extra, _ := signing.Approve(signed, loadKey(t, dir, "root", "alice"))
	if st, _ := signing.TargetsStatus(rootJSON, extra); st.Met() || len(st.Foreign) != 1 || st.Foreign[0] != "alice" {
		t.Fatalf("TargetsStatus(root key signature) = %+v, want alice not counted", st)
	}
}

func TestSignReleaseRefusesChangedBuild(t *testing.T) {
	dir, _ := ceremony(t, false)
	cur, _ := os.ReadFile(filepath.Join(dir, signing.TargetsFile))
	s := loadKey(t, dir, "targets", "release-eng")
	signed, err := signing.SignRelease(signing.SignReleaseOptions{Current: cur, Manifest: testManifest("1.0.0"), Signer: s})
	if err != nil {
		t.Fatal(err)
	}
	m2 := testManifest("1.0.0")
	m2.Image.Length = 11
	if _, err := signing.SignRelease(signing.SignReleaseOptions{Current: signed, Manifest: m2, Signer: s}); err == nil {
		t.Fatal("SignRelease accepted a different build under an existing version")
	}
}

func TestSetRollback(t *testing.T) {
	dir, _ := ceremony(t, false)
	cur, _ := os.ReadFile(filepath.Join(dir, signing.TargetsFile))
	s := loadKey(t, dir, "targets", "release-eng")
	m := testManifest("1.0.0")
	signed, _ := signing.SignRelease(signing.SignReleaseOptions{Current: cur, Manifest: m, Signer: s})
	flagged, err := signing.SetRollback(signing.SetRollbackOptions{Current: signed, Target: m.TargetPath(), AllowRollback: true, Signer: s})
	if err != nil {
		t.Fatal(err)
	}
	tm, _ := new(metadata.Metadata[metadata.TargetsType]).FromBytes(flagged)
	custom, err := firmware.ParseTargetCustom(tm.Signed.Targets[m.TargetPath()].Custom)
	if err != nil || !custom.AllowRollback || tm.Signed.Version != 3 || tm.Signed.Targets[m.TargetPath()].Length != m.Image.Length {
		t.Fatalf("SetRollback() = v%d %+v %v, want v3 with allow_rollback and the same image", tm.Signed.Version, custom, err)
	}
	for _, bad := range []signing.SetRollbackOptions{
		{Current: flagged, Target: m.TargetPath(), AllowRollback: true, Signer: s}, // already set
		{Current: flagged, Target: "pump/9.9.9/image.img.zst", AllowRollback: true, Signer: s},
	} {
		if _, err := signing.SetRollback(bad); err == nil {
			t.Errorf("SetRollback(%s, %t) succeeded", bad.Target, bad.AllowRollback)
		}
	}
}

func TestRotateRootNeedsOldAndNewThresholds(t *testing.T) {
	dir, _ := ceremony(t, false)
	cur, _ := os.ReadFile(filepath.Join(dir, signing.RootFile))
	priv, _, err := signing.GenerateKey(signing.Ed25519, nil)
	if err != nil {
		t.Fatal(err)
	}
	dave := filepath.Join(t.TempDir(), "dave.key")
	os.WriteFile(dave, priv, 0o600)
	daveKey, _ := signing.LoadSigner(context.Background(), dave, nil)
	davePub, _ := daveKey.PublicKey()
	// carol leaves, dave joins, and all three must sign from now on.
	next, err := signing.RotateRoot(signing.RotateOptions{
		Current: cur, Roles: []string{metadata.ROOT}, Remove: []string{"carol"}, Threshold: 3,
		Add: []signing.NewKey{{Holder: "dave", Public: davePub}}, Signers: []signature.Signer{loadKey(t, dir, "root", "alice")},
	})
	if err != nil {
		t.Fatal(err)
	}
	prev, now, err := signing.RootStatus(cur, next)
	if err != nil || prev.Met() || now.Met() {
		t.Fatalf("RootStatus(one signature) = %v / %v, %v; want neither met", prev, now, err)
	}
	trusted := readRoot(t, cur)
	if err := trusted.VerifyDelegate(metadata.ROOT, readRoot(t, next)); err == nil {
		t.Fatal("a root with one of two signatures verified")
	}
	// bob completes the old threshold (2 of 3); the new one needs dave too.
	next, _ = signing.SignRoot(next, loadKey(t, dir, "root", "bob"))
	if prev, now, _ = signing.RootStatus(cur, next); !prev.Met() || now.Met() || strings.Join(now.Missing, ",") != "dave" {
		t.Fatalf("RootStatus(alice, bob) = %v / %v; want old met, new missing dave", prev, now)
	}
	next, _ = signing.SignRoot(next, daveKey)
	if prev, now, _ = signing.RootStatus(cur, next); !prev.Met() || !now.Met() {
		t.Fatalf("RootStatus(alice, bob, dave) = %v / %v; want both met", prev, now)
	}
	nr := readRoot(t, next)
	if err := trusted.VerifyDelegate(metadata.ROOT, nr); err != nil {
		t.Fatal(err)
	}
	if err := nr.VerifyDelegate(metadata.ROOT, nr); err != nil {
		t.Fatal(err)
	}
	for id, h := range signing.Holders(nr) {
		if h == "carol" {
			t.Fatalf("carol's key %s is still named in the new root", id)
		}
	}
}

func TestRotateRootRejects(t *testing.T) {
	dir, _ := ceremony(t, false)
	cur, _ := os.ReadFile(filepath.Join(dir, signing.RootFile))
	for name, opts := range map[string]signing.RotateOptions{
		"unknown-role":       {Current: cur, Roles: []string{"bins"}},
		"unknown-holder":     {Current: cur, Roles: []string{metadata.TARGETS}, Remove: []string{"mallory"}},
		"below-threshold":    {Current: cur, Roles: []string{metadata.TARGETS}, Remove: []string{"quality"}},
		"threshold-too-high": {Current: cur, Roles: []string{metadata.ROOT}, Threshold: 4},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := signing.RotateRoot(opts); err == nil {
				t.Fatal("RotateRoot succeeded")
			}
		})
	}
}
