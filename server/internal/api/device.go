package api

import (
	"fmt"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/store"
)

// deviceKey is where deviceAuth leaves the authenticated device.
const deviceKey = "aftercare.device"

// deviceAuth admits a request made over TLS with a client certificate that
// the listener verified against the device CA, issued to an enrolled
// device that is not revoked. Anything else is 401: plain HTTP, no
// certificate, a revoked device.
func (h *handlers) deviceAuth(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		st := c.Request().TLS
		if st == nil || len(st.VerifiedChains) == 0 {
			return fmt.Errorf("a device client certificate over HTTPS is required: %w", problem.ErrUnauthorized)
		}
		d, err := h.opts.Fleet.AuthenticateCert(c.Request().Context(), st.VerifiedChains[0][0])
		if err != nil {
			return err
		}
		c.Set(deviceKey, d)
		return next(c)
	}
}

func authenticatedDevice(c echo.Context) store.Device {
	d, _ := c.Get(deviceKey).(store.Device)
	return d
}

// whoami tells a device who the server takes it for; the agent uses it to
// try a renewed certificate before it replaces the old one.
func (h *handlers) whoami(c echo.Context) error {
	d := authenticatedDevice(c)
	return c.JSON(http.StatusOK, map[string]string{"device_id": d.ID, "site_id": d.SiteID})
}

func (h *handlers) renewCertificate(c echo.Context) error {
	var req protocol.RenewRequest
	if err := bindJSON(c, &req); err != nil {
		return err
	}
	resp, err := h.opts.Fleet.RenewCertificate(c.Request().Context(), authenticatedDevice(c), req.CSR)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, resp)
}

type revokeRequest struct {
	Reason string `json:"reason"`
}

func (h *handlers) revokeDevice(c echo.Context) error {
	var req revokeRequest
	if err := bindJSON(c, &req); err != nil {
		return err
	}
	d, err := h.opts.Fleet.Revoke(c.Request().Context(), c.Param("id"), req.Reason)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, d)
}

// deviceCA serves the device CA certificate, e.g. for an external broker's
// cafile.
func (h *handlers) deviceCA(c echo.Context) error {
	return c.Blob(http.StatusOK, "application/x-pem-file", h.opts.Fleet.CA().CertificatePEM())
}
