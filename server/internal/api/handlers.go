package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/release"
	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/tufrepo"
)

func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("request body: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("request body: trailing data after the JSON value")
	}
	return nil
}

// repoFile serves a repository's static files from dir. Metadata other
// than the timestamp and target files are immutable (their names carry a
// version or a digest), so they may be cached by any CDN.
func (h *handlers) repoFile(dir string) echo.HandlerFunc {
	return func(c echo.Context) error {
		rel := c.Param("*")
		clean := path.Clean("/" + rel)
		if clean != "/"+rel || strings.Contains(rel, "\\") || (!strings.HasPrefix(clean, "/metadata/") && !strings.HasPrefix(clean, "/targets/")) {
			return fmt.Errorf("repository file %q: %w", rel, problem.ErrNotFound)
		}
		if strings.HasSuffix(clean, "/timestamp.json") {
			c.Response().Header().Set("Cache-Control", "no-cache")
		}
		return c.File(filepath.Join(dir, filepath.FromSlash(clean)))
	}
}

type createSiteRequest struct {
	Name string `json:"name"`
	// Organisation is the organisation's ID or name; a new name makes a
	// new organisation, "" the default one.
	Organisation string `json:"organisation"`
	Reason       string `json:"reason,omitempty"`
}

func (h *handlers) createSite(c echo.Context) error {
	var req createSiteRequest
	if err := bindJSON(c, &req); err != nil {
		return err
	}
	if req.Reason == "" {
		req.Reason = reason(c)
	}
	rec := principalOf(c).Record("site.create", "", req.Reason, map[string]any{"name": req.Name, "organisation": req.Organisation})
	site, err := h.opts.Fleet.CreateSite(c.Request().Context(), req.Name, req.Organisation, rec)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, site)
}

func (h *handlers) listSites(c echo.Context) error {
	sites, err := h.opts.Fleet.Sites(c.Request().Context())
	if err != nil {
		return err
	}
	p := principalOf(c)
	sites = slices.DeleteFunc(sites, func(s store.Site) bool { return !p.Scope.HasSite(s.ID) })
	return c.JSON(http.StatusOK, map[string]any{"sites": nonNil(sites)})
}

type enrollmentTokensRequest struct {
	Count int `json:"count"`
}

func (h *handlers) createEnrollmentTokens(c echo.Context) error {
	if err := principalOf(c).SeeSite(c.Param("id"), fmt.Sprintf("site %q", c.Param("id"))); err != nil {
		return err
	}
	req := enrollmentTokensRequest{Count: 1}
	if err := bindJSON(c, &req); err != nil {
		return err
	}
	tokens, expires, err := h.opts.Fleet.CreateEnrollmentTokens(c.Request().Context(), c.Param("id"), req.Count)
	if err != nil {
		return err
	}
	h.decided(c, "site/"+c.Param("id"), map[string]any{"count": len(tokens), "expires_at": expires})
	return c.JSON(http.StatusCreated, map[string]any{"tokens": tokens, "expires_at": expires})
}

func (h *handlers) enroll(c echo.Context) error {
	var req protocol.EnrollRequest
	if err := bindJSON(c, &req); err != nil {
		return err
	}
	resp, err := h.opts.Fleet.Enroll(c.Request().Context(), req)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, resp)
}

func (h *handlers) sitePatchState(c echo.Context) error {
	if err := principalOf(c).SeeSite(c.Param("id"), fmt.Sprintf("site %q", c.Param("id"))); err != nil {
		return err
	}
	sp, err := h.opts.Fleet.SitePatchState(c.Request().Context(), c.Param("id"))
	if err != nil {
		return err
	}
	sp.Devices = nonNil(sp.Devices)
	return c.JSON(http.StatusOK, sp)
}

func (h *handlers) patchSummary(c echo.Context) error {
	sites, err := h.opts.Fleet.PatchSummary(c.Request().Context())
	if err != nil {
		return err
	}
	p := principalOf(c)
	sites = slices.DeleteFunc(sites, func(s store.SitePatch) bool { return !p.Scope.HasSite(s.Site.ID) })
	return c.JSON(http.StatusOK, map[string]any{"sites": nonNil(sites)})
}

func (h *handlers) listDevices(c echo.Context) error {
	var f store.DeviceFilter
	if site := c.QueryParam("site_id"); site != "" {
		f.SiteIDs = []string{site}
	}
	if model := c.QueryParam("model"); model != "" {
		f.Models = []string{model}
	}
	if p := principalOf(c); !p.Scope.All {
		if f.SiteIDs == nil {
			f.SiteIDs = p.Scope.SiteIDs
		}
		f.SiteIDs = slices.DeleteFunc(slices.Clone(f.SiteIDs), func(id string) bool { return !p.Scope.HasSite(id) })
		if len(f.SiteIDs) == 0 {
			return c.JSON(http.StatusOK, map[string]any{"devices": []store.Device{}})
		}
	}
	devices, err := h.opts.Fleet.Devices(c.Request().Context(), f)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"devices": nonNil(devices)})
}

func (h *handlers) getDevice(c echo.Context) error {
	d, reports, err := h.opts.Fleet.Device(c.Request().Context(), c.Param("id"))
	if err != nil {
		return err
	}
	if err := principalOf(c).SeeSite(d.SiteID, fmt.Sprintf("device %q", c.Param("id"))); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"device": d, "reports": nonNil(reports)})
}

func (h *handlers) listReleases(c echo.Context) error {
	rels, err := h.opts.Fleet.Releases(c.Request().Context())
	if err != nil {
		return err
	}
	visible, err := h.visibleReleases(c)
	if err != nil {
		return err
	}
	if visible != nil {
		rels = slices.DeleteFunc(rels, func(r store.Release) bool { return !visible[r.ID] })
	}
	return c.JSON(http.StatusOK, map[string]any{"releases": nonNil(rels)})
}

func (h *handlers) getRelease(c echo.Context) error {
	rel, err := h.opts.Fleet.Release(c.Request().Context(), c.Param("id"))
	if err != nil {
		return err
	}
	visible, err := h.visibleReleases(c)
	if err != nil {
		return err
	}
	if visible != nil && !visible[rel.ID] {
		return principalOf(c).SeeSite("", fmt.Sprintf("release %q", c.Param("id")))
	}
	return c.JSON(http.StatusOK, rel)
}

// visibleReleases returns the releases a site-scoped principal may see:
// those its devices run or are assigned. nil means every release.
func (h *handlers) visibleReleases(c echo.Context) (map[string]bool, error) {
	p := principalOf(c)
	if p.Scope.All {
		return nil, nil
	}
	ids, err := h.opts.Store.ReleasesOfSites(c.Request().Context(), p.Scope.SiteIDs)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, id := range ids {
		out[id] = true
	}
	return out, nil
}

// currentTargets returns the targets metadata the next release is signed on.
func (h *handlers) currentTargets(c echo.Context) error {
	b, err := h.opts.Repo.CurrentTargets()
	if err != nil {
		return err
	}
	if b == nil {
		return fmt.Errorf("the repository has no targets metadata yet; sign the first release on the 1.targets.json from `aftercare keys init`: %w", problem.ErrNotFound)
	}
	return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, b)
}

// publishTargets takes signed targets metadata that adds no image, e.g.
// one that sets a release's rollback flag or extends the expiry.
func (h *handlers) publishTargets(c echo.Context) error {
	b, err := readMetadataBody(c)
	if err != nil {
		return err
	}
	t, err := h.opts.Repo.ParseTargets(b)
	if err != nil {
		return err
	}
	if err := h.opts.Releases.PublishTargets(c.Request().Context(), t); err != nil {
		return err
	}
	h.decided(c, "repository/release/targets", map[string]any{"version": t.Signed.Version})
	return h.currentTargets(c)
}

// readMetadataBody reads a JSON request body of at most
// tufrepo.MaxMetadataBytes.
func readMetadataBody(c echo.Context) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(c.Request().Body, tufrepo.MaxMetadataBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > tufrepo.MaxMetadataBytes {
		return nil, problem.Invalid(fmt.Sprintf("request body is larger than %d bytes", tufrepo.MaxMetadataBytes))
	}
	return b, nil
}

// currentRoot returns the newest root of the release or rollout
// repository, the base of the next rotation.
func (h *handlers) currentRoot(c echo.Context) error {
	var b []byte
	var err error
	switch c.Param("repo") {
	case "release":
		b, err = h.opts.Repo.Root()
	case "rollout":
		b, err = h.opts.Rollout.Root()
	default:
		return fmt.Errorf("repository %q: it is release or rollout: %w", c.Param("repo"), problem.ErrNotFound)
	}
	if err != nil {
		return err
	}
	return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, b)
}

// updateRootRequest is the body of POST /api/v1/repository/:repo/root.
type updateRootRequest struct {
	Root json.RawMessage `json:"root"`
	// Targets is the current release targets signed again with new
	// release keys; needed only when the new root changes them.
	Targets json.RawMessage `json:"targets,omitempty"`
}

// updateRoot installs the next root of a repository after a rotation.
func (h *handlers) updateRoot(c echo.Context) error {
	b, err := readMetadataBody(c)
	if err != nil {
		return err
	}
	var req updateRootRequest
	if err := decodeStrict(b, &req); err != nil {
		return problem.Invalid(err.Error())
	}
	if len(req.Root) == 0 {
		return problem.Invalid("root is required: the new root metadata from `aftercare keys rotate`")
	}
	ctx := c.Request().Context()
	switch c.Param("repo") {
	case "release":
		var targets []byte
		if len(req.Targets) > 0 {
			targets = req.Targets
		}
		err = h.opts.Repo.UpdateRoot(ctx, req.Root, targets)
	case "rollout":
		if len(req.Targets) > 0 {
			return problem.Invalid("targets: the rollout repository's targets are signed by the server; send only the root")
		}
		err = h.opts.Rollout.UpdateRoot(ctx, req.Root)
	default:
		return fmt.Errorf("repository %q: it is release or rollout: %w", c.Param("repo"), problem.ErrNotFound)
	}
	if err != nil {
		return err
	}
	h.decided(c, "repository/"+c.Param("repo")+"/root", nil)
	return h.currentRoot(c)
}

// uploadRelease takes a multipart form with two parts, in either order:
// "bundle", the release bundle, streamed to staging files; and "targets",
// the signed targets metadata listing it.
func (h *handlers) uploadRelease(c echo.Context) error {
	req := c.Request()
	mediaType, _, err := mime.ParseMediaType(req.Header.Get(echo.HeaderContentType))
	if err != nil || mediaType != echo.MIMEMultipartForm {
		return problem.Invalid("the body must be multipart/form-data with parts \"bundle\" and \"targets\"")
	}
	req.Body = http.MaxBytesReader(c.Response(), req.Body, h.opts.MaxBundleBytes+tufrepo.MaxMetadataBytes+64<<10)
	mr, err := req.MultipartReader()
	if err != nil {
		return problem.Invalid(fmt.Sprintf("multipart body: %v", err))
	}
	var targets []byte
	var staged *release.Staged
	defer func() {
		if staged != nil {
			staged.Discard()
		}
	}()
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return wrapBodyError(err)
		}
		switch part.FormName() {
		case "targets":
			if targets != nil {
				return problem.Invalid("part \"targets\" appears twice")
			}
			targets, err = io.ReadAll(io.LimitReader(part, tufrepo.MaxMetadataBytes+1))
			if err != nil {
				return wrapBodyError(err)
			}
		case "bundle":
			if staged != nil {
				return problem.Invalid("part \"bundle\" appears twice")
			}
			if staged, err = h.opts.Releases.Stage(req.Context(), part); err != nil {
				return wrapBodyError(err)
			}
		default:
			return problem.Invalid(fmt.Sprintf("unexpected part %q; send \"bundle\" and \"targets\"", part.FormName()))
		}
	}
	var missing []string
	if staged == nil {
		missing = append(missing, "part \"bundle\" is missing")
	}
	if targets == nil {
		missing = append(missing, "part \"targets\" is missing: sign the release with `aftercare release sign` and upload its output")
	}
	if err := problem.Invalid(missing...); err != nil {
		return err
	}
	rel, err := h.opts.Releases.Publish(req.Context(), staged, targets)
	if err != nil {
		return err
	}
	h.decided(c, "release/"+rel.ID, map[string]any{"product": rel.Product, "version": rel.Version})
	return c.JSON(http.StatusCreated, rel)
}

// wrapBodyError keeps a too-large body a 413 and a broken one a 400.
func wrapBodyError(err error) error {
	var tooBig *http.MaxBytesError
	var invalid *problem.InvalidError
	if errors.As(err, &tooBig) || errors.As(err, &invalid) {
		return err
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || strings.Contains(err.Error(), "multipart") {
		return problem.Invalid(fmt.Sprintf("request body: %v", err))
	}
	return err
}

// nonNil makes an empty list encode as [] rather than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
