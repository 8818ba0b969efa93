package api

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/aftercare/aftercare/server/internal/access"
	"github.com/aftercare/aftercare/server/internal/audit"
	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/store"
)

// reasonOr returns the body's reason, or the X-Aftercare-Reason header.
func reasonOr(c echo.Context, body string) string {
	if body != "" {
		return body
	}
	return reason(c)
}

func (h *handlers) listOrgs(c echo.Context) error {
	orgs, err := h.opts.Access.Organisations(c.Request().Context(), principalOf(c))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"organisations": nonNil(orgs)})
}

type createOrgRequest struct {
	Name   string `json:"name"`
	Reason string `json:"reason,omitempty"`
}

func (h *handlers) createOrg(c echo.Context) error {
	var req createOrgRequest
	if err := bindJSON(c, &req); err != nil {
		return err
	}
	o, err := h.opts.Access.CreateOrganisation(c.Request().Context(), principalOf(c), req.Name, reasonOr(c, req.Reason))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, o)
}

type moveSiteRequest struct {
	Organisation string `json:"organisation"` // ID or name
	Reason       string `json:"reason,omitempty"`
}

func (h *handlers) moveSite(c echo.Context) error {
	var req moveSiteRequest
	if err := bindJSON(c, &req); err != nil {
		return err
	}
	site, err := h.opts.Access.MoveSite(c.Request().Context(), principalOf(c), c.Param("id"), req.Organisation, reasonOr(c, req.Reason))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, site)
}

func (h *handlers) listUsers(c echo.Context) error {
	users, err := h.opts.Access.Users(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"users": nonNil(users)})
}

func (h *handlers) createUser(c echo.Context) error {
	var req access.UserRequest
	if err := bindJSON(c, &req); err != nil {
		return err
	}
	req.Reason = reasonOr(c, req.Reason)
	u, err := h.opts.Access.CreateUser(c.Request().Context(), principalOf(c), req)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, u)
}

func (h *handlers) setRole(c echo.Context) error {
	var req access.UserRequest
	if err := bindJSON(c, &req); err != nil {
		return err
	}
	req.Reason = reasonOr(c, req.Reason)
	u, err := h.opts.Access.SetRole(c.Request().Context(), principalOf(c), c.Param("id"), req)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, u)
}

type reasonRequest struct {
	Reason string `json:"reason,omitempty"`
}

// bindReason reads an optional {"reason": ...} body.
func bindReason(c echo.Context) (string, error) {
	var req reasonRequest
	if c.Request().ContentLength != 0 {
		if err := bindJSON(c, &req); err != nil {
			return "", err
		}
	}
	return reasonOr(c, req.Reason), nil
}

func (h *handlers) disableUser(c echo.Context) error {
	why, err := bindReason(c)
	if err != nil {
		return err
	}
	u, err := h.opts.Access.DisableUser(c.Request().Context(), principalOf(c), c.Param("id"), why)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, u)
}

func (h *handlers) listTokens(c echo.Context) error {
	tokens, err := h.opts.Access.Tokens(c.Request().Context(), c.QueryParam("user"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"tokens": nonNil(tokens)})
}

// createTokenResponse shows the secret, once.
type createTokenResponse struct {
	store.Token
	Secret string `json:"token"`
}

func (h *handlers) createToken(c echo.Context) error {
	var req access.TokenRequest
	if err := bindJSON(c, &req); err != nil {
		return err
	}
	req.Reason = reasonOr(c, req.Reason)
	secret, t, err := h.opts.Access.CreateToken(c.Request().Context(), principalOf(c), req)
	if err != nil {
		return err
	}
	c.Response().Header().Set("Cache-Control", "no-store")
	return c.JSON(http.StatusCreated, createTokenResponse{Token: t, Secret: secret})
}

func (h *handlers) revokeToken(c echo.Context) error {
	why, err := bindReason(c)
	if err != nil {
		return err
	}
	t, err := h.opts.Access.RevokeToken(c.Request().Context(), principalOf(c), c.Param("id"), why)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, t)
}

// listAudit returns audit entries in seq order: ?after=<seq>&limit=&actor=&action=
// (an action ending in "." is a prefix, e.g. "rollout.").
func (h *handlers) listAudit(c echo.Context) error {
	f := store.AuditFilter{Actor: c.QueryParam("actor"), Action: c.QueryParam("action")}
	var problems []string
	if v := c.QueryParam("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			problems = append(problems, fmt.Sprintf("after %q must be a sequence number (0 or more)", v))
		}
		f.AfterSeq = n
	}
	if v := c.QueryParam("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10_000 {
			problems = append(problems, fmt.Sprintf("limit %q must be a number from 1 to 10000", v))
		}
		f.Limit = n
	}
	if err := problem.Invalid(problems...); err != nil {
		return err
	}
	entries, err := h.opts.Store.AuditEntries(c.Request().Context(), f)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"entries": nonNil(entries)})
}

// auditVerification is the answer of GET /api/v1/audit/verify.
type auditVerification struct {
	OK       bool   `json:"ok"`
	HeadSeq  int64  `json:"head_seq,omitempty"`
	HeadHash string `json:"head_hash,omitempty"`
	BrokenAt int64  `json:"broken_at,omitempty"`
	Problem  string `json:"problem,omitempty"`
}

// verifyAudit checks the chain on the server. `aftercare audit verify`
// checks the entries itself; this is for monitoring.
func (h *handlers) verifyAudit(c echo.Context) error {
	seq, hash, err := h.opts.Store.VerifyAudit(c.Request().Context())
	var ce *audit.ChainError
	switch {
	case errors.As(err, &ce):
		return c.JSON(http.StatusOK, auditVerification{BrokenAt: ce.Seq, Problem: ce.Error()})
	case err != nil:
		return err
	}
	return c.JSON(http.StatusOK, auditVerification{OK: true, HeadSeq: seq, HeadHash: hash})
}
