// Package console holds the web console: static pages embedded in the
// server binary that call the same /api/v1 routes as the CLI, with the
// person's API token.
//
// The pages never build markup from API data (every value goes through
// textContent), load nothing from another origin, and keep the token in
// sessionStorage only, so it is forgotten when the tab closes. The server
// sends them with a Content-Security-Policy that allows only its own
// scripts, styles and API.
package console

import (
	"embed"
	"io/fs"
)

//go:embed static
var static embed.FS

// Files returns the console's files, rooted at the console's URL prefix.
func Files() fs.FS {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		// The directory is embedded at build time; a miss is a build bug.
		panic("console: embedded static directory missing: " + err.Error())
	}
	return sub
}

// ContentSecurityPolicy is sent with every console response.
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
