package api

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/aftercare/aftercare/server/internal/access"
	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/rollout"
	"github.com/aftercare/aftercare/server/internal/store"
)

// rolloutRoutes are the staged rollout, site policy, approval and
// compliance rows of the route table. Writes are audited by the rollout
// engine's Audit hook (refused attempts too), so none has an audit action
// of its own. Site routes check the site against the caller's scope.
func (h *handlers) rolloutRoutes() []route {
	return []route{
		{"POST", "/api/v1/rollouts", access.RolloutsWrite, "", h.createRollout},
		{"GET", "/api/v1/rollouts", access.RolloutsRead, "", h.listRollouts},
		{"GET", "/api/v1/rollouts/:id", access.RolloutsRead, "", h.getRollout},
		{"POST", "/api/v1/rollouts/:id/pause", access.RolloutsWrite, "", h.rolloutControl(h.opts.Rollouts.Pause)},
		{"POST", "/api/v1/rollouts/:id/resume", access.RolloutsWrite, "", h.rolloutControl(h.opts.Rollouts.Resume)},
		{"POST", "/api/v1/rollouts/:id/abort", access.RolloutsWrite, "", h.rolloutControl(h.opts.Rollouts.Abort)},
		{"POST", "/api/v1/rollouts/:id/rollback", access.RolloutsWrite, "", h.rollbackRollout},
		{"PUT", "/api/v1/devices/:id/labels", access.DevicesWrite, "", h.setDeviceLabels},
		{"GET", "/api/v1/sites/:id/policy", access.SitesRead, "", inSite(h.getSitePolicy)},
		{"PUT", "/api/v1/sites/:id/policy", access.SitesPolicy, "", inSite(h.setSitePolicy)},
		{"GET", "/api/v1/sites/:id/pending", access.SitesRead, "", inSite(h.sitePending)},
		{"POST", "/api/v1/sites/:id/pending/:rollout/approve", access.SitesApprove, "", inSite(h.siteDecision("approve"))},
		{"POST", "/api/v1/sites/:id/pending/:rollout/defer", access.SitesApprove, "", inSite(h.siteDecision("defer"))},
		{"POST", "/api/v1/sites/:id/pending/:rollout/decline", access.SitesApprove, "", inSite(h.siteDecision("decline"))},
		{"GET", "/api/v1/sites/:id/compliance", access.DevicesRead, "", inSite(h.siteCompliance)},
		{"GET", "/api/v1/compliance", access.DevicesRead, "", h.complianceSummary},
	}
}

// inSite answers 404 for a site outside the caller's scope before next
// runs, so another hospital's site looks like no site at all.
func inSite(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if err := principalOf(c).SeeSite(c.Param("id"), fmt.Sprintf("site %q", c.Param("id"))); err != nil {
			return err
		}
		return next(c)
	}
}

// actor names who made a request, for the audit log.
func actor(c echo.Context) string { return principalOf(c).Name }

// createRolloutRequest is the body of POST /api/v1/rollouts. Models and
// site_ids at the top level are the one-wave request of the walking
// skeleton, kept working.
type createRolloutRequest struct {
	ReleaseID string   `json:"release_id"`
	Models    []string `json:"models,omitempty"`
	SiteIDs   []string `json:"site_ids,omitempty"`
	rollout.Plan
	Reason string `json:"reason,omitempty"`
}

func (h *handlers) createRollout(c echo.Context) error {
	var req createRolloutRequest
	if err := bindJSON(c, &req); err != nil {
		return err
	}
	plan := req.Plan
	plan.Cohort.Models = append(plan.Cohort.Models, req.Models...)
	plan.Cohort.SiteIDs = append(plan.Cohort.SiteIDs, req.SiteIDs...)
	if plan.Rollback {
		return problem.Invalid("rollback: a roll-back is made with POST /api/v1/rollouts/{id}/rollback")
	}
	v, err := h.opts.Rollouts.Create(c.Request().Context(), rollout.Request{ReleaseID: req.ReleaseID, Plan: plan, Actor: actor(c), Reason: req.Reason})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, v)
}

func (h *handlers) listRollouts(c echo.Context) error {
	list, err := h.opts.Rollouts.List(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"rollouts": list})
}

func (h *handlers) getRollout(c echo.Context) error {
	v, err := h.opts.Rollouts.View(c.Request().Context(), c.Param("id"))
	if err != nil {
		return err
	}
	v.Cohort = nonNil(v.Cohort)
	return c.JSON(http.StatusOK, v)
}

func (h *handlers) rolloutControl(fn func(ctx context.Context, id, actor, reason string) (rollout.View, error)) echo.HandlerFunc {
	return func(c echo.Context) error {
		var req reasonRequest
		if err := bindJSON(c, &req); err != nil {
			return err
		}
		v, err := fn(c.Request().Context(), c.Param("id"), actor(c), req.Reason)
		if err != nil {
			return err
		}
		return c.JSON(http.StatusOK, v)
	}
}

func (h *handlers) rollbackRollout(c echo.Context) error {
	var req reasonRequest
	if err := bindJSON(c, &req); err != nil {
		return err
	}
	views, err := h.opts.Rollouts.Rollback(c.Request().Context(), c.Param("id"), actor(c), req.Reason)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, map[string]any{"rollouts": nonNil(views)})
}

type labelsRequest struct {
	Labels map[string]string `json:"labels"`
}

const maxLabelBytes = 128

func (h *handlers) setDeviceLabels(c echo.Context) error {
	var req labelsRequest
	if err := bindJSON(c, &req); err != nil {
		return err
	}
	var problems []string
	if len(req.Labels) == 0 || len(req.Labels) > 32 {
		problems = append(problems, "labels: give 1-32 labels; an empty value removes one")
	}
	for k, v := range req.Labels {
		if k == "" || len(k) > maxLabelBytes || len(v) > maxLabelBytes || strings.ContainsAny(k+v, "\x00\n") {
			problems = append(problems, "label "+k+": name must be 1-128 bytes, value at most 128, no NUL or newline")
		}
	}
	if err := problem.Invalid(problems...); err != nil {
		return err
	}
	if err := h.opts.Rollouts.SetDeviceLabels(c.Request().Context(), c.Param("id"), req.Labels, actor(c)); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"device_id": c.Param("id"), "labels": req.Labels})
}

func (h *handlers) getSitePolicy(c echo.Context) error {
	p, err := h.opts.Rollouts.SitePolicy(c.Request().Context(), c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, p)
}

type sitePolicyRequest struct {
	Approval string                 `json:"approval"`
	TimeZone string                 `json:"timezone,omitempty"`
	Windows  []rollout.WeeklyWindow `json:"windows,omitempty"`
	Reason   string                 `json:"reason,omitempty"`
}

func (h *handlers) setSitePolicy(c echo.Context) error {
	var req sitePolicyRequest
	if err := bindJSON(c, &req); err != nil {
		return err
	}
	p := rollout.SitePolicy{SiteID: c.Param("id"), Approval: req.Approval, TimeZone: req.TimeZone, Windows: req.Windows}
	if err := h.opts.Rollouts.SetSitePolicy(c.Request().Context(), p, actor(c), req.Reason); err != nil {
		return err
	}
	return h.getSitePolicy(c)
}

func (h *handlers) sitePending(c echo.Context) error {
	p, err := h.opts.Rollouts.Pending(c.Request().Context(), c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"pending": p})
}

type decisionRequest struct {
	Reason string    `json:"reason"`
	Until  time.Time `json:"until,omitzero"` // for defer
}

func (h *handlers) siteDecision(kind string) echo.HandlerFunc {
	return func(c echo.Context) error {
		var req decisionRequest
		if err := bindJSON(c, &req); err != nil {
			return err
		}
		ctx, site, ro, actor := c.Request().Context(), c.Param("id"), c.Param("rollout"), actor(c)
		var err error
		switch kind {
		case "approve":
			err = h.opts.Rollouts.Approve(ctx, site, ro, actor, req.Reason)
		case "defer":
			if req.Until.IsZero() {
				return problem.Invalid("until is required to defer, e.g. \"2026-04-01T00:00:00Z\"")
			}
			err = h.opts.Rollouts.Defer(ctx, site, ro, req.Until, actor, req.Reason)
		case "decline":
			err = h.opts.Rollouts.Decline(ctx, site, ro, actor, req.Reason)
		}
		if err != nil {
			return err
		}
		return h.sitePending(c)
	}
}

func (h *handlers) siteCompliance(c echo.Context) error {
	sc, err := h.opts.Rollouts.SiteCompliance(c.Request().Context(), c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, sc)
}

func (h *handlers) complianceSummary(c echo.Context) error {
	sites, err := h.opts.Rollouts.Compliance(c.Request().Context())
	if err != nil {
		return err
	}
	p := principalOf(c)
	sites = slices.DeleteFunc(sites, func(s store.SiteCompliance) bool { return !p.Scope.HasSite(s.Site.ID) })
	return c.JSON(http.StatusOK, map[string]any{"sites": nonNil(sites), "organisations": nonNil(store.ByOrganisation(sites))})
}
