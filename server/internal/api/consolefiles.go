package api

import (
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/aftercare/aftercare/server/internal/api/console"
)

// consoleFiles serves the web console's static files under /console/. The
// files need no token: they hold no data, and every API call they make
// carries the person's own token.
func consoleFiles() echo.HandlerFunc {
	files := http.StripPrefix("/console/", http.FileServer(http.FS(console.Files())))
	return func(c echo.Context) error {
		hdr := c.Response().Header()
		hdr.Set("Content-Security-Policy", console.ContentSecurityPolicy)
		hdr.Set("X-Content-Type-Options", "nosniff")
		hdr.Set("Referrer-Policy", "no-referrer")
		hdr.Set("Cache-Control", "no-cache")
		files.ServeHTTP(c.Response(), c.Request())
		return nil
	}
}

func consoleRedirect(c echo.Context) error { return c.Redirect(http.StatusFound, "/console/") }
