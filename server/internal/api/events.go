package api

import (
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/server/internal/access"
	"github.com/aftercare/aftercare/server/internal/ingest"
	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/store"
)

// eventRoutes are the incident response endpoints: events, timelines,
// alerts and alert rules. Hospital IT sees only its sites' rows.
func (h *handlers) eventRoutes() []route {
	return []route{
		{"GET", "/api/v1/events", access.EventsRead, "", h.listEvents},
		{"GET", "/api/v1/events/ingest", access.EventsRead, "", h.ingestStats},
		{"GET", "/api/v1/devices/:id/timeline", access.EventsRead, "", h.deviceTimeline},
		{"GET", "/api/v1/alerts", access.EventsRead, "", h.listAlerts},
		{"POST", "/api/v1/alerts/:id/ack", access.AlertsAck, "", h.ackAlert}, // audited in the same transaction
		{"GET", "/api/v1/alert-rules", access.EventsRead, "", h.listAlertRules},
		{"POST", "/api/v1/alert-rules", access.AlertRulesSet, "", h.createAlertRule}, // audited in the same transaction
	}
}

// scopeSites narrows a requested site to the principal's scope: nil for
// every site (a principal who sees all and asked for none), or the list of
// sites to query, empty when the request leaves the scope.
func scopeSites(p access.Principal, requested string) []string {
	if requested != "" {
		if !p.Scope.HasSite(requested) {
			return []string{}
		}
		return []string{requested}
	}
	if p.Scope.All {
		return nil
	}
	return slices.Clone(p.Scope.SiteIDs)
}

// eventFilter reads the query parameters of GET /api/v1/events, naming
// every invalid one.
func eventFilter(c echo.Context) (store.EventFilter, error) {
	var f store.EventFilter
	var problems []string
	parseTime := func(name string) time.Time {
		v := c.QueryParam(name)
		if v == "" {
			return time.Time{}
		}
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s %q is not an RFC 3339 time such as 2026-11-23T02:00:00Z", name, v))
		}
		return t
	}
	f.From, f.To = parseTime("from"), parseTime("to")
	f.OrganisationID, f.DeviceID = c.QueryParam("organisation_id"), c.QueryParam("device_id")
	if v := c.QueryParam("severity"); v != "" {
		if f.MinSeverity = protocol.Severity(v); !f.MinSeverity.Valid() {
			problems = append(problems, fmt.Sprintf("severity %q is not one of debug, info, notice, warning, error, critical, alert, emergency", v))
		}
	}
	if v := c.QueryParam("category"); v != "" {
		if f.Category = protocol.Category(v); !f.Category.Valid() {
			problems = append(problems, fmt.Sprintf("category %q is not one of %q", v, protocol.Categories()))
		}
	}
	if v := c.QueryParam("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > store.MaxEventRows {
			problems = append(problems, fmt.Sprintf("limit %q must be 1-%d", v, store.MaxEventRows))
		}
		f.Limit = n
	}
	return f, invalid(problems)
}

func (h *handlers) listEvents(c echo.Context) error {
	f, err := eventFilter(c)
	if err != nil {
		return err
	}
	f.SiteIDs = scopeSites(principalOf(c), c.QueryParam("site_id"))
	evs, err := h.opts.Store.Events(c.Request().Context(), f)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"events": nonNil(evs)})
}

func (h *handlers) ingestStats(c echo.Context) error {
	if h.opts.IngestStats == nil {
		return c.JSON(http.StatusOK, map[string]any{"ingest": ingest.Stats{}})
	}
	return c.JSON(http.StatusOK, map[string]any{"ingest": h.opts.IngestStats()})
}

// A TimelineEntry is one row of a device's timeline: a security event or
// a state report (the update history).
type TimelineEntry struct {
	Time   time.Time          `json:"time"`
	Kind   string             `json:"kind"` // "event" or "report"
	Seq    uint64             `json:"seq"`
	Event  *store.StoredEvent `json:"event,omitempty"`
	Report *store.Report      `json:"report,omitempty"`
}

func (h *handlers) deviceTimeline(c echo.Context) error {
	ctx := c.Request().Context()
	id := c.Param("id")
	d, err := h.opts.Store.Device(ctx, id)
	if err != nil {
		return err
	}
	if err := principalOf(c).SeeSite(d.SiteID, fmt.Sprintf("device %q", id)); err != nil {
		return err
	}
	f, err := eventFilter(c)
	if err != nil {
		return err
	}
	f.DeviceID = id
	evs, err := h.opts.Store.Events(ctx, f)
	if err != nil {
		return err
	}
	reports, err := h.opts.Store.Reports(ctx, id)
	if err != nil {
		return err
	}
	var rows []TimelineEntry
	for i := range evs {
		rows = append(rows, TimelineEntry{Time: evs[i].Time, Kind: "event", Seq: evs[i].Seq, Event: &evs[i]})
	}
	if f.MinSeverity == "" && f.Category == "" {
		for i, r := range reports {
			if (!f.From.IsZero() && r.ReportedAt.Before(f.From)) || (!f.To.IsZero() && !r.ReportedAt.Before(f.To)) {
				continue
			}
			rows = append(rows, TimelineEntry{Time: r.ReportedAt, Kind: "report", Seq: r.Seq, Report: &reports[i]})
		}
	}
	sort.SliceStable(rows, func(i, j int) bool {
		if !rows[i].Time.Equal(rows[j].Time) {
			return rows[i].Time.Before(rows[j].Time)
		}
		return rows[i].Seq < rows[j].Seq
	})
	gaps, last, dropped, err := h.opts.Store.SeqGaps(ctx, id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{
		"device": d, "timeline": nonNil(rows), "gaps": nonNil(gaps), "last_seq": last, "dropped_by_device": dropped,
	})
}

func (h *handlers) listAlerts(c echo.Context) error {
	f := store.AlertFilter{
		SiteIDs: scopeSites(principalOf(c), c.QueryParam("site_id")), OrganisationID: c.QueryParam("organisation_id"),
		DeviceID: c.QueryParam("device_id"), OpenOnly: c.QueryParam("open") == "true",
	}
	alerts, err := h.opts.Store.Alerts(c.Request().Context(), f)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"alerts": nonNil(alerts)})
}

func (h *handlers) ackAlert(c echo.Context) error {
	ctx := c.Request().Context()
	id := c.Param("id")
	a, err := h.opts.Store.Alert(ctx, id)
	if err != nil {
		return err
	}
	p := principalOf(c)
	if err := p.SeeSite(a.SiteID, fmt.Sprintf("alert %q", id)); err != nil {
		return err
	}
	rec := p.Record("alert.ack", "alert/"+id, reason(c), map[string]any{"rule_id": a.RuleID, "device_id": a.DeviceID, "site_id": a.SiteID})
	a, err = h.opts.Store.AckAlert(ctx, id, p.Name, h.now(), rec)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"alert": a})
}

func (h *handlers) listAlertRules(c echo.Context) error {
	rules, err := h.opts.Store.AlertRules(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"rules": nonNil(rules)})
}

// alertRuleRequest is the body of POST /api/v1/alert-rules.
type alertRuleRequest struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	Category    string `json:"category"`
	MinSeverity string `json:"min_severity"` // default "debug"
	Event       string `json:"event"`
	Threshold   int    `json:"threshold"`
	Window      string `json:"window"` // e.g. "1m"
}

func (h *handlers) createAlertRule(c echo.Context) error {
	var req alertRuleRequest
	if err := bindJSON(c, &req); err != nil {
		return err
	}
	if req.MinSeverity == "" {
		req.MinSeverity = string(protocol.SeverityDebug)
	}
	window, err := time.ParseDuration(req.Window)
	if err != nil {
		return invalid([]string{fmt.Sprintf("window %q is not a duration such as 1m", req.Window)})
	}
	r := store.AlertRule{
		ID: req.ID, Name: req.Name, Category: protocol.Category(req.Category), MinSeverity: protocol.Severity(req.MinSeverity),
		Event: req.Event, Threshold: req.Threshold, Window: window, Enabled: true, CreatedAt: h.now(),
	}
	p := principalOf(c)
	rec := p.Record("alert_rule.create", "alert-rule/"+r.ID, reason(c), map[string]any{
		"category": r.Category, "min_severity": r.MinSeverity, "event": r.Event, "threshold": r.Threshold, "window": window.String(),
	})
	if err := h.opts.Store.CreateAlertRule(c.Request().Context(), r, rec); err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, map[string]any{"rule": r})
}

// invalid is nil for no problems, else a validation error listing them.
func invalid(problems []string) error { return problem.Invalid(problems...) }
