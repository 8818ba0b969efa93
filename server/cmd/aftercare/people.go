package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/aftercare/aftercare/server/internal/audit"
)

type organisation struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
}

type user struct {
	ID             string    `json:"id"`
	Name           string    `json:"name"`
	Role           string    `json:"role"`
	OrganisationID string    `json:"organisation_id"`
	SiteIDs        []string  `json:"site_ids"`
	CreatedAt      time.Time `json:"created_at"`
	DisabledAt     time.Time `json:"disabled_at"`
}

type apiToken struct {
	ID        string    `json:"id"`
	User      string    `json:"user"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	RevokedAt time.Time `json:"revoked_at"`
	Secret    string    `json:"token"` // only in the answer to create
}

func day(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04")
}

func orgsCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "orgs", Short: "Organisations (hospitals) that own sites"}
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Create an organisation, e.g. \"St. Mary Hospital\"",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var o organisation
			return e.postShow(cmd.Context(), "/api/v1/orgs", map[string]string{"name": args[0]}, &o, func(w io.Writer) {
				fmt.Fprintf(w, "organisation %s: %s\n", o.ID, o.Name)
			})
		},
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List organisations (hospital IT sees its own)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out struct {
				Organisations []organisation `json:"organisations"`
			}
			return e.getShow(cmd.Context(), "/api/v1/orgs", &out, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tNAME\tCREATED")
				for _, o := range out.Organisations {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", o.ID, o.Name, day(o.CreatedAt))
				}
				tw.Flush()
			})
		},
	}
	move := &cobra.Command{
		Use:   "move-site SITE_ID ORGANISATION",
		Short: "Put a site into an organisation (by ID or name)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var s site
			return e.postShow(cmd.Context(), "/api/v1/sites/"+url.PathEscape(args[0])+"/organisation", map[string]string{"organisation": args[1]}, &s, func(w io.Writer) {
				fmt.Fprintf(w, "site %s (%s) is in %s\n", s.ID, s.Name, s.Organisation)
			})
		},
	}
	cmd.AddCommand(create, list, move)
	return cmd
}

func usersCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "users", Short: "People and tools, each with one role"}
	var role, org string
	var sites []string
	create := &cobra.Command{
		Use:   "create NAME --role ROLE",
		Short: "Create a user: admin, release_engineer, psirt, auditor, or hospital_it with --organisation or --site",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var u user
			body := map[string]any{"name": args[0], "role": role, "organisation": org, "site_ids": sites}
			return e.postShow(cmd.Context(), "/api/v1/users", body, &u, func(w io.Writer) {
				fmt.Fprintf(w, "user %s: %s (%s)\n", u.ID, u.Name, u.Role)
			})
		},
	}
	create.Flags().StringVar(&role, "role", "", "admin, release_engineer, psirt, auditor or hospital_it (required)")
	create.Flags().StringVar(&org, "organisation", "", "hospital_it: the organisation (ID or name) whose sites the user sees")
	create.Flags().StringSliceVar(&sites, "site", nil, "hospital_it: a site ID the user sees (repeat for several)")
	create.MarkFlagRequired("role")
	list := &cobra.Command{
		Use:   "list",
		Short: "List users",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out struct {
				Users []user `json:"users"`
			}
			return e.getShow(cmd.Context(), "/api/v1/users", &out, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tROLE\tSCOPE\tCREATED\tDISABLED")
				for _, u := range out.Users {
					scope := "all sites"
					switch {
					case u.OrganisationID != "":
						scope = "organisation " + u.OrganisationID
					case len(u.SiteIDs) > 0:
						scope = "sites " + strings.Join(u.SiteIDs, ",")
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", u.Name, u.Role, scope, day(u.CreatedAt), day(u.DisabledAt))
				}
				tw.Flush()
			})
		},
	}
	disable := &cobra.Command{
		Use:   "disable USER",
		Short: "Disable a user (by name or ID); its tokens stop working at once",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var u user
			return e.postShow(cmd.Context(), "/api/v1/users/"+url.PathEscape(args[0])+"/disable", map[string]string{}, &u, func(w io.Writer) {
				fmt.Fprintf(w, "user %s disabled at %s\n", u.Name, day(u.DisabledAt))
			})
		},
	}
	var newOrg string
	var newSites []string
	setRole := &cobra.Command{
		Use:   "set-role USER ROLE",
		Short: "Change a user's role (and, for hospital_it, its --organisation or --site)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var u user
			body := map[string]any{"role": args[1], "organisation": newOrg, "site_ids": newSites}
			return e.postShow(cmd.Context(), "/api/v1/users/"+url.PathEscape(args[0])+"/role", body, &u, func(w io.Writer) {
				fmt.Fprintf(w, "user %s is now %s\n", u.Name, u.Role)
			})
		},
	}
	setRole.Flags().StringVar(&newOrg, "organisation", "", "hospital_it: the organisation (ID or name)")
	setRole.Flags().StringSliceVar(&newSites, "site", nil, "hospital_it: a site ID (repeat for several)")
	cmd.AddCommand(create, list, disable, setRole)
	return cmd
}

func tokensCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "tokens", Short: "API tokens of users (shown once, stored hashed)"}
	var name, expires, userName string
	create := &cobra.Command{
		Use:   "create USER",
		Short: "Make an API token for a user; it is printed once, to standard output",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var t apiToken
			body := map[string]string{"user": args[0], "name": name, "expires_in": expires}
			return e.postShow(cmd.Context(), "/api/v1/tokens", body, &t, func(w io.Writer) {
				fmt.Fprintln(w, t.Secret)
				exp := "never expires"
				if !t.ExpiresAt.IsZero() {
					exp = "expires " + t.ExpiresAt.Format(time.RFC3339)
				}
				fmt.Fprintf(e.stderr, "token %s for %s (%s); this is the only time it is shown\n", t.ID, t.User, exp)
			})
		},
	}
	create.Flags().StringVar(&name, "name", "cli", "what the token is for, e.g. \"ci\" or \"laptop\"")
	create.Flags().StringVar(&expires, "expires-in", "", "lifetime, e.g. 720h (default: no expiry)")
	list := &cobra.Command{
		Use:   "list",
		Short: "List tokens (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out struct {
				Tokens []apiToken `json:"tokens"`
			}
			return e.getShow(cmd.Context(), "/api/v1/tokens?"+query("user", userName), &out, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tUSER\tNAME\tCREATED\tEXPIRES\tREVOKED")
				for _, t := range out.Tokens {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.User, t.Name, day(t.CreatedAt), day(t.ExpiresAt), day(t.RevokedAt))
				}
				tw.Flush()
			})
		},
	}
	list.Flags().StringVar(&userName, "user", "", "only this user's tokens")
	revoke := &cobra.Command{
		Use:   "revoke TOKEN_ID",
		Short: "Revoke a token at once",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var t apiToken
			return e.postShow(cmd.Context(), "/api/v1/tokens/"+url.PathEscape(args[0])+"/revoke", map[string]string{}, &t, func(w io.Writer) {
				fmt.Fprintf(w, "token %s of %s revoked at %s\n", t.ID, t.User, day(t.RevokedAt))
			})
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}

func auditCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "The hash-chained audit log of every human decision and refused write"}
	var after int64
	var limit int
	var actor, action string
	list := &cobra.Command{
		Use:   "list",
		Short: "List audit entries, oldest first (--action rollout. for every rollout decision)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out struct {
				Entries []audit.Entry `json:"entries"`
			}
			q := query("after", strconv.FormatInt(after, 10), "limit", strconv.Itoa(limit), "actor", actor, "action", action)
			return e.getShow(cmd.Context(), "/api/v1/audit?"+q, &out, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "SEQ\tTIME\tACTOR\tROLE\tACTION\tOBJECT\tOUTCOME\tREASON")
				for _, en := range out.Entries {
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", en.Seq, en.At.Format(time.RFC3339), en.Actor, en.Role, en.Action, en.Object, en.Outcome, en.Reason)
				}
				tw.Flush()
			})
		},
	}
	list.Flags().Int64Var(&after, "after", 0, "only entries after this sequence number")
	list.Flags().IntVar(&limit, "limit", 100, "at most this many entries (1-10000)")
	list.Flags().StringVar(&actor, "actor", "", "only this actor's entries")
	list.Flags().StringVar(&action, "action", "", "only this action, or actions starting with it when it ends in '.'")
	var expect string
	verify := &cobra.Command{
		Use:   "verify",
		Short: "Download the whole audit log and check its hash chain here, not on the server",
		Long: `Download the whole audit log and check its hash chain here: each entry's
hash over its content, the numbering, and the link to the previous entry.
An edited, removed or inserted entry breaks the chain. Entries cut from the
end cannot be seen from the chain alone: keep the head this prints (seq and
hash) somewhere else and pass it as --expect-head SEQ:HASH next time.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			seq, hash, n, err := verifyAudit(cmd.Context(), c, expect)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "audit log intact: %d entries; head %d:%s\n", n, seq, hash)
			return nil
		},
	}
	verify.Flags().StringVar(&expect, "expect-head", "", "SEQ:HASH of a head printed before; fails if that entry is gone or changed")
	cmd.AddCommand(list, verify)
	return cmd
}

// verifyAudit pages through the audit log, checking the chain as it goes.
func verifyAudit(ctx context.Context, c *client, expect string) (seq int64, hash string, n int, err error) {
	var wantSeq int64
	var wantHash string
	if expect != "" {
		s, h, ok := strings.Cut(expect, ":")
		wantSeq, err = strconv.ParseInt(s, 10, 64)
		if !ok || err != nil || wantSeq < 1 || len(h) != 64 {
			return 0, "", 0, fmt.Errorf("--expect-head %q must be SEQ:HASH as `audit verify` printed it", expect)
		}
		wantHash = h
	}
	var v audit.Verifier
	found := false
	const page = 10_000
	for after := int64(0); ; {
		var out struct {
			Entries []audit.Entry `json:"entries"`
		}
		if err := c.getJSON(ctx, "/api/v1/audit?"+query("after", strconv.FormatInt(after, 10), "limit", strconv.Itoa(page)), &out); err != nil {
			return 0, "", 0, err
		}
		for _, en := range out.Entries {
			if err := v.Next(en); err != nil {
				return 0, "", n, err
			}
			if en.Seq == wantSeq {
				if en.Hash != wantHash {
					return 0, "", n, fmt.Errorf("entry %d has hash %s, not the %s recorded before: the log was rewritten from there on", wantSeq, en.Hash, wantHash)
				}
				found = true
			}
			n++
		}
		if len(out.Entries) < page {
			break
		}
		after = out.Entries[len(out.Entries)-1].Seq
	}
	seq, hash = v.Head()
	if expect != "" && !found {
		return 0, "", n, errors.New("the log ends at entry " + strconv.FormatInt(seq, 10) + ", before the recorded head " + expect + ": entries were cut from the end")
	}
	return seq, hash, n, nil
}
