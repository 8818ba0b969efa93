package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/signing"
)

// keyPassphraseEnv names the environment variable with the passphrase of
// encrypted offline keys.
const keyPassphraseEnv = "AFTERCARE_KEY_PASSPHRASE"

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

func keysCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "keys", Short: "Create and manage the release repository's keys"}
	var dir, alg string
	var encrypt bool
	initCmd := &cobra.Command{
		Use:   "init",
		Short: "Create root, targets, snapshot and timestamp keys and the first signed root and targets metadata",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var pass []byte
			if encrypt {
				p, err := e.passphrase("passphrase for the offline keys: ")()
				if err != nil {
					return err
				}
				if len(p) < 12 {
					return errors.New("the passphrase must be at least 12 characters")
				}
				pass = p
			}
			res, err := signing.InitRepository(cmd.Context(), signing.InitOptions{Dir: dir, Algorithm: signing.Algorithm(alg), Passphrase: pass})
			if err != nil {
				return err
			}
			w := e.stdout
			fmt.Fprintf(w, "Release repository keys created in %s.\n\n", dir)
			fmt.Fprintln(w, "Keep OFFLINE (an air-gapped machine or hardware token; never on the server):")
			for _, p := range res.Offline {
				fmt.Fprintln(w, "  ", p)
			}
			fmt.Fprintln(w, "\nGive to the fleet server (release_root, snapshot_key, timestamp_key):")
			for _, p := range res.Server {
				fmt.Fprintln(w, "  ", p)
			}
			fmt.Fprintln(w, "\nBuild into every device image as its trusted root (trusted_root):")
			for _, p := range res.Devices {
				fmt.Fprintln(w, "  ", p)
			}
			if pass == nil {
				fmt.Fprintln(w, "\nThe offline keys are NOT encrypted; use --encrypt for anything but tests and demos.")
			}
			return nil
		},
	}
	initCmd.Flags().StringVar(&dir, "dir", "aftercare-keys", "directory for the keys and metadata")
	initCmd.Flags().StringVar(&alg, "algorithm", string(signing.Ed25519), "key algorithm: ed25519 or ecdsa-p256")
	initCmd.Flags().BoolVar(&encrypt, "encrypt", false, "encrypt the offline keys with a passphrase (from "+keyPassphraseEnv+" or a prompt)")
	cmd.AddCommand(initCmd)
	return cmd
}

func releaseCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "release", Short: "Build, sign, upload and list releases"}
	cmd.AddCommand(releaseBuildCmd(e), releaseSignCmd(e), releaseUploadCmd(e), releasePublishCmd(e), releaseListCmd(e))
	return cmd
}

// buildOptions are the inputs of a bundle.
type buildOptions struct {
	Image, SBOM, Output, Notes string
	Product, Version           string
	Models, HardwareRevisions  []string
	Compression                string
}

func releaseBuildCmd(e *env) *cobra.Command {
	var o buildOptions
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Build a release bundle from a raw slot image (compressing it) and an optional SBOM",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, err := buildBundle(o)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "bundle %s: %s %s for %s, image %d bytes (%d raw, %s)\n",
				o.Output, m.Product, m.Version, strings.Join(m.Models, ", "), m.Image.Length, m.Image.RawLength, m.Image.Compression)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Image, "image", "", "raw slot image (required)")
	f.StringVar(&o.SBOM, "sbom", "", "SBOM file to ship with the release (CycloneDX or SPDX JSON)")
	f.StringVarP(&o.Output, "output", "o", "bundle.tar", "bundle file to write")
	f.StringVar(&o.Product, "product", "", "product line, e.g. infusion-pump (required)")
	f.StringVar(&o.Version, "version", "", "semantic version, e.g. 2.1.0 (required)")
	f.StringSliceVar(&o.Models, "model", nil, "hardware model the release installs on (repeatable, required)")
	f.StringSliceVar(&o.HardwareRevisions, "hardware-revision", nil, "limit to these hardware revisions (repeatable)")
	f.StringVar(&o.Compression, "compression", string(firmware.CompressionZstd), "zstd, gzip or none")
	f.StringVar(&o.Notes, "notes", "", "release notes")
	return cmd
}

// buildBundle compresses the image next to the output, describes it, and
// writes the bundle.
func buildBundle(o buildOptions) (*firmware.Manifest, error) {
	if o.Image == "" {
		return nil, errors.New("--image is required")
	}
	c := firmware.Compression(o.Compression)
	stored, err := os.CreateTemp(filepath.Dir(o.Output), ".image-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(stored.Name())
	defer stored.Close()
	if err := compressFile(stored, o.Image, c); err != nil {
		return nil, err
	}
	img, err := firmware.DescribeImage(stored.Name(), c)
	if err != nil {
		return nil, err
	}
	m := &firmware.Manifest{
		Format: firmware.ManifestFormat, Product: o.Product, Version: o.Version,
		Models: o.Models, HardwareRevisions: o.HardwareRevisions, Image: img, Notes: o.Notes,
	}
	if o.SBOM != "" {
		desc, err := firmware.DescribeImage(o.SBOM, firmware.CompressionNone)
		if err != nil {
			return nil, fmt.Errorf("sbom: %w", err)
		}
		if desc.Length > firmware.MaxSBOMBytes {
			return nil, fmt.Errorf("sbom is %d bytes, more than the %d allowed", desc.Length, firmware.MaxSBOMBytes)
		}
		m.SBOM = &firmware.Artifact{Length: desc.Length, SHA256: desc.SHA256}
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	out, err := os.Create(o.Output)
	if err != nil {
		return nil, err
	}
	if err := firmware.WriteBundle(out, m, firmware.BundleSource{Image: stored.Name(), SBOM: o.SBOM}); err != nil {
		out.Close()
		os.Remove(o.Output)
		return nil, err
	}
	return m, out.Close()
}

func compressFile(dst io.Writer, src string, c firmware.Compression) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	defer in.Close()
	enc, err := firmware.Encoder(c, dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(enc, in); err != nil {
		return fmt.Errorf("compress image: %w", err)
	}
	return enc.Close()
}

// readBundleManifest reads only the manifest of a bundle.
func readBundleManifest(path string) (*firmware.Manifest, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	br, err := firmware.OpenBundle(f)
	if err != nil {
		return nil, err
	}
	return br.Manifest, nil
}

// signOptions are the inputs of an offline signature.
type signOptions struct {
	Bundle, Key, Targets, Output string
	Expires                      time.Duration
}

func (e *env) sign(ctx context.Context, o signOptions, current []byte) ([]byte, *firmware.Manifest, error) {
	m, err := readBundleManifest(o.Bundle)
	if err != nil {
		return nil, nil, err
	}
	signer, err := signing.LoadSigner(ctx, o.Key, e.passphrase("passphrase for "+o.Key+": "))
	if err != nil {
		return nil, nil, err
	}
	signed, err := signing.SignRelease(signing.SignReleaseOptions{Current: current, Manifest: m, Signer: signer, Expires: time.Now().Add(o.Expires)})
	return signed, m, err
}

func releaseSignCmd(e *env) *cobra.Command {
	var o signOptions
	cmd := &cobra.Command{
		Use:   "sign",
		Short: "Sign a bundle's release into the next targets metadata (offline; no network needed)",
		Long: `Reads the bundle's manifest and the repository's current targets metadata
(from the server's GET /api/v1/repository/targets, carried to this machine),
adds the release, increments the version and signs with the targets key.
Carry the output back and upload it with the bundle.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			current, err := os.ReadFile(o.Targets)
			if err != nil {
				return fmt.Errorf("--targets: %w", err)
			}
			signed, m, err := e.sign(cmd.Context(), o, current)
			if err != nil {
				return err
			}
			if err := os.WriteFile(o.Output, signed, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "signed %s into %s\n", m.TargetPath(), o.Output)
			return nil
		},
	}
	signFlags(cmd, &o)
	cmd.Flags().StringVar(&o.Targets, "targets", "", "current targets metadata (required)")
	cmd.Flags().StringVarP(&o.Output, "output", "o", "targets.json", "signed targets metadata to write")
	return cmd
}

func signFlags(cmd *cobra.Command, o *signOptions) {
	cmd.Flags().StringVar(&o.Bundle, "bundle", "", "release bundle (required)")
	cmd.Flags().StringVar(&o.Key, "key", "", "targets signing key: file path (required)")
	cmd.Flags().DurationVar(&o.Expires, "expires", 365*24*time.Hour, "validity of the new targets metadata")
}

func releaseUploadCmd(e *env) *cobra.Command {
	var bundle, targets string
	cmd := &cobra.Command{
		Use:   "upload",
		Short: "Upload a bundle with the signed targets metadata that lists it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			signed, err := os.ReadFile(targets)
			if err != nil {
				return fmt.Errorf("--targets: %w", err)
			}
			return e.upload(cmd.Context(), bundle, signed)
		},
	}
	cmd.Flags().StringVar(&bundle, "bundle", "", "release bundle (required)")
	cmd.Flags().StringVar(&targets, "targets", "", "signed targets metadata from `aftercare release sign` (required)")
	return cmd
}

// release is the part of a release the CLI prints.
type release struct {
	ID         string            `json:"id"`
	Product    string            `json:"product"`
	Version    string            `json:"version"`
	TargetPath string            `json:"target_path"`
	Manifest   firmware.Manifest `json:"manifest"`
	CreatedAt  time.Time         `json:"created_at"`
}

func (e *env) upload(ctx context.Context, bundle string, signed []byte) error {
	c, err := e.client()
	if err != nil {
		return err
	}
	var raw []byte
	if err := c.uploadRelease(ctx, bundle, signed, &raw); err != nil {
		return err
	}
	var rel release
	return e.show(raw, &rel, func(w io.Writer) {
		fmt.Fprintf(w, "published release %s: %s %s (%s)\n", rel.ID, rel.Product, rel.Version, rel.TargetPath)
	})
}

func releasePublishCmd(e *env) *cobra.Command {
	var o signOptions
	cmd := &cobra.Command{
		Use:   "publish",
		Short: "Sign and upload in one step (fetches the current targets metadata from the server; the key must be at hand)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			var current []byte
			if err := c.getJSON(cmd.Context(), "/api/v1/repository/targets", &current); err != nil {
				return fmt.Errorf("fetch current targets metadata: %w", err)
			}
			signed, _, err := e.sign(cmd.Context(), o, current)
			if err != nil {
				return err
			}
			return e.upload(cmd.Context(), o.Bundle, signed)
		},
	}
	signFlags(cmd, &o)
	return cmd
}

func releaseListCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List published releases",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			var raw []byte
			if err := c.getJSON(cmd.Context(), "/api/v1/releases", &raw); err != nil {
				return err
			}
			var out struct {
				Releases []release `json:"releases"`
			}
			return e.show(raw, &out, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tPRODUCT\tVERSION\tMODELS\tPUBLISHED")
				for _, r := range out.Releases {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.ID, r.Product, r.Version, strings.Join(r.Manifest.Models, ","), r.CreatedAt.Format(time.RFC3339))
				}
				tw.Flush()
			})
		},
	}
}

// show prints the server's JSON answer as it is with --json; otherwise it
// decodes the answer into view and prints what human writes.
func (e *env) show(raw []byte, view any, human func(io.Writer)) error {
	if e.json {
		var buf bytes.Buffer
		if err := json.Indent(&buf, raw, "", "  "); err != nil {
			return fmt.Errorf("server answer is not JSON: %w", err)
		}
		buf.WriteByte('\n')
		_, err := e.stdout.Write(buf.Bytes())
		return err
	}
	if err := json.Unmarshal(raw, view); err != nil {
		return fmt.Errorf("decode server answer: %w", err)
	}
	human(e.stdout)
	return nil
}
