package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

type site struct {
	ID           string `json:"id"`
	Name         string `json:"name"`
	Organisation string `json:"organisation"`
}

type patchCounts struct {
	Total      int            `json:"total"`
	Current    int            `json:"current"`
	Pending    int            `json:"pending"`
	Installing int            `json:"installing"`
	Failed     int            `json:"failed"`
	Versions   map[string]int `json:"versions"`
}

type device struct {
	ID               string    `json:"id"`
	SiteID           string    `json:"site_id"`
	Serial           string    `json:"serial"`
	Model            string    `json:"model"`
	InstalledVersion string    `json:"installed_version"`
	State            string    `json:"state"`
	StateReason      string    `json:"state_reason"`
	LastSeen         time.Time `json:"last_seen"`
	TargetVersion    string    `json:"target_version"`
	Status           string    `json:"status"`
}

type sitePatch struct {
	Site    site        `json:"site"`
	Counts  patchCounts `json:"counts"`
	Devices []device    `json:"devices"`
}

func siteCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "site", Short: "Create and list sites, and make enrollment tokens"}
	var org string
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a site, e.g. \"St. Mary Radiology\"",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var s site
			return e.postShow(cmd.Context(), "/api/v1/sites", map[string]string{"name": args[0], "organisation": org}, &s, func(w io.Writer) { fmt.Fprintf(w, "site %s: %s\n", s.ID, s.Name) })
		},
	}
	create.Flags().StringVar(&org, "organisation", "", "the organisation (hospital) the site belongs to, by ID or name; a new name makes it (default: the default organisation)")
	list := &cobra.Command{
		Use:   "list",
		Short: "List sites",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out struct {
				Sites []site `json:"sites"`
			}
			return e.getShow(cmd.Context(), "/api/v1/sites", &out, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tNAME\tORGANISATION")
				for _, s := range out.Sites {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", s.ID, s.Name, s.Organisation)
				}
				tw.Flush()
			})
		},
	}
	var count int
	tokens := &cobra.Command{
		Use:   "tokens SITE_ID",
		Short: "Make one-time enrollment tokens for devices of a site",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out struct {
				Tokens    []string  `json:"tokens"`
				ExpiresAt time.Time `json:"expires_at"`
			}
			return e.postShow(cmd.Context(), "/api/v1/sites/"+url.PathEscape(args[0])+"/enrollment-tokens", map[string]int{"count": count}, &out, func(w io.Writer) {
				for _, t := range out.Tokens {
					fmt.Fprintln(w, t)
				}
				fmt.Fprintf(e.stderr, "%d token(s), valid until %s, each usable once\n", len(out.Tokens), out.ExpiresAt.Format(time.RFC3339))
			})
		},
	}
	tokens.Flags().IntVar(&count, "count", 1, "number of tokens")
	cmd.AddCommand(create, list, tokens)
	return cmd
}

func patchStateCmd(e *env) *cobra.Command {
	var siteID string
	cmd := &cobra.Command{
		Use:   "patch-state",
		Short: "Show per-site patch state, or every device of one site with --site",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if siteID != "" {
				var sp sitePatch
				return e.getShow(cmd.Context(), "/api/v1/sites/"+url.PathEscape(siteID)+"/patch-state", &sp,
					func(w io.Writer) { printSitePatch(w, sp) })
			}
			var out struct {
				Sites []sitePatch `json:"sites"`
			}
			return e.getShow(cmd.Context(), "/api/v1/patch-state", &out, func(w io.Writer) { printSummary(w, out.Sites) })
		},
	}
	cmd.Flags().StringVar(&siteID, "site", "", "site ID: list its devices")
	return cmd
}

func fetchSummary(ctx context.Context, c *client) ([]sitePatch, error) {
	var out struct {
		Sites []sitePatch `json:"sites"`
	}
	err := c.getJSON(ctx, "/api/v1/patch-state", &out)
	return out.Sites, err
}

func printSummary(w io.Writer, sites []sitePatch) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SITE\tDEVICES\tCURRENT\tPENDING\tINSTALLING\tFAILED\tVERSIONS")
	for _, s := range sites {
		c := s.Counts
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%s\n", s.Site.Name, c.Total, c.Current, c.Pending, c.Installing, c.Failed, versions(c.Versions))
	}
	tw.Flush()
}

// versions renders {"1.1.0": 2, "1.0.0": 1} as "1.0.0×1 1.1.0×2".
func versions(v map[string]int) string {
	keys := make([]string, 0, len(v))
	for k := range v {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s×%d", k, v[k])
	}
	return strings.Join(parts, " ")
}

func printSitePatch(w io.Writer, sp sitePatch) {
	c := sp.Counts
	fmt.Fprintf(w, "%s (%s): %d devices, %d current, %d pending, %d installing, %d failed\n",
		sp.Site.Name, sp.Site.ID, c.Total, c.Current, c.Pending, c.Installing, c.Failed)
	printDevices(w, sp.Devices)
}

func printDevices(w io.Writer, devices []device) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tSERIAL\tMODEL\tRUNNING\tTARGET\tSTATUS\tSTATE\tLAST SEEN\tREASON")
	for _, d := range devices {
		seen := "never"
		if !d.LastSeen.IsZero() {
			seen = d.LastSeen.Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, d.Serial, d.Model, d.InstalledVersion, dash(d.TargetVersion), dash(d.Status), d.State, seen, d.StateReason)
	}
	tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func devicesCmd(e *env) *cobra.Command {
	var siteID string
	cmd := &cobra.Command{
		Use:   "devices",
		Short: "List enrolled devices",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			path := "/api/v1/devices"
			if siteID != "" {
				path += "?site_id=" + url.QueryEscape(siteID)
			}
			var raw []byte
			if err := c.getJSON(cmd.Context(), path, &raw); err != nil {
				return err
			}
			var out struct {
				Devices []device `json:"devices"`
			}
			return e.show(raw, &out, func(w io.Writer) { printDevices(w, out.Devices) })
		},
	}
	cmd.Flags().StringVar(&siteID, "site", "", "only devices of this site")
	cmd.AddCommand(revokeCmd(e))
	return cmd
}

// revokedDevice is the answer to a revocation.
type revokedDevice struct {
	ID            string    `json:"id"`
	SiteID        string    `json:"site_id"`
	RevokedAt     time.Time `json:"revoked_at"`
	RevokedReason string    `json:"revoked_reason"`
}

func revokeCmd(e *env) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "revoke DEVICE_ID --reason TEXT",
		Short: "Revoke a device: the broker and the API refuse its certificates from now on",
		Long: `Marks the device revoked. The embedded broker closes its connection and
refuses it; the API answers 401 to its certificate; the CRL in the server's
data directory (device-crl.pem) lists its certificates for an external
broker: reload Mosquitto (SIGHUP or restart) to apply it there.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out revokedDevice
			return e.postShow(cmd.Context(), "/api/v1/devices/"+url.PathEscape(args[0])+"/revoke", map[string]string{"reason": reason}, &out, func(w io.Writer) {
				fmt.Fprintf(w, "device %s revoked at %s: %s\n", out.ID, out.RevokedAt.Format(time.RFC3339), out.RevokedReason)
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why the device is revoked (required; kept with the device)")
	cmd.MarkFlagRequired("reason")
	return cmd
}
