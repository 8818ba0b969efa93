// Command aftercare is the people's side of Aftercare: release engineers
// make keys, build, sign and upload releases and roll them out; operators
// create sites and enrollment tokens and read patch state. `aftercare demo`
// runs the whole loop on one machine.
//
// The API commands read the server URL from --server or AFTERCARE_SERVER and
// the API token (a user's, or the bootstrap admin token) from
// AFTERCARE_TOKEN or --token-file, never from a flag value, so it does not
// show in process lists or shell history. --reason says why a change is
// made; the server keeps it in the audit log.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "aftercare:", err)
		os.Exit(1)
	}
}

// env is what commands read from the process environment.
type env struct {
	getenv func(string) string
	stdout io.Writer
	stderr io.Writer
	// global flags
	server    string
	tokenFile string
	json      bool
	reason    string // sent as X-Aftercare-Reason with every request, for the audit log
}

func (e *env) client() (*client, error) {
	token := e.getenv("AFTERCARE_TOKEN")
	if e.tokenFile != "" {
		b, err := os.ReadFile(e.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	if token == "" {
		return nil, errors.New("no API token: set AFTERCARE_TOKEN or pass --token-file (an API token from `aftercare tokens create`, or the admin token the server writes to <data_dir>/admin-token)")
	}
	c := newClient(e.server, token)
	c.reason = e.reason
	return c, nil
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	e := &env{getenv: getenv, stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:           "aftercare",
		Short:         "Postmarket cybersecurity for connected medical device fleets",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	server := getenv("AFTERCARE_SERVER")
	if server == "" {
		server = "http://127.0.0.1:8080"
	}
	root.PersistentFlags().StringVar(&e.server, "server", server, "fleet server URL (env AFTERCARE_SERVER)")
	root.PersistentFlags().StringVar(&e.tokenFile, "token-file", "", "file holding the admin token (default: env AFTERCARE_TOKEN)")
	root.PersistentFlags().BoolVar(&e.json, "json", false, "print JSON instead of tables")
	root.PersistentFlags().StringVar(&e.reason, "reason", "", "why you make this change; kept in the audit log")
	root.AddCommand(keysCmd(e), releaseCmd(e), sitePolicyCmds(e, siteCmd(e)), rolloutCmd(e), patchStateCmd(e), deviceLabelCmd(e, devicesCmd(e)),
		demoCmd(e), vulnCmd(e), sbomCmd(e), complianceCmd(e), orgsCmd(e), usersCmd(e), tokensCmd(e), auditCmd(e), offlineBundleCmd(e), eventsCmd(e), alertsCmd(e))
	root.AddCommand(approvalCmds(e)...)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	return root.ExecuteContext(ctx)
}
