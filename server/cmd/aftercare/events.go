package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/aftercare/aftercare/server/internal/siem"
	"github.com/aftercare/aftercare/server/internal/store"
)

// eventQuery holds the filter flags of the events commands.
type eventQuery struct {
	organisation, site, device, from, to, severity, category string
	limit                                                    int
}

func (q *eventQuery) flags(cmd *cobra.Command, withDevice bool) {
	f := cmd.Flags()
	f.StringVar(&q.organisation, "organisation", "", "only this organisation's sites (ID)")
	f.StringVar(&q.site, "site", "", "only this site (ID)")
	if withDevice {
		f.StringVar(&q.device, "device", "", "only this device")
	}
	f.StringVar(&q.from, "from", "", "from this time (RFC 3339, e.g. 2026-11-23T02:00:00Z), inclusive")
	f.StringVar(&q.to, "to", "", "until this time (RFC 3339), exclusive")
	f.StringVar(&q.severity, "severity", "", "at least this severity: debug, info, notice, warning, error, critical, alert, emergency")
	f.StringVar(&q.category, "category", "", "only this category: auth, integrity, update, config, network, system, app")
	f.IntVar(&q.limit, "limit", 0, "at most this many events (default and maximum 10000)")
}

func (q *eventQuery) values() url.Values {
	v := url.Values{}
	for k, s := range map[string]string{"organisation_id": q.organisation, "site_id": q.site, "device_id": q.device,
		"from": q.from, "to": q.to, "severity": q.severity, "category": q.category} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if q.limit > 0 {
		v.Set("limit", fmt.Sprint(q.limit))
	}
	return v
}

func eventsCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "events", Short: "Query, follow up and export device security events"}
	var lq eventQuery
	list := &cobra.Command{
		Use:   "list",
		Short: "List security events (hospital IT sees only its sites)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out struct{ Events []store.StoredEvent }
			return e.getShow(cmd.Context(), "/api/v1/events?"+lq.values().Encode(), &out, func(w io.Writer) { printEvents(w, out.Events) })
		},
	}
	lq.flags(list, true)

	var tq eventQuery
	timeline := &cobra.Command{
		Use:   "timeline DEVICE",
		Short: "One device's events and state reports in time order, with the gaps in its sequence",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out timelineAnswer
			return e.getShow(cmd.Context(), "/api/v1/devices/"+url.PathEscape(args[0])+"/timeline?"+tq.values().Encode(), &out, func(w io.Writer) { printTimeline(w, out) })
		},
	}
	tq.flags(timeline, false)

	var xq eventQuery
	var format, to, caFile string
	export := &cobra.Command{
		Use:   "export",
		Short: "Export events as RFC 5424 syslog, CEF or JSON lines, to stdout or a SIEM over TCP or TLS",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := siem.Format(format, store.StoredEvent{}); err != nil {
				return err
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			var out struct{ Events []store.StoredEvent }
			if err := c.getJSON(cmd.Context(), "/api/v1/events?"+xq.values().Encode(), &out); err != nil {
				return err
			}
			send := func(line string) error { _, err := fmt.Fprintln(e.stdout, line); return err }
			if to != "" {
				var conf *tls.Config
				if caFile != "" {
					pem, err := os.ReadFile(caFile)
					if err != nil {
						return fmt.Errorf("--ca-file: %w", err)
					}
					roots := x509.NewCertPool()
					if !roots.AppendCertsFromPEM(pem) {
						return fmt.Errorf("--ca-file %s holds no PEM certificate", caFile)
					}
					conf = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
				}
				s, err := siem.Dial(cmd.Context(), to, format, conf)
				if err != nil {
					return err
				}
				defer s.Close()
				send = s.Send
			}
			for _, ev := range out.Events {
				line, err := siem.Format(format, ev)
				if err != nil {
					return err
				}
				if err := send(line); err != nil {
					return err
				}
			}
			if to != "" {
				fmt.Fprintf(e.stderr, "sent %d events to %s\n", len(out.Events), to)
			}
			return nil
		},
	}
	xq.flags(export, true)
	export.Flags().StringVar(&format, "format", siem.FormatRFC5424, "rfc5424, cef or jsonl")
	export.Flags().StringVar(&to, "siem", "", "send to a SIEM: tcp://host:port or tls://host:port (default: stdout)")
	export.Flags().StringVar(&caFile, "ca-file", "", "CA certificate (PEM) that verifies a tls:// SIEM (default: system roots)")
	cmd.AddCommand(list, timeline, export)
	return cmd
}

func printEvents(w io.Writer, evs []store.StoredEvent) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tDEVICE\tSITE\tSEQ\tSEVERITY\tCATEGORY\tSOURCE\tMESSAGE")
	for _, ev := range evs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", ev.Time.UTC().Format(time.RFC3339), ev.DeviceID, ev.SiteID, ev.Seq,
			ev.Severity, ev.Category, ev.Source, oneLine(ev.Message, 100))
	}
	tw.Flush()
}

func oneLine(s string, n int) string {
	s = strings.NewReplacer("\n", " ", "\r", " ", "\t", " ").Replace(s)
	if len(s) > n {
		s = s[:n] + "…"
	}
	return s
}

type timelineAnswer struct {
	Device   struct{ ID, SiteID string }
	Timeline []struct {
		Time   time.Time
		Kind   string
		Seq    uint64
		Event  *store.StoredEvent
		Report *store.Report
	}
	Gaps            []store.Gap
	LastSeq         uint64 `json:"last_seq"`
	DroppedByDevice uint64 `json:"dropped_by_device"`
}

func printTimeline(w io.Writer, t timelineAnswer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tSEQ\tKIND\tWHAT")
	for _, r := range t.Timeline {
		what := ""
		switch {
		case r.Event != nil:
			what = fmt.Sprintf("%s %s/%s: %s", r.Event.Source, r.Event.Category, r.Event.Severity, oneLine(r.Event.Message, 100))
		case r.Report != nil:
			what = fmt.Sprintf("state %s running %s", r.Report.State, r.Report.Running)
			if r.Report.Target != "" {
				what += " target " + r.Report.Target
			}
			if r.Report.Reason != "" {
				what += ": " + oneLine(r.Report.Reason, 80)
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", r.Time.UTC().Format(time.RFC3339), r.Seq, r.Kind, what)
	}
	tw.Flush()
	fmt.Fprintf(w, "last sequence number received: %d; the device reported %d entries dropped from its full buffer\n", t.LastSeq, t.DroppedByDevice)
	if len(t.Gaps) == 0 {
		fmt.Fprintln(w, "no gaps: every report and event up to the last was received")
		return
	}
	for _, g := range t.Gaps {
		fmt.Fprintf(w, "gap: sequence %d-%d never arrived (dropped by the device, or lost)\n", g.From, g.To)
	}
}

func alertsCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "alerts", Short: "List and acknowledge alerts; list and add alert rules"}
	var site, device string
	var open bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List alerts, newest first (hospital IT sees only its sites)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			v := url.Values{}
			if site != "" {
				v.Set("site_id", site)
			}
			if device != "" {
				v.Set("device_id", device)
			}
			if open {
				v.Set("open", "true")
			}
			var raw []byte
			if err := c.getJSON(cmd.Context(), "/api/v1/alerts?"+v.Encode(), &raw); err != nil {
				return err
			}
			var out struct{ Alerts []store.Alert }
			return e.show(raw, &out, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tRAISED\tRULE\tDEVICE\tSITE\tEVENTS\tACKED BY\tMESSAGE")
				for _, a := range out.Alerts {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", a.ID, a.RaisedAt.UTC().Format(time.RFC3339), a.RuleID, a.DeviceID,
						a.SiteID, a.Count, a.AckedBy, oneLine(a.Message, 80))
				}
				tw.Flush()
			})
		},
	}
	list.Flags().StringVar(&site, "site", "", "only this site")
	list.Flags().StringVar(&device, "device", "", "only this device")
	list.Flags().BoolVar(&open, "open", false, "only alerts not yet acknowledged")
	ack := &cobra.Command{
		Use:   "ack ID",
		Short: "Acknowledge an alert (PSIRT, or hospital IT of its site); kept in the audit log with --reason",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out struct{ Alert store.Alert }
			return e.postShow(cmd.Context(), "/api/v1/alerts/"+url.PathEscape(args[0])+"/ack", map[string]string{}, &out, func(w io.Writer) { fmt.Fprintf(w, "alert %s acknowledged by %s\n", out.Alert.ID, out.Alert.AckedBy) })
		},
	}
	cmd.AddCommand(list, ack, rulesCmd(e))
	return cmd
}

func rulesCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rules",
		Short: "List alert rules (built-in and custom)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out struct{ Rules []store.AlertRule }
			return e.getShow(cmd.Context(), "/api/v1/alert-rules", &out, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tCATEGORY\tMIN SEVERITY\tEVENT\tTHRESHOLD\tWINDOW\tBUILT-IN\tNAME")
				for _, r := range out.Rules {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%v\t%s\n", r.ID, r.Category, r.MinSeverity, r.Event, r.Threshold, r.Window, r.Builtin, r.Name)
				}
				tw.Flush()
			})
		},
	}
	var req struct {
		ID          string `json:"id"`
		Name        string `json:"name"`
		Category    string `json:"category"`
		MinSeverity string `json:"min_severity"`
		Event       string `json:"event"`
		Threshold   int    `json:"threshold"`
		Window      string `json:"window"`
	}
	add := &cobra.Command{
		Use:   "add",
		Short: "Add a custom rule: at least --threshold events of --category within --window on one device (PSIRT)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out struct{ Rule store.AlertRule }
			return e.postShow(cmd.Context(), "/api/v1/alert-rules", req, &out, func(w io.Writer) { fmt.Fprintf(w, "rule %s added\n", out.Rule.ID) })
		},
	}
	f := add.Flags()
	f.StringVar(&req.ID, "id", "", "rule ID, e.g. usb-storage (required)")
	f.StringVar(&req.Name, "name", "", "what the rule detects (required)")
	f.StringVar(&req.Category, "category", "", "event category (required)")
	f.StringVar(&req.MinSeverity, "min-severity", "debug", "least severity counted")
	f.StringVar(&req.Event, "event", "", `only events whose "event" field is this, e.g. login_failure`)
	f.IntVar(&req.Threshold, "threshold", 1, "events needed within the window")
	f.StringVar(&req.Window, "window", "1m", "the window, e.g. 1m, 1h")
	cmd.AddCommand(add)
	return cmd
}
