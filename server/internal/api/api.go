// Package api is the fleet server's HTTP edge: the JSON API for people and
// devices, and the two TUF repositories (release and rollout) as static
// files. It is the only
// package that knows Echo; handlers decode requests, call the domain
// packages, and leave every error to one handler that maps it to a status.
//
// Authentication and authorisation (package access):
//   - people and tools: "Authorization: Bearer <API token>" of a user, or
//     the configured admin token (a bootstrap admin). Every route declares
//     the permission it needs in the route table (routes.go); the authorize
//     middleware refuses what the principal's role lacks (403), handlers
//     answer 404 for objects outside a hospital's scope, and refused
//     writes and decisions go to the audit log;
//   - devices: the client certificate from enrollment (mutual TLS, verified
//     by the listener against the device CA) on /api/v1/device/...; a
//     revoked device's certificate gets 401;
//   - POST /api/v1/enroll takes a one-time enrollment token and a CSR in
//     its body;
//   - /tuf/ is public: its files are signed, and a device checks them. A
//     device learns its assignment from /tuf/rollout/, not from the API.
package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"

	"github.com/aftercare/aftercare/server/internal/access"
	"github.com/aftercare/aftercare/server/internal/fleet"
	"github.com/aftercare/aftercare/server/internal/ingest"
	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/release"
	"github.com/aftercare/aftercare/server/internal/rollout"
	"github.com/aftercare/aftercare/server/internal/store"
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
	Access         *access.Service  // required: authenticates tokens, manages users
	Store          *store.Store     // required: the audit log and scoped lookups
	MaxBundleBytes int64            // largest accepted release bundle
	Log            *slog.Logger     // required
	Vuln           *vuln.Service    // required
	Rollouts       *rollout.Engine  // required
	// FeedSync runs one feed sync for POST /api/v1/vuln/feeds/sync.
	FeedSync     func(ctx context.Context) (vuln.SyncResult, error)
	MaxFeedBytes int64 // largest accepted feed file
	// IngestStats reports the event ingester's counters for
	// GET /api/v1/events/ingest; nil answers zeros.
	IngestStats func() ingest.Stats
	Now         func() time.Time // nil: time.Now; for tests only
}

// maxJSONBytes bounds every JSON request body.
const maxJSONBytes = 64 << 10 // 64 KiB

// New returns the server's HTTP handler, an *echo.Echo.
func New(opts Options) (http.Handler, error) {
	if opts.Fleet == nil || opts.Releases == nil || opts.Repo == nil || opts.Rollout == nil || opts.RepoDir == "" || opts.RolloutDir == "" ||
		opts.Access == nil || opts.Store == nil || opts.Log == nil || opts.Vuln == nil || opts.Rollouts == nil {
		return nil, errors.New("api: Fleet, Releases, Repo, Rollout, RepoDir, RolloutDir, Access, Store, Log, Vuln and Rollouts are required")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = errorHandler(opts.Log)
	// The rate limit of failed token checks counts by the connection's
	// address; X-Forwarded-For would let a client pick its own.
	e.IPExtractor = echo.ExtractIPDirect()
	h := &handlers{opts: opts, limiter: access.NewLimiter(access.FailureLimit, access.FailureWindow, opts.Now)}
	table := map[string]route{}
	for _, r := range h.routes() {
		table[r.method+" "+r.path] = r
	}
	e.Use(middleware.RequestID())
	e.Use(requestLog(opts.Log))
	e.Use(middleware.Recover())
	e.Use(h.authorize(table))
	for _, r := range h.routes() {
		e.Add(r.method, r.path, r.handler)
	}
	return e, nil
}

type handlers struct {
	opts    Options
	limiter *access.Limiter
}

func (h *handlers) now() time.Time { return h.opts.Now() }

func bearer(c echo.Context) string {
	token, ok := strings.CutPrefix(c.Request().Header.Get(echo.HeaderAuthorization), "Bearer ")
	if !ok {
		return ""
	}
	return strings.TrimSpace(token)
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
