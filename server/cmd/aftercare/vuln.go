package main

import (
	"context"
	"debug/buildinfo"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/aftercare/aftercare/internal/atomicfile"
	"github.com/aftercare/aftercare/server/internal/sbom"
)

// The server's answers, as far as the tables show them; --json prints
// them whole.
type (
	vulnFeed struct {
		Name          string    `json:"name"`
		Kind          string    `json:"kind"`
		Source        string    `json:"source"`
		Records       int       `json:"records"`
		Version       string    `json:"version"`
		ImportedAt    time.Time `json:"imported_at"`
		LastAttemptAt time.Time `json:"last_attempt_at"`
		LastError     string    `json:"last_error"`
	}
	analysis struct {
		Releases     int      `json:"releases"`
		Components   int      `json:"components"`
		Findings     int      `json:"findings"`
		Open         int      `json:"open"`
		New          int      `json:"new"`
		TriageOpened int      `json:"triage_opened"`
		Notes        []string `json:"notes"`
	}
	rule struct {
		Source   string `json:"source"`
		Advisory string `json:"advisory"`
		Text     string `json:"text"`
	}
	finding struct {
		ReleaseID        string  `json:"release_id"`
		Product          string  `json:"product"`
		ReleaseVersion   string  `json:"release_version"`
		VulnID           string  `json:"vuln_id"`
		ComponentName    string  `json:"component_name"`
		ComponentVersion string  `json:"component_version"`
		Severity         string  `json:"severity"`
		CVSS             float64 `json:"cvss"`
		State            string  `json:"state"`
		Rules            []rule  `json:"rules"`
		Evidence         []rule  `json:"evidence"`
		KEV              *struct {
			DateAdded string `json:"date_added"`
		} `json:"kev"`
		EPSS *struct {
			Score float64 `json:"score"`
		} `json:"epss"`
	}
	exposure struct {
		VulnID   string `json:"vuln_id"`
		Known    bool   `json:"known"`
		Summary  string `json:"summary"`
		Severity string `json:"severity"`
		KEV      *struct {
			DateAdded string `json:"date_added"`
		} `json:"kev"`
		EPSS *struct {
			Score float64 `json:"score"`
		} `json:"epss"`
		Exposed  bool `json:"exposed"`
		Releases []struct {
			ReleaseID  string   `json:"release_id"`
			Product    string   `json:"product"`
			Version    string   `json:"version"`
			State      string   `json:"state"`
			Affected   bool     `json:"affected"`
			Components []string `json:"components"`
			Rules      []rule   `json:"rules"`
			Devices    int      `json:"devices"`
		} `json:"releases"`
		Organisations []struct {
			Organisation string `json:"organisation"`
			Devices      int    `json:"devices"`
			Sites        []struct {
				SiteID      string      `json:"site_id"`
				SiteName    string      `json:"site_name"`
				Counts      patchCounts `json:"counts"`
				FixAssigned int         `json:"fix_assigned"`
			} `json:"sites"`
		} `json:"organisations"`
		Devices []device    `json:"devices"`
		Totals  patchCounts `json:"totals"`
	}
	disposition struct {
		Product       string    `json:"product"`
		VulnID        string    `json:"vuln_id"`
		ReleaseID     string    `json:"release_id"`
		Status        string    `json:"status"`
		Justification string    `json:"justification"`
		TargetRelease string    `json:"target_release"`
		FixedRelease  string    `json:"fixed_release"`
		UpdatedBy     string    `json:"updated_by"`
		UpdatedAt     time.Time `json:"updated_at"`
		// history entries
		PreviousStatus string    `json:"previous_status"`
		Actor          string    `json:"actor"`
		Reason         string    `json:"reason"`
		At             time.Time `json:"at"`
	}
	triageItem struct {
		Product  string    `json:"product"`
		VulnID   string    `json:"vuln_id"`
		Severity string    `json:"severity"`
		Reasons  []string  `json:"reasons"`
		OpenedAt time.Time `json:"opened_at"`
		DueAt    time.Time `json:"due_at"`
		ClosedAt time.Time `json:"closed_at"`
	}
)

func vulnCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "vuln",
		Short: "Vulnerability monitoring: feeds, findings, exposure, dispositions, VEX, triage",
		Long: `Every release's SBOM is matched against the vulnerability feeds (OSV, NVD,
CISA KEV, EPSS). Import the feeds from files (no internet needed), see the
findings of a release, ask whether devices are exposed to a CVE, record
dispositions and export VEX. See docs/vulnerability-monitoring.md.`,
	}
	cmd.AddCommand(feedsCmd(e), analyseCmd(e), findingsCmd(e), exposedCmd(e), dispositionCmd(e), vexCmd(e), triageCmd(e), releaseSBOMCmd(e))
	return cmd
}

func feedsCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "feeds", Short: "Import, sync and show the vulnerability feeds"}
	var kind, feedName string
	imp := &cobra.Command{
		Use:   "import --kind osv|nvd|kev|epss FILE...",
		Short: "Import feed files: OSV JSON or all.zip, NVD CVE API 2.0 JSON (.gz), CISA KEV JSON, EPSS CSV (.gz)",
		Long: `Import feed files, each in one transaction: a file that is truncated or of
the wrong kind changes nothing and the error names the record and field.
Every release is re-analysed after each file.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			for _, path := range args {
				f, err := os.Open(path)
				if err != nil {
					return err
				}
				q := url.Values{"name": {filepath.Base(path)}}
				if feedName != "" {
					q.Set("feed", feedName)
				}
				var raw []byte
				err = c.do(cmd.Context(), "POST", "/api/v1/vuln/feeds/"+url.PathEscape(kind)+"?"+q.Encode(), "application/octet-stream", f, &raw)
				f.Close()
				if err != nil {
					return fmt.Errorf("%s: %w", path, err)
				}
				var out struct {
					Feed     vulnFeed `json:"feed"`
					Analysis analysis `json:"analysis"`
				}
				if err := e.show(raw, &out, func(w io.Writer) {
					fmt.Fprintf(w, "%s: %d %s record(s) imported into feed %q\n", path, out.Feed.Records, kind, out.Feed.Name)
					printAnalysis(w, out.Analysis)
				}); err != nil {
					return err
				}
			}
			return nil
		},
	}
	imp.Flags().StringVar(&kind, "kind", "", "feed kind: osv, nvd, kev or epss (required)")
	imp.Flags().StringVar(&feedName, "feed", "", "feed name (default: the kind)")
	imp.MarkFlagRequired("kind")
	status := &cobra.Command{
		Use:   "status",
		Short: "Show each feed's last good import and last attempt",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out struct {
				Feeds []vulnFeed `json:"feeds"`
			}
			return e.getShow(cmd.Context(), "/api/v1/vuln/feeds", &out, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "FEED\tKIND\tRECORDS\tVERSION\tIMPORTED\tSOURCE\tLAST ATTEMPT")
				for _, f := range out.Feeds {
					last := "ok"
					if f.LastError != "" {
						last = "FAILED (last good data kept): " + f.LastError
					}
					fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", f.Name, f.Kind, f.Records, f.Version, when(f.ImportedAt), f.Source, last)
				}
				tw.Flush()
			})
		},
	}
	sync := &cobra.Command{
		Use:   "sync",
		Short: "Fetch the configured feeds from their URLs now (mirrors first, conditional requests)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out struct {
				Feeds []struct {
					Name, Outcome, URL, Error string
					Records                   int
				} `json:"feeds"`
				Analysis *analysis `json:"analysis"`
			}
			return e.postShow(cmd.Context(), "/api/v1/vuln/feeds/sync", struct{}{}, &out, func(w io.Writer) {
				for _, f := range out.Feeds {
					fmt.Fprintf(w, "%s: %s %s %s\n", f.Name, f.Outcome, f.URL, f.Error)
				}
				if out.Analysis != nil {
					printAnalysis(w, *out.Analysis)
				}
			})
		},
	}
	cmd.AddCommand(imp, status, sync)
	return cmd
}

func when(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04")
}

func printAnalysis(w io.Writer, a analysis) {
	fmt.Fprintf(w, "analysed %d release(s), %d component(s): %d finding(s), %d open, %d new; %d triage item(s) opened or escalated\n",
		a.Releases, a.Components, a.Findings, a.Open, a.New, a.TriageOpened)
	for _, n := range a.Notes {
		fmt.Fprintln(w, "  note:", n)
	}
}

func analyseCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "analyse",
		Short: "Re-match every release's SBOM against the stored feeds now",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out analysis
			return e.postShow(cmd.Context(), "/api/v1/vuln/analyse", struct{}{}, &out, func(w io.Writer) { printAnalysis(w, out) })
		},
	}
}

func findingsCmd(e *env) *cobra.Command {
	var releaseID, vulnID string
	var states []string
	var why bool
	cmd := &cobra.Command{
		Use:   "findings [--release ID] [--cve ID] [--state open,patched,...]",
		Short: "List findings: vulnerabilities in release components, with the rule that matched",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out struct {
				Findings []finding `json:"findings"`
			}
			path := "/api/v1/vuln/findings?" + query("release_id", releaseID, "vuln_id", vulnID, "state", strings.Join(states, ","))
			return e.getShow(cmd.Context(), path, &out, func(w io.Writer) { printFindings(w, out.Findings, why) })
		},
	}
	cmd.Flags().StringVar(&releaseID, "release", "", "release ID")
	cmd.Flags().StringVar(&vulnID, "cve", "", "vulnerability ID, e.g. CVE-2023-0286")
	cmd.Flags().StringSliceVar(&states, "state", nil, "open, patched, not_affected, affected, mitigated, patch_planned, fixed")
	cmd.Flags().BoolVar(&why, "why", false, "print the rules that matched and the backport evidence")
	return cmd
}

func printFindings(w io.Writer, fs []finding, why bool) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VULNERABILITY\tSEVERITY\tKEV\tEPSS\tRELEASE\tCOMPONENT\tSTATE\tMATCHED BY")
	for _, f := range fs {
		kev, epss := "", ""
		if f.KEV != nil {
			kev = "yes"
		}
		if f.EPSS != nil {
			epss = fmt.Sprintf("%.3f", f.EPSS.Score)
		}
		by := ""
		if len(f.Rules) > 0 {
			by = f.Rules[0].Source + " " + f.Rules[0].Advisory
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s %s\t%s %s\t%s\t%s\n", f.VulnID, orDash(f.Severity), kev, epss, f.Product, f.ReleaseVersion,
			f.ComponentName, f.ComponentVersion, f.State, by)
	}
	tw.Flush()
	fmt.Fprintf(w, "%d finding(s)\n", len(fs))
	if !why {
		return
	}
	for _, f := range fs {
		fmt.Fprintf(w, "\n%s in %s %s (%s %s):\n", f.VulnID, f.ComponentName, f.ComponentVersion, f.Product, f.ReleaseVersion)
		for _, r := range f.Rules {
			fmt.Fprintf(w, "  matched:  %s\n", r.Text)
		}
		for _, r := range f.Evidence {
			fmt.Fprintf(w, "  not open: %s\n", r.Text)
		}
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func exposedCmd(e *env) *cobra.Command {
	var q struct {
		Name         string   `json:"name,omitempty"`
		PURL         string   `json:"purl,omitempty"`
		Introduced   string   `json:"introduced,omitempty"`
		Fixed        string   `json:"fixed,omitempty"`
		LastAffected string   `json:"last_affected,omitempty"`
		Versions     []string `json:"versions,omitempty"`
	}
	var devices int
	cmd := &cobra.Command{
		Use:   "exposed CVE-ID [--component NAME | --purl PURL] [--introduced V] [--fixed V]",
		Short: "Are we exposed to CVE-X? Affected releases, and their devices by organisation and site with live patch state",
		Long: `Answers from the findings for a vulnerability in the feeds. For one not yet
in the feeds, name the component (--component or --purl) and the affected
versions (--introduced/--fixed/--last-affected or --versions): every
release SBOM is searched with the component's own version ordering.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out exposure
			human := func(w io.Writer) { printExposure(w, out) }
			if q.Name != "" || q.PURL != "" {
				body := map[string]any{"vuln_id": args[0], "devices": devices, "name": q.Name, "purl": q.PURL,
					"introduced": q.Introduced, "fixed": q.Fixed, "last_affected": q.LastAffected, "versions": q.Versions}
				return e.postShow(cmd.Context(), "/api/v1/vuln/exposure", body, &out, human)
			}
			return e.getShow(cmd.Context(), fmt.Sprintf("/api/v1/vuln/exposure/%s?devices=%d", url.PathEscape(args[0]), devices), &out, human)
		},
	}
	cmd.Flags().StringVar(&q.Name, "component", "", "component name (or CPE product), for a vulnerability not in the feeds")
	cmd.Flags().StringVar(&q.PURL, "purl", "", "component purl without version, e.g. pkg:deb/debian/openssl")
	cmd.Flags().StringVar(&q.Introduced, "introduced", "", "first affected version (default: all before --fixed)")
	cmd.Flags().StringVar(&q.Fixed, "fixed", "", "first fixed version")
	cmd.Flags().StringVar(&q.LastAffected, "last-affected", "", "last affected version")
	cmd.Flags().StringSliceVar(&q.Versions, "versions", nil, "affected versions, exactly")
	cmd.Flags().IntVar(&devices, "devices", 0, "also list up to this many exposed devices")
	return cmd
}

func printExposure(w io.Writer, x exposure) {
	head := x.VulnID
	if x.Severity != "" {
		head += " (" + x.Severity + ")"
	}
	if x.KEV != nil {
		head += ", in CISA KEV since " + x.KEV.DateAdded
	}
	if x.EPSS != nil {
		head += fmt.Sprintf(", EPSS %.3f", x.EPSS.Score)
	}
	fmt.Fprintln(w, head)
	if x.Summary != "" {
		fmt.Fprintln(w, "  "+x.Summary)
	}
	if !x.Known {
		fmt.Fprintln(w, "  not in the imported feeds: answered from the component and versions given")
	}
	if len(x.Releases) == 0 {
		fmt.Fprintln(w, "NOT EXPOSED: no release contains an affected component")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RELEASE\tSTATE\tCOMPONENTS\tDEVICES\tRULE")
	for _, r := range x.Releases {
		state := r.State
		if !r.Affected {
			state += " (not affected)"
		}
		ruleText := ""
		if len(r.Rules) > 0 {
			ruleText = r.Rules[0].Text
		}
		fmt.Fprintf(tw, "%s %s\t%s\t%s\t%d\t%s\n", r.Product, r.Version, state, strings.Join(r.Components, ", "), r.Devices, ruleText)
	}
	tw.Flush()
	if !x.Exposed {
		fmt.Fprintln(w, "NOT EXPOSED: no device runs an affected release")
		return
	}
	fmt.Fprintf(w, "EXPOSED: %d device(s): %d current, %d pending, %d installing, %d failed\n", x.Totals.Total, x.Totals.Current, x.Totals.Pending, x.Totals.Installing, x.Totals.Failed)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ORGANISATION\tSITE\tDEVICES\tFIX ASSIGNED\tPENDING\tINSTALLING\tFAILED")
	siteNames := map[string]string{}
	for _, o := range x.Organisations {
		for _, s := range o.Sites {
			siteNames[s.SiteID] = s.SiteName
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\n", orDash(o.Organisation), s.SiteName, s.Counts.Total, s.FixAssigned, s.Counts.Pending, s.Counts.Installing, s.Counts.Failed)
		}
	}
	tw.Flush()
	if len(x.Devices) > 0 {
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "DEVICE\tSITE\tSERIAL\tRUNNING\tTARGET\tSTATUS")
		for _, d := range x.Devices {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, siteNames[d.SiteID], d.Serial, d.InstalledVersion, orDash(d.TargetVersion), d.Status)
		}
		tw.Flush()
	}
}

func dispositionCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "disposition", Short: "Record and list decisions about vulnerabilities (per product line, per-release overrides)"}
	var req struct {
		Product       string `json:"product,omitempty"`
		VulnID        string `json:"vuln_id"`
		ReleaseID     string `json:"release_id,omitempty"`
		Status        string `json:"status"`
		Justification string `json:"justification,omitempty"`
		Detail        string `json:"detail,omitempty"`
		TargetRelease string `json:"target_release,omitempty"`
		FixedRelease  string `json:"fixed_release,omitempty"`
		Reason        string `json:"reason"`
	}
	set := &cobra.Command{
		Use:   "set --cve ID (--product P | --release ID) --status S --reason TEXT",
		Short: "Record a decision: not_affected (with --justification), affected, mitigated, patch_planned (--target-release), fixed (--fixed-release)",
		Long: `Record a decision for a vulnerability in a product line, or with --release
for one release only (an override). Every change is kept with who, when
and --reason. Justifications for not_affected: component_not_present,
vulnerable_code_not_present, vulnerable_code_not_in_execute_path,
vulnerable_code_cannot_be_controlled_by_adversary,
inline_mitigations_already_exist.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out disposition
			return e.postShow(cmd.Context(), "/api/v1/vuln/dispositions", req, &out, func(w io.Writer) {
				from := ""
				if out.PreviousStatus != "" {
					from = " (was " + out.PreviousStatus + ")"
				}
				fmt.Fprintf(w, "%s in %s%s: %s%s, recorded by %s\n", out.VulnID, out.Product, releaseSuffix(out.ReleaseID), out.Status, from, out.Actor)
			})
		},
	}
	set.Flags().StringVar(&req.VulnID, "cve", "", "vulnerability ID (required)")
	set.Flags().StringVar(&req.Product, "product", "", "product line")
	set.Flags().StringVar(&req.ReleaseID, "release", "", "release ID: override for this release only")
	set.Flags().StringVar(&req.Status, "status", "", "not_affected, affected, mitigated, patch_planned or fixed (required)")
	set.Flags().StringVar(&req.Justification, "justification", "", "for not_affected")
	set.Flags().StringVar(&req.Detail, "detail", "", "impact or action statement shown in VEX")
	set.Flags().StringVar(&req.TargetRelease, "target-release", "", "for patch_planned: the version that will fix it")
	set.Flags().StringVar(&req.FixedRelease, "fixed-release", "", "for fixed: the version that fixes it")
	set.Flags().StringVar(&req.Reason, "reason", "", "why (required; kept in the history)")
	var product, vulnID string
	list := &cobra.Command{
		Use:   "list [--product P] [--cve ID]",
		Short: "List current decisions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return listDispositions(cmd.Context(), e, "/api/v1/vuln/dispositions", "dispositions", product, vulnID)
		},
	}
	history := &cobra.Command{
		Use:   "history [--product P] [--cve ID]",
		Short: "List every change of a decision: who, when, why",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return listDispositions(cmd.Context(), e, "/api/v1/vuln/dispositions/history", "history", product, vulnID)
		},
	}
	for _, c := range []*cobra.Command{list, history} {
		c.Flags().StringVar(&product, "product", "", "product line")
		c.Flags().StringVar(&vulnID, "cve", "", "vulnerability ID")
	}
	cmd.AddCommand(set, list, history)
	return cmd
}

func releaseSuffix(id string) string {
	if id == "" {
		return ""
	}
	return " release " + id
}

func listDispositions(ctx context.Context, e *env, path, key, product, vulnID string) error {
	var out map[string][]disposition
	return e.getShow(ctx, path+"?"+query("product", product, "vuln_id", vulnID), &out, func(w io.Writer) {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		if key == "history" {
			fmt.Fprintln(tw, "WHEN\tWHO\tVULNERABILITY\tPRODUCT\tRELEASE\tFROM\tTO\tWHY")
			for _, d := range out[key] {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", when(d.At), d.Actor, d.VulnID, d.Product, orDash(d.ReleaseID), orDash(d.PreviousStatus), d.Status, d.Reason)
			}
		} else {
			fmt.Fprintln(tw, "VULNERABILITY\tPRODUCT\tRELEASE\tSTATUS\tDETAIL\tBY\tWHEN")
			for _, d := range out[key] {
				detail := d.Justification + d.TargetRelease + d.FixedRelease
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.VulnID, d.Product, orDash(d.ReleaseID), d.Status, orDash(detail), d.UpdatedBy, when(d.UpdatedAt))
			}
		}
		tw.Flush()
	})
}

func vexCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "vex", Short: "Export a release's VEX, import a supplier's VEX"}
	var releaseID, format, output string
	export := &cobra.Command{
		Use:   "export --release ID [--format openvex|cyclonedx] [-o FILE]",
		Short: "Write the VEX document of a release: one statement per vulnerability found in it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			var raw []byte
			if err := c.getJSON(cmd.Context(), "/api/v1/releases/"+url.PathEscape(releaseID)+"/vex?format="+url.QueryEscape(format), &raw); err != nil {
				return err
			}
			if output == "" || output == "-" {
				_, err := e.stdout.Write(raw)
				return err
			}
			if err := atomicfile.WriteFile(output, raw, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(e.stderr, "wrote %s (%s)\n", output, format)
			return nil
		},
	}
	export.Flags().StringVar(&releaseID, "release", "", "release ID (required)")
	export.Flags().StringVar(&format, "format", "openvex", "openvex or cyclonedx")
	export.Flags().StringVarP(&output, "output", "o", "", "file to write (default standard output)")
	export.MarkFlagRequired("release")
	imp := &cobra.Command{
		Use:   "import FILE",
		Short: "Import a supplier's VEX (OpenVEX or CycloneDX): its not_affected and fixed statements close matching findings",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			var raw []byte
			if err := c.do(cmd.Context(), "POST", "/api/v1/vuln/vex", "application/json", f, &raw); err != nil {
				return err
			}
			var out struct {
				Document   string   `json:"document"`
				Format     string   `json:"format"`
				Author     string   `json:"author"`
				Statements int      `json:"statements"`
				Analysis   analysis `json:"analysis"`
			}
			return e.show(raw, &out, func(w io.Writer) {
				fmt.Fprintf(w, "%s VEX %s by %s: %d statement(s)\n", out.Format, out.Document, orDash(out.Author), out.Statements)
				printAnalysis(w, out.Analysis)
			})
		},
	}
	cmd.AddCommand(export, imp)
	return cmd
}

func triageCmd(e *env) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "triage [--all]",
		Short: "List triage items: serious new findings waiting for a decision, with their SLA deadline",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out struct {
				Triage []triageItem `json:"triage"`
			}
			return e.getShow(cmd.Context(), fmt.Sprintf("/api/v1/vuln/triage?open=%v", !all), &out, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "VULNERABILITY\tPRODUCT\tSEVERITY\tREASONS\tOPENED\tDUE\tSTATE")
				now := time.Now()
				for _, it := range out.Triage {
					state := "open"
					switch {
					case !it.ClosedAt.IsZero():
						state = "decided " + when(it.ClosedAt)
					case now.After(it.DueAt):
						state = "OVERDUE"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", it.VulnID, it.Product, orDash(it.Severity), strings.Join(it.Reasons, ","), when(it.OpenedAt), when(it.DueAt), state)
				}
				tw.Flush()
			})
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "include decided items")
	return cmd
}

func releaseSBOMCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "sbom RELEASE_ID",
		Short: "Show a release's ingested SBOM and its components",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out struct {
				SBOM struct {
					Format      string   `json:"format"`
					SpecVersion string   `json:"spec_version"`
					Components  int      `json:"components"`
					Warnings    []string `json:"warnings"`
					Error       string   `json:"error"`
				} `json:"sbom"`
				Components []struct {
					Name, Version, PURL string
					CPEs                []string
					Patched             []string
				} `json:"components"`
			}
			return e.getShow(cmd.Context(), "/api/v1/releases/"+url.PathEscape(args[0])+"/sbom", &out, func(w io.Writer) {
				if out.SBOM.Error != "" {
					fmt.Fprintln(w, "SBOM not ingested:", out.SBOM.Error)
					return
				}
				fmt.Fprintf(w, "%s %s, %d component(s)\n", out.SBOM.Format, out.SBOM.SpecVersion, out.SBOM.Components)
				for _, warn := range out.SBOM.Warnings {
					fmt.Fprintln(w, "  warning:", warn)
				}
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tVERSION\tPURL\tCPE\tPATCHED")
				for _, c := range out.Components {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.Name, c.Version, orDash(c.PURL), orDash(strings.Join(c.CPEs, " ")), strings.Join(c.Patched, " "))
				}
				tw.Flush()
			})
		},
	}
}

// query encodes the pairs whose value is not empty.
func query(kv ...string) string {
	q := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] != "" {
			q.Set(kv[i], kv[i+1])
		}
	}
	return q.Encode()
}

// getShow GETs path and shows the answer: view through human, or the
// JSON as it is with --json.
func (e *env) getShow(ctx context.Context, path string, view any, human func(io.Writer)) error {
	c, err := e.client()
	if err != nil {
		return err
	}
	var raw []byte
	if err := c.getJSON(ctx, path, &raw); err != nil {
		return err
	}
	return e.show(raw, view, human)
}

// postShow POSTs body as JSON to path and shows the answer like getShow.
func (e *env) postShow(ctx context.Context, path string, body, view any, human func(io.Writer)) error {
	c, err := e.client()
	if err != nil {
		return err
	}
	var raw []byte
	if err := c.postJSON(ctx, path, body, &raw); err != nil {
		return err
	}
	return e.show(raw, view, human)
}

// sbomCmd works offline: it needs no server.
func sbomCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "sbom", Short: "Make and check SBOMs (offline)"}
	var name, version, output string
	goBinary := &cobra.Command{
		Use:   "go-binary BINARY -o FILE",
		Short: "Write a CycloneDX 1.6 SBOM of a Go binary from its embedded build information",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			bi, err := buildinfo.ReadFile(args[0])
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			if name == "" {
				name = filepath.Base(args[0])
			}
			var buf strings.Builder
			if err := sbom.WriteGoBinary(&buf, bi, name, version, time.Now()); err != nil {
				return err
			}
			if output == "" || output == "-" {
				_, err := io.WriteString(e.stdout, buf.String())
				return err
			}
			return atomicfile.WriteFile(output, []byte(buf.String()), 0o644)
		},
	}
	goBinary.Flags().StringVar(&name, "name", "", "product name (default: the file name)")
	goBinary.Flags().StringVar(&version, "version", "", "product version (default: the main module's)")
	goBinary.Flags().StringVarP(&output, "output", "o", "", "file to write (default standard output)")
	check := &cobra.Command{
		Use:   "check FILE",
		Short: "Parse an SBOM as the server will (CycloneDX 1.2-1.7 or SPDX 2.2/2.3 JSON) and report every problem",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			doc, err := sbom.Parse(b, sbom.Limits{})
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			fmt.Fprintf(e.stdout, "%s: %s %s, %d component(s)\n", args[0], doc.Format, doc.SpecVersion, len(doc.Components))
			for _, w := range doc.Warnings {
				fmt.Fprintln(e.stdout, "  warning:", w)
			}
			return nil
		},
	}
	cmd.AddCommand(goBinary, check)
	return cmd
}
