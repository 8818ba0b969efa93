package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/aftercare/aftercare/signing"
	"github.com/aftercare/aftercare/signing/kms"
)

// keyPassphraseEnv names the environment variable with the passphrase of
// encrypted offline keys.
const keyPassphraseEnv = "AFTERCARE_KEY_PASSPHRASE"

// minPassphraseLen is the shortest passphrase accepted for a new key.
const minPassphraseLen = 12

// passphrase returns a PassFunc: the environment variable if set, else a
// terminal prompt. A passphrase is never taken from a flag.
func (e *env) passphrase(prompt string) signing.PassFunc {
	return func() ([]byte, error) {
		if v := e.getenv(keyPassphraseEnv); v != "" {
			return []byte(v), nil
		}
		if !term.IsTerminal(int(os.Stdin.Fd())) {
			return nil, fmt.Errorf("%w: set %s or run on a terminal", signing.ErrPassphraseRequired, keyPassphraseEnv)
		}
		fmt.Fprint(e.stderr, prompt)
		b, err := term.ReadPassword(int(os.Stdin.Fd()))
		fmt.Fprintln(e.stderr)
		return b, err
	}
}

// newPassphrase asks for the passphrase of a new key, checking its length.
func (e *env) newPassphrase(prompt string) ([]byte, error) {
	p, err := e.passphrase(prompt)()
	if err != nil {
		return nil, err
	}
	if len(p) < minPassphraseLen {
		return nil, fmt.Errorf("the passphrase must be at least %d characters", minPassphraseLen)
	}
	return p, nil
}

// loadKey loads a signing key from a file or KMS URI.
func (e *env) loadKey(ctx context.Context, ref string) (signature.Signer, error) {
	return kms.LoadSigner(ctx, ref, e.passphrase("passphrase for "+ref+": "))
}

func keysCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "keys", Short: "Create, rotate and revoke the repositories' keys (offline)"}
	cmd.AddCommand(keysInitCmd(e), keysGenerateCmd(e), keysRotateCmd(e), keysSignRootCmd(e), keysRootStatusCmd(e), keysUploadRootCmd(e))
	return cmd
}

func keysInitCmd(e *env) *cobra.Command {
	var o signing.InitOptions
	var alg string
	var encrypt bool
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create the keys of both repositories and their first signed metadata (a key ceremony, on an offline machine)",
		Long: `Creates one root key per root holder, one release (targets) key per release
holder, the fleet server's online keys (release snapshot and timestamp,
rollout), the release repository's root and first targets metadata and the
rollout repository's root, all in --dir. Then it says what must stay offline.

  aftercare keys init --dir keys --encrypt \
      --root-holder alice --root-holder bob --root-holder carol --root-threshold 2 \
      --release-holder release-eng --release-holder quality --release-threshold 2

With --encrypt each offline key gets its own passphrase, asked on the
terminal for each holder (or taken from ` + keyPassphraseEnv + ` for all).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Algorithm = signing.Algorithm(alg)
			if encrypt {
				o.Passphrase = func(role, holder string) ([]byte, error) {
					return e.newPassphrase(fmt.Sprintf("passphrase for the %s key of %s: ", role, holder))
				}
			}
			res, err := signing.InitRepository(cmd.Context(), o)
			if err != nil {
				return err
			}
			e.printInit(o, res, encrypt)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Dir, "dir", "aftercare-keys", "directory for the keys and metadata")
	f.StringVar(&alg, "algorithm", string(signing.Ed25519), "key algorithm: ed25519 or ecdsa-p256")
	f.StringArrayVar(&o.RootHolders, "root-holder", nil, "a person who holds one root key (repeatable; default "+signing.DefaultRootHolder+")")
	f.IntVar(&o.RootThreshold, "root-threshold", 0, "root keys needed to sign a new root (default: a majority)")
	f.StringArrayVar(&o.TargetsHolders, "release-holder", nil, "a person who holds one release key and approves releases (repeatable; default "+signing.DefaultTargetsHolder+")")
	f.IntVar(&o.TargetsThreshold, "release-threshold", 0, "release keys needed to publish a release (default: a majority)")
	f.BoolVar(&encrypt, "encrypt", false, "encrypt each offline key with its holder's passphrase (from "+keyPassphraseEnv+" or a prompt)")
	return cmd
}

func (e *env) printInit(o signing.InitOptions, res *signing.InitResult, encrypt bool) {
	w := e.stdout
	fmt.Fprintf(w, "Keys and metadata created in %s.\n\n", o.Dir)
	fmt.Fprintf(w, "Keep OFFLINE, each with its holder (an air-gapped machine, a hardware token or a safe; never on the server).\n")
	fmt.Fprintf(w, "A new root needs %d of the %d root keys; a release needs %d of the %d release keys.\n", o.RootThreshold, len(o.RootHolders), o.TargetsThreshold, len(o.TargetsHolders))
	for _, k := range res.Offline {
		fmt.Fprintf(w, "  %-9s %-22s %s\n", k.Role, k.Holder, k.Path)
	}
	fmt.Fprintln(w, "\nGive to the fleet server (snapshot_key, timestamp_key, rollout_key; release_root, rollout_root):")
	for _, k := range res.Online {
		fmt.Fprintf(w, "  %-9s %s\n", k.Role, k.Path)
	}
	for _, p := range res.Server {
		fmt.Fprintf(w, "  %-9s %s\n", "metadata", p)
	}
	fmt.Fprintln(w, "\nBuild into every device image as its roots of trust (trusted_root, trusted_rollout_root):")
	for _, p := range res.Devices {
		fmt.Fprintf(w, "  %-9s %s\n", "root", p)
	}
	fmt.Fprintln(w, "\nThe public keys (*.pub) may be copied anywhere.")
	if !encrypt {
		fmt.Fprintln(w, "The offline keys are NOT encrypted; use --encrypt for anything but tests and demos.")
	}
}

func keysGenerateCmd(e *env) *cobra.Command {
	var out, alg string
	var encrypt bool
	cmd := &cobra.Command{
		Use:   "generate",
		Short: "Generate one key pair: a replacement online key, or a new holder's key made on their own machine",
		Long: `Writes --out (the private key, mode 0600) and --out.pub. Give the public key to
'aftercare keys rotate --add HOLDER=FILE.pub'. A key that stays in a KMS
needs no file: export its public key (PEM) from the KMS instead.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return errors.New("--out is required")
			}
			var pass []byte
			if encrypt {
				p, err := e.newPassphrase("passphrase for " + out + ": ")
				if err != nil {
					return err
				}
				pass = p
			}
			priv, pub, err := signing.GenerateKey(signing.Algorithm(alg), pass)
			if err != nil {
				return err
			}
			for _, f := range []struct {
				path string
				b    []byte
				perm os.FileMode
			}{{out, priv, 0o600}, {out + ".pub", pub, 0o644}} {
				fh, err := os.OpenFile(f.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, f.perm)
				if err != nil {
					return fmt.Errorf("refusing to overwrite: %w", err)
				}
				if _, err := fh.Write(f.b); err != nil {
					fh.Close()
					return err
				}
				if err := fh.Close(); err != nil {
					return err
				}
			}
			fmt.Fprintf(e.stdout, "key %s, public key %s.pub\n", out, out)
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "private key file to write (required)")
	cmd.Flags().StringVar(&alg, "algorithm", string(signing.Ed25519), "key algorithm: ed25519 or ecdsa-p256")
	cmd.Flags().BoolVar(&encrypt, "encrypt", false, "encrypt the key with a passphrase (from "+keyPassphraseEnv+" or a prompt)")
	return cmd
}

// readPublicKey reads a PEM public key file.
func readPublicKey(path string) (any, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pub, err := cryptoutils.UnmarshalPEMToPublicKey(b)
	if err != nil {
		return nil, fmt.Errorf("%s is not a PEM public key: %w", path, err)
	}
	return pub, nil
}

func keysRotateCmd(e *env) *cobra.Command {
	var current, output string
	var roles, remove, add, keys []string
	var threshold int
	var expires time.Duration
	cmd := &cobra.Command{
		Use:   "rotate",
		Short: "Make the next root: replace, add or revoke keys of root, targets (release), snapshot or timestamp",
		Long: `Writes the next version of a repository's root with the keys of --role
changed, signed with each --key given. TUF trusts the new root only when a
threshold of the OLD root keys and a threshold of the NEW root keys signed
it; holders elsewhere add theirs with 'aftercare keys sign-root'.

Examples:
  # quality's release key is retired, dave's joins
  aftercare keys rotate --root 1.root.json --role targets --remove quality \
      --add dave=dave.key.pub --key keys/root-alice.key --key keys/root-bob.key -o 2.root.json
  # revoke a compromised online timestamp key
  aftercare keys generate --out timestamp-2.key
  aftercare keys rotate --root 1.root.json --role timestamp --remove fleet-server \
      --add fleet-server=timestamp-2.key.pub --key ... -o 2.root.json
  # the rollout repository's key signs three roles
  aftercare keys rotate --root 1.rollout-root.json --role targets,snapshot,timestamp ...
  # extend the root's expiry, nothing else
  aftercare keys rotate --root 1.root.json --key ... -o 2.root.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cur, err := readFlagFile("root", current)
			if err != nil {
				return err
			}
			opts := signing.RotateOptions{Current: cur, Roles: roles, Remove: remove, Threshold: threshold, Expires: time.Now().Add(expires)}
			for _, a := range add {
				holder, path, ok := strings.Cut(a, "=")
				if !ok {
					return fmt.Errorf("--add %q: write HOLDER=PUBLIC-KEY-FILE", a)
				}
				pub, err := readPublicKey(path)
				if err != nil {
					return fmt.Errorf("--add %s: %w", holder, err)
				}
				opts.Add = append(opts.Add, signing.NewKey{Holder: holder, Public: pub})
			}
			for _, ref := range keys {
				s, err := e.loadKey(cmd.Context(), ref)
				if err != nil {
					return err
				}
				opts.Signers = append(opts.Signers, s)
			}
			next, err := signing.RotateRoot(opts)
			if err != nil {
				return err
			}
			if err := writeNewFile(output, next); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "next root written to %s\n", output)
			return e.printRootStatus(cur, next)
		},
	}
	f := cmd.Flags()
	f.StringVar(&current, "root", "", "the repository's current root metadata (required)")
	f.StringSliceVar(&roles, "role", nil, "roles whose keys change: root, targets, snapshot, timestamp (comma-separated or repeated)")
	f.StringArrayVar(&remove, "remove", nil, "holder name or key ID prefix whose key leaves the roles (repeatable)")
	f.StringArrayVar(&add, "add", nil, "HOLDER=PUBLIC-KEY-FILE joining the roles (repeatable)")
	f.IntVar(&threshold, "threshold", 0, "new threshold of the roles (default: unchanged)")
	f.StringArrayVar(&keys, "key", nil, "root key (file or KMS URI) to sign the new root with (repeatable)")
	f.DurationVar(&expires, "expires", 365*24*time.Hour, "validity of the new root")
	f.StringVarP(&output, "output", "o", "", "file to write the new root to (required)")
	cmd.MarkFlagRequired("root")
	cmd.MarkFlagRequired("output")
	return cmd
}

// readFlagFile reads the file a flag names, saying which flag in an error.
func readFlagFile(flag, path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", flag, err)
	}
	return b, nil
}

// cosign adds the signature of the key ref to the metadata file at path,
// in place: another holder's approval of a release or a root.
func (e *env) cosign(ctx context.Context, path, ref string, add func([]byte, signature.Signer) ([]byte, error)) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s, err := e.loadKey(ctx, ref)
	if err != nil {
		return nil, err
	}
	signed, err := add(b, s)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, signed, fi.Mode().Perm()); err != nil {
		return nil, err
	}
	fmt.Fprintf(e.stdout, "signed %s\n", path)
	return signed, nil
}

// writeNewFile writes a file that must not exist yet.
func writeNewFile(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("refusing to overwrite: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (e *env) printRootStatus(previous, next []byte) error {
	byPrev, byNext, err := signing.RootStatus(previous, next)
	if err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, "  "+byPrev.String())
	fmt.Fprintln(e.stdout, "  "+byNext.String())
	if byPrev.Met() && byNext.Met() {
		fmt.Fprintln(e.stdout, "ready: upload it with `aftercare keys upload-root`")
	} else {
		fmt.Fprintln(e.stdout, "not ready: the missing holders sign it with `aftercare keys sign-root`")
	}
	return nil
}

func keysSignRootCmd(e *env) *cobra.Command {
	var previous, root, key string
	cmd := &cobra.Command{
		Use:   "sign-root",
		Short: "Add your root key's signature to a new root (offline) and show who is still missing",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			prev, err := readFlagFile("previous", previous)
			if err != nil {
				return err
			}
			signed, err := e.cosign(cmd.Context(), root, key, signing.SignRoot)
			if err != nil {
				return err
			}
			return e.printRootStatus(prev, signed)
		},
	}
	cmd.Flags().StringVar(&previous, "previous", "", "the current root the new one replaces (required)")
	cmd.Flags().StringVar(&root, "root", "", "the new root to sign, updated in place (required)")
	cmd.Flags().StringVar(&key, "key", "", "your root key: file or KMS URI (required)")
	for _, n := range []string{"previous", "root", "key"} {
		cmd.MarkFlagRequired(n)
	}
	return cmd
}

func keysRootStatusCmd(e *env) *cobra.Command {
	var previous, root string
	cmd := &cobra.Command{
		Use:   "root-status",
		Short: "Show who has signed a new root and who is still missing",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			prev, err := readFlagFile("previous", previous)
			if err != nil {
				return err
			}
			next, err := readFlagFile("root", root)
			if err != nil {
				return err
			}
			return e.printRootStatus(prev, next)
		},
	}
	cmd.Flags().StringVar(&previous, "previous", "", "the current root (required)")
	cmd.Flags().StringVar(&root, "root", "", "the new root (required)")
	cmd.MarkFlagRequired("previous")
	cmd.MarkFlagRequired("root")
	return cmd
}

func keysUploadRootCmd(e *env) *cobra.Command {
	var repo, root, targets string
	cmd := &cobra.Command{
		Use:   "upload-root",
		Short: "Install a new root on the fleet server (devices follow the chain of roots)",
		Long: `Uploads the next root of the release or rollout repository. When it changes
the release keys, also give --targets: the current targets signed again by
the new release keys ('aftercare release resign'). When it replaces a key
the server holds (snapshot, timestamp, rollout), install it with the new key
file instead: set the key and release_root/rollout_root, restart the server.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if repo != "release" && repo != "rollout" {
				return fmt.Errorf("--repository %q: it is release or rollout", repo)
			}
			r, err := readFlagFile("root", root)
			if err != nil {
				return err
			}
			body := map[string]json.RawMessage{"root": r}
			if targets != "" {
				t, err := readFlagFile("targets", targets)
				if err != nil {
					return err
				}
				body["targets"] = t
			}
			var out struct {
				Signed struct {
					Version int `json:"version"`
				} `json:"signed"`
			}
			return e.postShow(cmd.Context(), "/api/v1/repository/"+repo+"/root", body, &out, func(w io.Writer) {
				fmt.Fprintf(w, "the %s repository's root is now version %d\n", repo, out.Signed.Version)
			})
		},
	}
	cmd.Flags().StringVar(&repo, "repository", "release", "release or rollout")
	cmd.Flags().StringVar(&root, "root", "", "the new root, signed to both thresholds (required)")
	cmd.Flags().StringVar(&targets, "targets", "", "the current targets re-signed by new release keys")
	cmd.MarkFlagRequired("root")
	return cmd
}
