package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

// rolloutView is what the server answers for a rollout.
type rolloutView struct {
	ID           string         `json:"id"`
	ReleaseID    string         `json:"release_id"`
	Version      string         `json:"version"`
	Status       string         `json:"status"`
	StatusReason string         `json:"status_reason"`
	Wave         int            `json:"wave"`
	Steps        []int          `json:"steps"`
	Counts       map[string]int `json:"counts"`
	Devices      []string       `json:"devices"`
	CreatedBy    string         `json:"created_by"`
	CreatedAt    time.Time      `json:"created_at"`
	Decisions    []struct {
		SiteID        string    `json:"site_id"`
		Decision      string    `json:"decision"`
		DeferredUntil time.Time `json:"deferred_until"`
		Reason        string    `json:"reason"`
		Actor         string    `json:"actor"`
	} `json:"decisions"`
	Cohort []struct {
		DeviceID string `json:"device_id"`
		SiteID   string `json:"site_id"`
		Wave     int    `json:"wave"`
		State    string `json:"state"`
		Reason   string `json:"reason"`
	} `json:"cohort"`
	Events []rolloutEvent `json:"events"`
}

// rolloutEvent is what the scheduler did by itself: a wave opened, a halt,
// completion, a deferral reminder or end.
type rolloutEvent struct {
	Kind   string    `json:"kind"`
	SiteID string    `json:"site_id"`
	Detail string    `json:"detail"`
	At     time.Time `json:"at"`
}

func printRolloutEvents(w io.Writer, events []rolloutEvent) {
	for _, ev := range events {
		fmt.Fprintf(w, "  %s %s", ev.At.Format(time.RFC3339), ev.Kind)
		if ev.SiteID != "" {
			fmt.Fprintf(w, " site %s", ev.SiteID)
		}
		fmt.Fprintf(w, ": %s\n", ev.Detail)
	}
}

func (v rolloutView) summary(w io.Writer) {
	fmt.Fprintf(w, "rollout %s: release %s (%s), %s", v.ID, v.ReleaseID, v.Version, v.Status)
	if len(v.Steps) > 0 {
		fmt.Fprintf(w, ", wave %d of %d %v", v.Wave+1, len(v.Steps), v.Steps)
	}
	fmt.Fprintf(w, ", %s\n", countsLine(v.Counts))
	if v.StatusReason != "" {
		fmt.Fprintf(w, "  %s\n", v.StatusReason)
	}
}

func countsLine(c map[string]int) string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%d %s", c[k], k))
	}
	if len(parts) == 0 {
		return "no devices"
	}
	return strings.Join(parts, ", ")
}

// parseBudget reads "3" (devices) or "10%".
func parseBudget(flag, s string) (map[string]float64, error) {
	if s == "" {
		return nil, nil
	}
	if p, ok := strings.CutSuffix(s, "%"); ok {
		v, err := strconv.ParseFloat(p, 64)
		if err != nil {
			return nil, fmt.Errorf("--%s %q: want a number of devices or a percentage such as 10%%", flag, s)
		}
		return map[string]float64{"percent": v}, nil
	}
	v, err := strconv.Atoi(s)
	if err != nil {
		return nil, fmt.Errorf("--%s %q: want a number of devices or a percentage such as 10%%", flag, s)
	}
	return map[string]float64{"max": float64(v)}, nil
}

func parseLabels(flag string, list []string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range list {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--%s %q: want NAME=VALUE", flag, kv)
		}
		out[k] = v
	}
	return out, nil
}

func rolloutCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "rollout", Short: "Roll a release out to devices, in waves, and steer it"}
	var (
		releaseID, soak, siteBudget, roleBudget, severity, reason string
		sites, models, hwrevs, versions, labels                   []string
		canary, rateAfterNotified, rateAfterSucceeded             int
		waves                                                     []float64
		maxFailure, rateMax, rateBase, rateFactor                 float64
		dynamic                                                   bool
	)
	create := &cobra.Command{
		Use:   "create",
		Short: "Roll a release out: by default to every device of its models at once; with --canary/--waves in stages",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			lbl, err := parseLabels("label", labels)
			if err != nil {
				return err
			}
			sb, err := parseBudget("site-budget", siteBudget)
			if err != nil {
				return err
			}
			rb, err := parseBudget("role-budget", roleBudget)
			if err != nil {
				return err
			}
			cohort := map[string]any{"models": models, "site_ids": sites, "hardware_revisions": hwrevs, "installed_versions": versions}
			if len(lbl) > 0 {
				cohort["labels"] = lbl
			}
			req := map[string]any{"release_id": releaseID, "cohort": cohort, "canary": canary, "waves": waves,
				"max_failure_percent": maxFailure, "dynamic": dynamic, "severity": severity, "reason": reason}
			if soak != "" {
				req["soak"] = soak
			}
			if sb != nil {
				req["site_budget"] = sb
			}
			if rb != nil {
				req["role_budget"] = rb
			}
			if rateMax > 0 || rateBase > 0 {
				req["rate"] = map[string]any{"max_per_minute": rateMax, "base_per_minute": rateBase, "increment_factor": rateFactor,
					"notified_threshold": rateAfterNotified, "succeeded_threshold": rateAfterSucceeded}
			}
			var raw []byte
			if err := c.postJSON(cmd.Context(), "/api/v1/rollouts", req, &raw); err != nil {
				return err
			}
			var out rolloutView
			return e.show(raw, &out, func(w io.Writer) {
				fmt.Fprintf(w, "rollout %s: %d device(s) assigned and notified\n", out.ID, len(out.Devices))
				out.summary(w)
			})
		},
	}
	f := create.Flags()
	f.StringVar(&releaseID, "release", "", "release ID (required)")
	f.StringSliceVar(&sites, "site", nil, "cohort: site ID (repeatable; default all sites)")
	f.StringSliceVar(&models, "model", nil, "cohort: hardware model (repeatable; default the release's models)")
	f.StringSliceVar(&hwrevs, "hardware-revision", nil, "cohort: hardware revision (repeatable)")
	f.StringSliceVar(&versions, "installed-version", nil, "cohort: installed version (repeatable)")
	f.StringArrayVar(&labels, "label", nil, "cohort: device label NAME=VALUE (repeatable; all must match)")
	f.BoolVar(&dynamic, "dynamic", false, "devices that enroll or enter the cohort later join the rollout")
	f.IntVar(&canary, "canary", 0, "devices in a first canary wave")
	f.Float64SliceVar(&waves, "waves", nil, "cumulative percentages of the cohort, ending at 100, e.g. 1,10,50,100")
	f.StringVar(&soak, "soak", "", "time a settled wave is watched before the next opens, e.g. 2h")
	f.Float64Var(&maxFailure, "max-failure", 0, "halt when more than this percentage of finished devices failed (default: never halt)")
	f.StringVar(&siteBudget, "site-budget", "", "at most N devices or N% of a site installing at once")
	f.StringVar(&roleBudget, "role-budget", "", "at most N devices or N% of one role (label role=...) at a site installing at once")
	f.Float64Var(&rateMax, "rate", 0, "at most this many devices notified per minute (with --rate-base: the cap)")
	f.Float64Var(&rateBase, "rate-base", 0, "exponential rate: devices per minute to start with")
	f.Float64Var(&rateFactor, "rate-factor", 0, "exponential rate: multiply the rate by this factor ...")
	f.IntVar(&rateAfterNotified, "rate-after-notified", 0, "... each time this many more devices were notified")
	f.IntVar(&rateAfterSucceeded, "rate-after-succeeded", 0, "... or each time this many more devices succeeded")
	f.StringVar(&severity, "severity", "", "critical, high, medium (default) or low: bounds how long a site may defer")
	f.StringVar(&reason, "reason", "", "why, for the audit log")

	list := &cobra.Command{
		Use:   "list",
		Short: "List rollouts, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out struct {
				Rollouts []rolloutView `json:"rollouts"`
			}
			return e.getShow(cmd.Context(), "/api/v1/rollouts", &out, func(w io.Writer) {
				for _, r := range out.Rollouts {
					r.summary(w)
				}
			})
		},
	}
	show := &cobra.Command{
		Use:   "show ROLLOUT",
		Short: "Show a rollout and each device of its cohort",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out rolloutView
			return e.getShow(cmd.Context(), "/api/v1/rollouts/"+url.PathEscape(args[0]), &out, func(w io.Writer) {
				out.summary(w)
				for _, d := range out.Decisions {
					fmt.Fprintf(w, "  site %s %s by %s: %s", d.SiteID, d.Decision, d.Actor, d.Reason)
					if !d.DeferredUntil.IsZero() {
						fmt.Fprintf(w, " (until %s)", d.DeferredUntil.Format(time.RFC3339))
					}
					fmt.Fprintln(w)
				}
				printRolloutEvents(w, out.Events)
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "DEVICE\tSITE\tWAVE\tSTATE\tREASON")
				for _, d := range out.Cohort {
					wave := "-"
					if d.Wave >= 0 {
						wave = strconv.Itoa(d.Wave + 1)
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", d.DeviceID, d.SiteID, wave, d.State, d.Reason)
				}
				tw.Flush()
			})
		},
	}
	cmd.AddCommand(create, list, show)
	for _, action := range []string{"pause", "resume", "abort", "rollback"} {
		cmd.AddCommand(rolloutActionCmd(e, action))
	}
	return cmd
}

func rolloutActionCmd(e *env, action string) *cobra.Command {
	var reason string
	short := map[string]string{
		"pause":    "Stop assigning more devices; devices installing go on",
		"resume":   "Resume a paused or halted rollout (accepts the failures so far)",
		"abort":    "End a rollout and withdraw the assignments of devices that have not installed",
		"rollback": "Abort and roll devices back to the release they ran, if it is signed with allow_rollback",
	}[action]
	cmd := &cobra.Command{
		Use:   action + " ROLLOUT --reason TEXT",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := "/api/v1/rollouts/" + url.PathEscape(args[0]) + "/" + action
			body := map[string]string{"reason": reason}
			if action == "rollback" {
				var out struct {
					Rollouts []rolloutView `json:"rollouts"`
				}
				return e.postShow(cmd.Context(), path, body, &out, func(w io.Writer) {
					for _, r := range out.Rollouts {
						r.summary(w)
					}
				})
			}
			var out rolloutView
			return e.postShow(cmd.Context(), path, body, &out, func(w io.Writer) { out.summary(w) })
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, for the audit log (required)")
	return cmd
}

type sitePolicyView struct {
	SiteID   string `json:"site_id"`
	Approval string `json:"approval"`
	TimeZone string `json:"timezone"`
	Windows  []struct {
		Day   string `json:"day"`
		Start string `json:"start"`
		End   string `json:"end"`
	} `json:"windows"`
}

func (p sitePolicyView) print(w io.Writer) {
	fmt.Fprintf(w, "site %s: approval %s", p.SiteID, p.Approval)
	if len(p.Windows) == 0 {
		fmt.Fprintln(w, ", installs any time")
		return
	}
	var ws []string
	for _, x := range p.Windows {
		ws = append(ws, x.Day+" "+x.Start+"-"+x.End)
	}
	fmt.Fprintf(w, ", installs only %s (%s)\n", strings.Join(ws, ", "), p.TimeZone)
}

// putPolicy reads a site's policy, lets change modify it and stores it.
func putPolicy(cmd *cobra.Command, e *env, siteID, reason string, change func(map[string]any) error) error {
	c, err := e.client()
	if err != nil {
		return err
	}
	path := "/api/v1/sites/" + url.PathEscape(siteID) + "/policy"
	var cur map[string]any
	if err := c.getJSON(cmd.Context(), path, &cur); err != nil {
		return err
	}
	delete(cur, "site_id")
	if err := change(cur); err != nil {
		return err
	}
	cur["reason"] = reason
	b, err := json.Marshal(cur)
	if err != nil {
		return err
	}
	var raw []byte
	if err := c.do(cmd.Context(), http.MethodPut, path, "application/json", bytes.NewReader(b), &raw); err != nil {
		return err
	}
	var out sitePolicyView
	return e.show(raw, &out, func(w io.Writer) { out.print(w) })
}

// sitePolicyCmds adds "policy" and "window" to the site command.
func sitePolicyCmds(e *env, site *cobra.Command) *cobra.Command {
	var approval, reason, tz string
	var windows []string
	policy := &cobra.Command{Use: "policy", Short: "Show or set how a site takes patches"}
	set := &cobra.Command{
		Use:   "set SITE --approval auto|approval",
		Short: "Install automatically, or hold devices until the site's IT approves",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return putPolicy(cmd, e, args[0], reason, func(p map[string]any) error {
				p["approval"] = approval
				return nil
			})
		},
	}
	set.Flags().StringVar(&approval, "approval", "auto", "auto or approval")
	set.Flags().StringVar(&reason, "reason", "", "why, for the audit log")
	showPolicy := &cobra.Command{
		Use:   "show SITE",
		Short: "Show a site's approval policy and maintenance windows",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out sitePolicyView
			return e.getShow(cmd.Context(), "/api/v1/sites/"+url.PathEscape(args[0])+"/policy", &out, func(w io.Writer) { out.print(w) })
		},
	}
	policy.AddCommand(set, showPolicy)
	window := &cobra.Command{Use: "window", Short: "Set a site's weekly maintenance windows"}
	wset := &cobra.Command{
		Use:   "set SITE --timezone ZONE --window DAY/HH:MM-HH:MM ...",
		Short: "Install and reboot only inside these weekly windows, in the site's time zone (none: any time)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var list []map[string]string
			for _, w := range windows {
				day, span, ok1 := strings.Cut(w, "/")
				start, end, ok2 := strings.Cut(span, "-")
				if !ok1 || !ok2 {
					return fmt.Errorf("--window %q: want DAY/HH:MM-HH:MM, e.g. sat/01:00-05:00", w)
				}
				list = append(list, map[string]string{"day": day, "start": start, "end": end})
			}
			return putPolicy(cmd, e, args[0], reason, func(p map[string]any) error {
				p["timezone"], p["windows"] = tz, list
				return nil
			})
		},
	}
	wset.Flags().StringVar(&tz, "timezone", "", "IANA time zone of the site, e.g. Europe/Berlin")
	wset.Flags().StringArrayVar(&windows, "window", nil, "weekly window DAY/HH:MM-HH:MM (repeatable), e.g. sat/01:00-05:00")
	wset.Flags().StringVar(&reason, "reason", "", "why, for the audit log")
	window.AddCommand(wset)
	site.AddCommand(policy, window)
	return site
}

// deviceLabelCmd adds "label" to the devices command.
func deviceLabelCmd(e *env, devices *cobra.Command) *cobra.Command {
	label := &cobra.Command{
		Use:   "label DEVICE NAME=VALUE ...",
		Short: "Set device labels for rollout cohorts (role=... names its role for disruption budgets; NAME= removes one)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			lbl, err := parseLabels("label", args[1:])
			if err != nil {
				return err
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			b, _ := json.Marshal(map[string]any{"labels": lbl})
			var raw []byte
			if err := c.do(cmd.Context(), http.MethodPut, "/api/v1/devices/"+url.PathEscape(args[0])+"/labels", "application/json", bytes.NewReader(b), &raw); err != nil {
				return err
			}
			var out struct{}
			return e.show(raw, &out, func(w io.Writer) { fmt.Fprintf(w, "device %s: %d label(s) set\n", args[0], len(lbl)) })
		},
	}
	devices.AddCommand(label)
	return devices
}

type pendingView struct {
	Pending []struct {
		RolloutID     string    `json:"rollout_id"`
		Product       string    `json:"product"`
		Version       string    `json:"version"`
		Notes         string    `json:"notes"`
		Severity      string    `json:"severity"`
		Devices       int       `json:"devices"`
		MaxDeferUntil time.Time `json:"max_defer_until"`
		Overdue       bool      `json:"overdue"`
		Decision      *struct {
			Decision      string    `json:"decision"`
			DeferredUntil time.Time `json:"deferred_until"`
			Reason        string    `json:"reason"`
			Actor         string    `json:"actor"`
		} `json:"decision"`
		Events []rolloutEvent `json:"events"`
	} `json:"pending"`
}

func (p pendingView) print(w io.Writer) {
	if len(p.Pending) == 0 {
		fmt.Fprintln(w, "no patch waits for this site")
	}
	for _, x := range p.Pending {
		fmt.Fprintf(w, "%s %s (%s), rollout %s: %d device(s); may be deferred until %s\n", x.Product, x.Version, x.Severity, x.RolloutID, x.Devices, x.MaxDeferUntil.Format(time.RFC3339))
		if d := x.Decision; d != nil {
			fmt.Fprintf(w, "  %s by %s: %s", d.Decision, d.Actor, d.Reason)
			if !d.DeferredUntil.IsZero() {
				fmt.Fprintf(w, " (until %s)", d.DeferredUntil.Format(time.RFC3339))
			}
			if x.Overdue {
				fmt.Fprint(w, " - deferral ended, awaiting approval")
			}
			fmt.Fprintln(w)
		} else {
			fmt.Fprintln(w, "  awaiting approval")
		}
		if x.Notes != "" {
			fmt.Fprintf(w, "  notes: %s\n", strings.ReplaceAll(x.Notes, "\n", "\n         "))
		}
		printRolloutEvents(w, x.Events)
	}
}

// approvalCmds are the hospital IT's commands: pending, approve, defer,
// decline.
func approvalCmds(e *env) []*cobra.Command {
	pending := &cobra.Command{
		Use:   "pending SITE",
		Short: "List the patches waiting for a site's decision, with release notes and severity",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out pendingView
			return e.getShow(cmd.Context(), "/api/v1/sites/"+url.PathEscape(args[0])+"/pending", &out, func(w io.Writer) { out.print(w) })
		},
	}
	decide := func(action, short string) *cobra.Command {
		var reason, until string
		cmd := &cobra.Command{
			Use:   action + " SITE ROLLOUT --reason TEXT",
			Short: short,
			Args:  cobra.ExactArgs(2),
			RunE: func(cmd *cobra.Command, args []string) error {
				c, err := e.client()
				if err != nil {
					return err
				}
				body := map[string]any{"reason": reason}
				if action == "defer" {
					t, err := parseUntil(until)
					if err != nil {
						return err
					}
					body["until"] = t
				}
				var raw []byte
				path := "/api/v1/sites/" + url.PathEscape(args[0]) + "/pending/" + url.PathEscape(args[1]) + "/" + action
				if err := c.postJSON(cmd.Context(), path, body, &raw); err != nil {
					return err
				}
				var out pendingView
				return e.show(raw, &out, func(w io.Writer) { out.print(w) })
			},
		}
		cmd.Flags().StringVar(&reason, "reason", "", "why, for the audit log (required to defer or decline)")
		if action == "defer" {
			cmd.Flags().StringVar(&until, "until", "", "until when: RFC 3339 time or a duration from now such as 72h (required)")
		}
		return cmd
	}
	return []*cobra.Command{pending,
		decide("approve", "Let a site's held devices take the patch"),
		decide("defer", "Hold a site's devices until a later time, within the maximum for the patch's severity"),
		decide("decline", "Keep a site's devices off the patch; it stays visible as risk"),
	}
}

func parseUntil(s string) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return time.Now().Add(d).UTC().Truncate(time.Second), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("--until %q: want an RFC 3339 time such as 2026-04-01T00:00:00Z or a duration such as 72h", s)
	}
	return t, nil
}

type complianceSite struct {
	Site   site `json:"site"`
	Counts struct {
		Total, Current, Pending, Installing, Failed, Declined, Deferred int
		AwaitingApproval                                                int `json:"awaiting_approval"`
	} `json:"counts"`
	Declined []struct {
		Version string `json:"version"`
		Notes   string `json:"notes"`
		Reason  string `json:"reason"`
	} `json:"declined"`
	Devices []struct {
		DeviceID         string `json:"device_id"`
		InstalledVersion string `json:"installed_version"`
		TargetVersion    string `json:"target_version"`
		Status           string `json:"status"`
		Reason           string `json:"reason"`
	} `json:"devices"`
}

func complianceCmd(e *env) *cobra.Command {
	var siteID string
	cmd := &cobra.Command{
		Use:   "compliance",
		Short: "Show per-site compliance (current, pending, failed, declined, deferred), or every device of one site with --site",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if siteID != "" {
				var out complianceSite
				return e.getShow(cmd.Context(), "/api/v1/sites/"+url.PathEscape(siteID)+"/compliance", &out, func(w io.Writer) {
					printCompliance(w, []complianceSite{out})
					tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "DEVICE\tINSTALLED\tTARGET\tSTATUS\tREASON")
					for _, d := range out.Devices {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", d.DeviceID, d.InstalledVersion, d.TargetVersion, d.Status, d.Reason)
					}
					tw.Flush()
				})
			}
			var out struct {
				Sites         []complianceSite `json:"sites"`
				Organisations []struct {
					Organisation string `json:"organisation"`
					Sites        int    `json:"sites"`
					Counts       struct {
						Total, Current, Pending, Failed, Declined, Deferred int
					} `json:"counts"`
				} `json:"organisations"`
			}
			return e.getShow(cmd.Context(), "/api/v1/compliance", &out, func(w io.Writer) {
				printCompliance(w, out.Sites)
				for _, o := range out.Organisations {
					c := o.Counts
					fmt.Fprintf(w, "organisation %s: %d site(s), %d device(s): %d current, %d pending, %d failed, %d declined, %d deferred\n",
						o.Organisation, o.Sites, c.Total, c.Current, c.Pending, c.Failed, c.Declined, c.Deferred)
				}
			})
		},
	}
	cmd.Flags().StringVar(&siteID, "site", "", "site ID: list its devices")
	return cmd
}

func printCompliance(w io.Writer, sites []complianceSite) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SITE\tORGANISATION\tDEVICES\tCURRENT\tPENDING\tAWAITING APPROVAL\tINSTALLING\tFAILED\tDECLINED\tDEFERRED")
	for _, s := range sites {
		c := s.Counts
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", s.Site.Name, s.Site.Organisation, c.Total, c.Current, c.Pending,
			c.AwaitingApproval, c.Installing, c.Failed, c.Declined, c.Deferred)
	}
	tw.Flush()
	for _, s := range sites {
		for _, d := range s.Declined {
			fmt.Fprintf(w, "risk: site %s declined %s (%s): %s\n", s.Site.Name, d.Version, d.Reason, firstLine(d.Notes))
		}
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
