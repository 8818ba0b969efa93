package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/spf13/cobra"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/signing"
)

func releaseCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "release", Short: "Build, sign, upload and list releases"}
	cmd.AddCommand(releaseBuildCmd(e), releaseSignCmd(e), releaseApproveCmd(e), releaseStatusCmd(e), releaseAllowRollbackCmd(e),
		releaseResignCmd(e), releaseUploadCmd(e), releasePublishCmd(e), releaseListCmd(e))
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
	Bundle, Key, Targets, Output, Root string
	AllowRollback                      bool
	Expires                            time.Duration
}

func (e *env) sign(ctx context.Context, o signOptions, current []byte) ([]byte, *firmware.Manifest, error) {
	m, err := readBundleManifest(o.Bundle)
	if err != nil {
		return nil, nil, err
	}
	signer, err := e.loadKey(ctx, o.Key)
	if err != nil {
		return nil, nil, err
	}
	signed, err := signing.SignRelease(signing.SignReleaseOptions{Current: current, Manifest: m, AllowRollback: o.AllowRollback,
		Signer: signer, Expires: time.Now().Add(o.Expires)})
	return signed, m, err
}

func releaseSignCmd(e *env) *cobra.Command {
	var o signOptions
	cmd := &cobra.Command{
		Use:   "sign",
		Short: "Sign a bundle's release into the next targets metadata (offline; no network needed)",
		Long: `Reads the bundle's manifest and the repository's current targets metadata
(from the server's GET /api/v1/repository/targets, carried to this machine),
adds the release, increments the version and signs with your release key.
When the release keys have a threshold above one, the other holders add
their approval with 'aftercare release approve'. Carry the result back and
upload it with the bundle.

--allow-rollback signs the release as one devices running a newer version
may go back to.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			current, err := readFlagFile("targets", o.Targets)
			if err != nil {
				return err
			}
			signed, m, err := e.sign(cmd.Context(), o, current)
			if err != nil {
				return err
			}
			if err := os.WriteFile(o.Output, signed, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "signed %s into %s\n", m.TargetPath(), o.Output)
			return e.printTargetsStatus(o.Root, signed)
		},
	}
	signFlags(cmd, &o)
	cmd.Flags().StringVar(&o.Targets, "targets", "", "current targets metadata (required)")
	cmd.Flags().StringVarP(&o.Output, "output", "o", "targets.json", "signed targets metadata to write")
	cmd.Flags().StringVar(&o.Root, "root", "", "the release repository's root, to show who has signed and who is missing")
	return cmd
}

func signFlags(cmd *cobra.Command, o *signOptions) {
	cmd.Flags().StringVar(&o.Bundle, "bundle", "", "release bundle (required)")
	cmd.Flags().StringVar(&o.Key, "key", "", "your release (targets) key: file or KMS URI (required)")
	cmd.Flags().DurationVar(&o.Expires, "expires", 365*24*time.Hour, "validity of the new targets metadata")
	cmd.Flags().BoolVar(&o.AllowRollback, "allow-rollback", false, "let devices that run a newer version install this release")
}

// printTargetsStatus prints who signed targets metadata, when the root is
// at hand.
func (e *env) printTargetsStatus(rootPath string, signed []byte) error {
	if rootPath == "" {
		fmt.Fprintln(e.stdout, "(give --root to see who has signed and who is still missing)")
		return nil
	}
	root, err := os.ReadFile(rootPath)
	if err != nil {
		return fmt.Errorf("--root: %w", err)
	}
	st, err := signing.TargetsStatus(root, signed)
	if err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, "  "+st.String())
	if st.Met() {
		fmt.Fprintln(e.stdout, "ready to upload")
	} else {
		fmt.Fprintln(e.stdout, "not ready: the missing holders approve it with `aftercare release approve`")
	}
	return nil
}

// describeTargets lists what targets metadata would publish, for the
// person about to approve it.
func describeTargets(w io.Writer, signed []byte) error {
	t, err := new(metadata.Metadata[metadata.TargetsType]).FromBytes(signed)
	if err != nil {
		return fmt.Errorf("parse targets metadata: %w", err)
	}
	fmt.Fprintf(w, "targets metadata version %d, expires %s, %d releases:\n", t.Signed.Version, t.Signed.Expires.Format(time.RFC3339), len(t.Signed.Targets))
	paths := make([]string, 0, len(t.Signed.Targets))
	for p := range t.Signed.Targets {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  TARGET\tVERSION\tMODELS\tBYTES\tSHA256\tROLLBACK")
	for _, p := range paths {
		tf := t.Signed.Targets[p]
		custom, err := firmware.ParseTargetCustom(tf.Custom)
		if err != nil {
			fmt.Fprintf(tw, "  %s\t?\t?\t%d\t%x\t(no valid manifest: %v)\n", p, tf.Length, []byte(tf.Hashes["sha256"]), err)
			continue
		}
		m := custom.Manifest
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%x\t%t\n", p, m.Version, strings.Join(m.Models, ","), tf.Length, []byte(tf.Hashes["sha256"]), custom.AllowRollback)
	}
	return tw.Flush()
}

func releaseApproveCmd(e *env) *cobra.Command {
	var targets, key, root string
	cmd := &cobra.Command{
		Use:   "approve",
		Short: "Add your release key's signature to signed targets metadata (offline) and show who is missing",
		Long: `The second (third, ...) person's approval of a release: prints what the
targets metadata publishes, adds your signature without changing anything
else, and shows who has signed and who is still missing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			signed, err := readFlagFile("targets", targets)
			if err != nil {
				return err
			}
			if err := describeTargets(e.stdout, signed); err != nil {
				return err
			}
			approved, err := e.cosign(cmd.Context(), targets, key, signing.Approve)
			if err != nil {
				return err
			}
			return e.printTargetsStatus(root, approved)
		},
	}
	cmd.Flags().StringVar(&targets, "targets", "", "signed targets metadata, updated in place (required)")
	cmd.Flags().StringVar(&key, "key", "", "your release (targets) key: file or KMS URI (required)")
	cmd.Flags().StringVar(&root, "root", "", "the release repository's root, to show who has signed and who is missing")
	cmd.MarkFlagRequired("targets")
	cmd.MarkFlagRequired("key")
	return cmd
}

func releaseStatusCmd(e *env) *cobra.Command {
	var targets, root string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show what signed targets metadata publishes, who has signed it and who is missing",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			signed, err := readFlagFile("targets", targets)
			if err != nil {
				return err
			}
			if err := describeTargets(e.stdout, signed); err != nil {
				return err
			}
			return e.printTargetsStatus(root, signed)
		},
	}
	cmd.Flags().StringVar(&targets, "targets", "", "signed targets metadata (required)")
	cmd.Flags().StringVar(&root, "root", "", "the release repository's root (required)")
	cmd.MarkFlagRequired("targets")
	cmd.MarkFlagRequired("root")
	return cmd
}

func releaseAllowRollbackCmd(e *env) *cobra.Command {
	var o signOptions
	var target string
	var clear bool
	cmd := &cobra.Command{
		Use:   "allow-rollback",
		Short: "Sign (offline) that devices may go back to an already published release",
		Long: `Writes the next targets metadata with the rollback flag of one published
release set (or cleared with --clear). Devices refuse any release older than
what they run unless the release keys signed this flag for it. Approve it
like a release, then upload it with 'aftercare release upload --targets'.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return e.signNext(cmd.Context(), o, fmt.Sprintf("allow_rollback=%t for %s", !clear, target), func(current []byte, s signature.Signer) ([]byte, error) {
				return signing.SetRollback(signing.SetRollbackOptions{Current: current, Target: target, AllowRollback: !clear, Signer: s, Expires: time.Now().Add(o.Expires)})
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&target, "target", "", "target path of the published release, e.g. infusion-pump/1.0.0/image.zst (required)")
	f.BoolVar(&clear, "clear", false, "clear the flag instead of setting it")
	targetsFlags(cmd, &o)
	cmd.MarkFlagRequired("target")
	return cmd
}

func releaseResignCmd(e *env) *cobra.Command {
	var o signOptions
	cmd := &cobra.Command{
		Use:   "resign",
		Short: "Sign the current targets again (offline): to extend their expiry, or with new release keys after a rotation",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return e.signNext(cmd.Context(), o, "the same targets", func(current []byte, s signature.Signer) ([]byte, error) {
				return signing.Resign(current, s, time.Now().Add(o.Expires))
			})
		},
	}
	targetsFlags(cmd, &o)
	return cmd
}

// signNext signs the next targets version made by next from the current
// targets, writes it to o.Output and shows who has signed it.
func (e *env) signNext(ctx context.Context, o signOptions, what string, next func([]byte, signature.Signer) ([]byte, error)) error {
	current, err := readFlagFile("targets", o.Targets)
	if err != nil {
		return err
	}
	s, err := e.loadKey(ctx, o.Key)
	if err != nil {
		return err
	}
	signed, err := next(current, s)
	if err != nil {
		return err
	}
	if err := os.WriteFile(o.Output, signed, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "signed %s into %s\n", what, o.Output)
	return e.printTargetsStatus(o.Root, signed)
}

// targetsFlags are the flags of commands that sign the next targets
// version without a bundle.
func targetsFlags(cmd *cobra.Command, o *signOptions) {
	f := cmd.Flags()
	f.StringVar(&o.Targets, "targets", "", "current targets metadata (required)")
	f.StringVar(&o.Key, "key", "", "your release (targets) key: file or KMS URI (required)")
	f.StringVarP(&o.Output, "output", "o", "targets.json", "signed targets metadata to write")
	f.StringVar(&o.Root, "root", "", "the release repository's root, to show who has signed and who is missing")
	f.DurationVar(&o.Expires, "expires", 365*24*time.Hour, "validity of the new targets metadata")
	cmd.MarkFlagRequired("targets")
	cmd.MarkFlagRequired("key")
}

func releaseUploadCmd(e *env) *cobra.Command {
	var bundle, targets string
	cmd := &cobra.Command{
		Use:   "upload",
		Short: "Upload signed targets metadata, with the bundle it adds (or alone: a rollback flag, a re-sign)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			signed, err := readFlagFile("targets", targets)
			if err != nil {
				return err
			}
			if bundle == "" {
				return e.uploadTargets(cmd.Context(), signed)
			}
			return e.upload(cmd.Context(), bundle, signed)
		},
	}
	cmd.Flags().StringVar(&bundle, "bundle", "", "release bundle the targets metadata adds")
	cmd.Flags().StringVar(&targets, "targets", "", "signed targets metadata from `aftercare release sign` (required)")
	cmd.MarkFlagRequired("targets")
	return cmd
}

func (e *env) uploadTargets(ctx context.Context, signed []byte) error {
	c, err := e.client()
	if err != nil {
		return err
	}
	var raw []byte
	if err := c.do(ctx, http.MethodPost, "/api/v1/repository/targets", "application/json", bytes.NewReader(signed), &raw); err != nil {
		return err
	}
	var out struct {
		Signed struct {
			Version int `json:"version"`
		} `json:"signed"`
	}
	return e.show(raw, &out, func(w io.Writer) {
		fmt.Fprintf(w, "published targets metadata version %d\n", out.Signed.Version)
	})
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
			var out struct {
				Releases []release `json:"releases"`
			}
			return e.getShow(cmd.Context(), "/api/v1/releases", &out, func(w io.Writer) {
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
