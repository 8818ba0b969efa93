// Package api is the fleet server's HTTP edge: the JSON API for people and
// devices, and the two TUF repositories (release and rollout) as static
// files. It is the only
// package that knows Echo; handlers decode requests, call the domain
// packages, and leave every error to one handler that maps it to a status.
//
// Authentication:
//   - people and tools: "Authorization: Bearer <admin token>";
//   - devices: their credential from enrollment authenticates them to the
//     broker; over HTTP they only enroll and read the repositories;
//   - POST /api/v1/enroll takes a one-time enrollment token in its body;
//   - /tuf/ is public: its files are signed, and a device checks them. A
//     device learns its assignment from /tuf/rollout/, not from the API.
package api

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"

	"github.com/aftercare/aftercare/server/internal/fleet"
	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/release"
	"github.com/aftercare/aftercare/server/internal/rollout"
	"github.com/aftercare/aftercare/server/internal/tufrepo"
	"github.com/aftercare/aftercare/server/internal/vuln"
)

// Options configures the HTTP handler.
type Options struct {
	Fleet          *fleet.Service   // required
	Releases       *release.Service // required
	Repo           *tufrepo.Repo    // required
	Rollout        *tufrepo.Rollout // required
	RepoDir        string           // served at /tuf/release/; required
	RolloutDir     string           // served at /tuf/rollout/; required
	AdminToken     string           // required
	MaxBundleBytes int64            // largest accepted release bundle
	Log            *slog.Logger     // required
	Vuln           *vuln.Service    // required
	Rollouts       *rollout.Engine  // required
	// Actor names the person or token behind a request for the audit
	// log; nil names every request "admin".
	Actor func(c echo.Context) string
	// FeedSync runs one feed sync for POST /api/v1/vuln/feeds/sync.
	FeedSync     func(ctx context.Context) (vuln.SyncResult, error)
	MaxFeedBytes int64 // largest accepted feed file
}

// maxJSONBytes bounds every JSON request body.
const maxJSONBytes = 64 << 10 // 64 KiB

// New returns the server's HTTP handler.
func New(opts Options) (http.Handler, error) {
	if opts.Fleet == nil || opts.Releases == nil || opts.Repo == nil || opts.Rollout == nil || opts.RepoDir == "" || opts.RolloutDir == "" ||
		opts.AdminToken == "" || opts.Log == nil || opts.Vuln == nil || opts.Rollouts == nil {
		return nil, errors.New("api: Fleet, Releases, Repo, Rollout, RepoDir, RolloutDir, AdminToken, Log, Vuln and Rollouts are required")
	}
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = errorHandler(opts.Log)
	e.Use(middleware.RequestID())
	e.Use(requestLog(opts.Log))
	e.Use(middleware.Recover())

	h := &handlers{opts: opts}
	e.GET("/healthz", func(c echo.Context) error { return c.String(http.StatusOK, "ok\n") })
	e.GET("/tuf/release/*", h.repoFile(opts.RepoDir))
	e.GET("/tuf/rollout/*", h.repoFile(opts.RolloutDir))
	consoleRoutes(e)

	v1 := e.Group("/api/v1")
	v1.POST("/enroll", h.enroll)

	admin := v1.Group("", h.adminAuth)
	admin.GET("/sites", h.listSites)
	admin.POST("/sites", h.createSite)
	admin.POST("/sites/:id/enrollment-tokens", h.createEnrollmentTokens)
	admin.GET("/sites/:id/patch-state", h.sitePatchState)
	admin.GET("/patch-state", h.patchSummary)
	admin.GET("/devices", h.listDevices)
	admin.GET("/devices/:id", h.getDevice)
	admin.GET("/releases", h.listReleases)
	admin.POST("/releases", h.uploadRelease)
	admin.GET("/releases/:id", h.getRelease)
	admin.GET("/repository/targets", h.currentTargets)
	admin.POST("/repository/targets", h.publishTargets)
	admin.GET("/repository/:repo/root", h.currentRoot)
	admin.POST("/repository/:repo/root", h.updateRoot)
	h.rolloutRoutes(admin)
	h.vulnRoutes(admin)
	return e, nil
}

type handlers struct {
	opts Options
}

func bearer(c echo.Context) string {
	token, ok := strings.CutPrefix(c.Request().Header.Get(echo.HeaderAuthorization), "Bearer ")
	if !ok {
		return ""
	}
	return strings.TrimSpace(token)
}

func (h *handlers) adminAuth(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if subtle.ConstantTimeCompare([]byte(bearer(c)), []byte(h.opts.AdminToken)) != 1 {
			return fmt.Errorf("a valid admin bearer token is required: %w", problem.ErrUnauthorized)
		}
		return next(c)
	}
}

// bindJSON decodes a bounded JSON body, rejecting unknown fields.
func bindJSON(c echo.Context, v any) error {
	body, err := io.ReadAll(io.LimitReader(c.Request().Body, maxJSONBytes+1))
	if err != nil {
		return err
	}
	if len(body) > maxJSONBytes {
		return problem.Invalid(fmt.Sprintf("request body is larger than %d bytes", maxJSONBytes))
	}
	if err := decodeStrict(body, v); err != nil {
		return problem.Invalid(err.Error())
	}
	return nil
}

// requestLog logs one line per request. It never logs headers, so the
// Authorization header and cookies stay out of the logs.
func requestLog(log *slog.Logger) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			start := time.Now()
			err := next(c)
			if err != nil {
				c.Error(err)
			}
			req, res := c.Request(), c.Response()
			level := slog.LevelDebug
			if res.Status >= 500 {
				level = slog.LevelError
			} else if res.Status >= 400 {
				level = slog.LevelInfo
			}
			log.Log(req.Context(), level, "http request", "method", req.Method, "path", req.URL.Path,
				"status", res.Status, "duration", time.Since(start), "request_id", res.Header().Get(echo.HeaderXRequestID))
			return nil
		}
	}
}

// errorHandler maps errors to status codes in one place. A 500 shows the
// client only a request ID; the cause goes to the log.
func errorHandler(log *slog.Logger) echo.HTTPErrorHandler {
	return func(err error, c echo.Context) {
		if c.Response().Committed {
			return
		}
		status, body := classify(err)
		if status == http.StatusInternalServerError {
			id := c.Response().Header().Get(echo.HeaderXRequestID)
			log.Error("request failed", "request_id", id, "path", c.Request().URL.Path, "err", err)
			body = map[string]any{"error": "internal error", "request_id": id}
		}
		c.JSON(status, body)
	}
}

func classify(err error) (int, map[string]any) {
	var invalid *problem.InvalidError
	var he *echo.HTTPError
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &invalid):
		return http.StatusBadRequest, map[string]any{"error": "invalid input", "problems": invalid.Problems}
	case errors.As(err, &tooBig):
		return http.StatusRequestEntityTooLarge, map[string]any{"error": fmt.Sprintf("request body is larger than the %d bytes allowed", tooBig.Limit)}
	case errors.Is(err, problem.ErrNotFound):
		return http.StatusNotFound, map[string]any{"error": err.Error()}
	case errors.Is(err, problem.ErrConflict):
		return http.StatusConflict, map[string]any{"error": err.Error()}
	case errors.Is(err, problem.ErrUnauthorized):
		return http.StatusUnauthorized, map[string]any{"error": err.Error()}
	case errors.Is(err, problem.ErrForbidden):
		return http.StatusForbidden, map[string]any{"error": err.Error()}
	case errors.As(err, &he):
		return he.Code, map[string]any{"error": fmt.Sprint(he.Message)}
	}
	return http.StatusInternalServerError, nil
}
