package api

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/aftercare/aftercare/server/internal/access"
	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/vuln"
	"github.com/aftercare/aftercare/server/internal/vuln/match"
)

// vulnRoutes are the vulnerability monitoring endpoints (docs/api.md,
// "Vulnerability monitoring"). Disposition changes reach the audit log
// through vuln.Options.Audit, so their route names no action.
func (h *handlers) vulnRoutes() []route {
	return []route{
		{"GET", "/api/v1/releases/:id/sbom", access.VulnRead, "", h.releaseSBOM},
		{"GET", "/api/v1/releases/:id/findings", access.VulnRead, "", h.releaseFindings},
		{"GET", "/api/v1/releases/:id/vex", access.VulnRead, "", h.releaseVEX},
		{"GET", "/api/v1/vuln/feeds", access.VulnRead, "", h.listFeeds},
		{"POST", "/api/v1/vuln/feeds/sync", access.VulnWrite, "vuln.feeds.sync", h.syncFeeds},
		{"POST", "/api/v1/vuln/feeds/:kind", access.VulnWrite, "vuln.feed.import", h.importFeed},
		{"POST", "/api/v1/vuln/analyse", access.VulnWrite, "vuln.analyse", h.analyse},
		{"GET", "/api/v1/vuln/findings", access.VulnRead, "", h.findings},
		{"GET", "/api/v1/vuln/exposure/:vuln", access.VulnRead, "", h.exposure},
		{"POST", "/api/v1/vuln/exposure", access.VulnRead, "", h.exposureQuery}, // a query: reads only
		{"GET", "/api/v1/vuln/dispositions", access.VulnRead, "", h.dispositions},
		{"POST", "/api/v1/vuln/dispositions", access.DispositionSet, "", h.setDisposition},
		{"GET", "/api/v1/vuln/dispositions/history", access.VulnRead, "", h.dispositionHistory},
		{"POST", "/api/v1/vuln/vex", access.VulnWrite, "vuln.vex.import", h.importVEX},
		{"GET", "/api/v1/vuln/triage", access.VulnRead, "", h.triage},
	}
}

// principal says who is asking and what they may see: the user's name
// and, for hospital IT, its sites.
func principal(c echo.Context) (actor string, scope vuln.Scope) {
	p := principalOf(c)
	if p.Scope.All {
		return p.Name, vuln.AllSites
	}
	return p.Name, vuln.Scope{SiteIDs: append([]string{}, p.Scope.SiteIDs...)}
}

func (h *handlers) releaseSBOM(c echo.Context) error {
	_, scope := principal(c)
	rec, comps, err := h.opts.Vuln.ReleaseSBOM(c.Request().Context(), scope, c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"sbom": rec, "components": nonNil(comps)})
}

func states(c echo.Context) []string {
	var out []string
	for _, s := range c.QueryParams()["state"] {
		for _, part := range strings.Split(s, ",") {
			if part = strings.TrimSpace(part); part != "" {
				out = append(out, part)
			}
		}
	}
	return out
}

func (h *handlers) releaseFindings(c echo.Context) error {
	_, scope := principal(c)
	fs, err := h.opts.Vuln.Findings(c.Request().Context(), scope, vuln.FindingQuery{ReleaseID: c.Param("id"), VulnID: c.QueryParam("vuln_id"), States: states(c)})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"findings": nonNil(fs)})
}

func (h *handlers) findings(c echo.Context) error {
	_, scope := principal(c)
	fs, err := h.opts.Vuln.Findings(c.Request().Context(), scope, vuln.FindingQuery{ReleaseID: c.QueryParam("release_id"), VulnID: c.QueryParam("vuln_id"), States: states(c)})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"findings": nonNil(fs)})
}

func (h *handlers) releaseVEX(c echo.Context) error {
	_, scope := principal(c)
	format := c.QueryParam("format")
	if format == "" {
		format = vuln.VEXOpenVEX
	}
	b, err := h.opts.Vuln.ExportVEX(c.Request().Context(), scope, c.Param("id"), format)
	if err != nil {
		return err
	}
	ct := "application/json"
	if format == vuln.VEXCycloneDX {
		ct = "application/vnd.cyclonedx+json"
	}
	return c.Blob(http.StatusOK, ct, b)
}

func (h *handlers) listFeeds(c echo.Context) error {
	feeds, err := h.opts.Vuln.Feeds(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"feeds": nonNil(feeds)})
}

// importFeed takes a feed file as the raw request body; ?name= names the
// file (shown as the feed's source), ?feed= the feed (default: the kind).
func (h *handlers) importFeed(c echo.Context) error {
	_, scope := principal(c)
	req := c.Request()
	req.Body = http.MaxBytesReader(c.Response(), req.Body, h.opts.MaxFeedBytes)
	b, err := io.ReadAll(req.Body)
	if err != nil {
		return wrapBodyError(err)
	}
	name := c.QueryParam("name")
	if name == "" {
		name = "upload"
	}
	res, err := h.opts.Vuln.Import(req.Context(), scope, c.Param("kind"), b, vuln.Source{Feed: c.QueryParam("feed"), Origin: name})
	if err != nil {
		return err
	}
	h.decided(c, "feed/"+c.Param("kind"), map[string]any{"file": name, "bytes": len(b)})
	return c.JSON(http.StatusOK, res)
}

func (h *handlers) syncFeeds(c echo.Context) error {
	_, scope := principal(c)
	if !scope.All || h.opts.FeedSync == nil {
		return fmt.Errorf("feed sync is for product security: %w", problem.ErrForbidden)
	}
	res, err := h.opts.FeedSync(c.Request().Context())
	if err != nil {
		return err
	}
	h.decided(c, "feeds", nil)
	return c.JSON(http.StatusOK, res)
}

func (h *handlers) analyse(c echo.Context) error {
	_, scope := principal(c)
	if !scope.All {
		return fmt.Errorf("analysis is for product security: %w", problem.ErrForbidden)
	}
	res, err := h.opts.Vuln.Analyse(c.Request().Context(), nil)
	if err != nil {
		return err
	}
	h.decided(c, "releases", nil)
	return c.JSON(http.StatusOK, res)
}

func deviceLimit(c echo.Context) (int, error) {
	v := c.QueryParam("devices")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > 10_000 {
		return 0, problem.Invalid(fmt.Sprintf("devices %q must be a number from 0 to 10000", v))
	}
	return n, nil
}

func (h *handlers) exposure(c echo.Context) error {
	_, scope := principal(c)
	limit, err := deviceLimit(c)
	if err != nil {
		return err
	}
	e, err := h.opts.Vuln.Exposure(c.Request().Context(), scope, c.Param("vuln"), vuln.ExposureOptions{DeviceLimit: limit})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, e)
}

type exposureQueryRequest struct {
	match.Query
	Devices int `json:"devices"`
}

func (h *handlers) exposureQuery(c echo.Context) error {
	_, scope := principal(c)
	var req exposureQueryRequest
	if err := bindJSON(c, &req); err != nil {
		return err
	}
	if req.Devices < 0 || req.Devices > 10_000 {
		return problem.Invalid(fmt.Sprintf("devices %d must be from 0 to 10000", req.Devices))
	}
	e, err := h.opts.Vuln.ExposureQuery(c.Request().Context(), scope, req.Query, vuln.ExposureOptions{DeviceLimit: req.Devices})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, e)
}

func (h *handlers) dispositions(c echo.Context) error {
	_, scope := principal(c)
	ds, err := h.opts.Vuln.Dispositions(c.Request().Context(), scope, vuln.DispositionQuery{Product: c.QueryParam("product"), VulnID: c.QueryParam("vuln_id")})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"dispositions": nonNil(ds)})
}

func (h *handlers) dispositionHistory(c echo.Context) error {
	_, scope := principal(c)
	hs, err := h.opts.Vuln.History(c.Request().Context(), scope, vuln.DispositionQuery{Product: c.QueryParam("product"), VulnID: c.QueryParam("vuln_id")})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"history": nonNil(hs)})
}

func (h *handlers) setDisposition(c echo.Context) error {
	actor, scope := principal(c)
	var req vuln.DispositionRequest
	if err := bindJSON(c, &req); err != nil {
		return err
	}
	ch, err := h.opts.Vuln.SetDisposition(c.Request().Context(), scope, actor, req)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, ch)
}

func (h *handlers) importVEX(c echo.Context) error {
	_, scope := principal(c)
	req := c.Request()
	req.Body = http.MaxBytesReader(c.Response(), req.Body, vuln.MaxVEXBytes)
	b, err := io.ReadAll(req.Body)
	if err != nil {
		return wrapBodyError(err)
	}
	res, err := h.opts.Vuln.ImportVEX(req.Context(), scope, b)
	if err != nil {
		return err
	}
	h.decided(c, "vex", map[string]any{"bytes": len(b)})
	return c.JSON(http.StatusOK, res)
}

func (h *handlers) triage(c echo.Context) error {
	_, scope := principal(c)
	open := c.QueryParam("open") != "false"
	items, err := h.opts.Vuln.TriageItems(c.Request().Context(), scope, open)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"triage": nonNil(items)})
}
