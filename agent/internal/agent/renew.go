package agent

import (
	"context"
	"strings"
	"sync"
	"time"
)

// tlsBroker reports whether paho connects to url over TLS.
func tlsBroker(url string) bool {
	for _, scheme := range []string{"ssl://", "tls://", "mqtts://", "tcps://"} {
		if strings.HasPrefix(url, scheme) {
			return true
		}
	}
	return false
}

// maxRenewCheckInterval is the longest the agent waits between asking
// whether its certificate is due for renewal; certificates live for weeks.
// A short-lived certificate is checked every tenth of its life.
const maxRenewCheckInterval = time.Hour

func renewCheckInterval(leafLife time.Duration) time.Duration {
	return max(min(maxRenewCheckInterval, leafLife/10), time.Second)
}

// startRenewal renews the device certificate in the background while Run
// runs, and returns a function that stops it and waits. Renewal needs the
// API over HTTPS (the request is authenticated by the current
// certificate); over plain HTTP the agent says so once and keeps its
// certificate until it expires.
func (a *Agent) startRenewal() (stop func()) {
	creds := a.opts.Credentials
	if creds == nil {
		return func() {}
	}
	if !strings.HasPrefix(a.opts.ServerURL, "https://") {
		a.log.Warn("certificate renewal needs an https server_url; the certificate will not be renewed", "not_after", creds.Leaf().NotAfter)
		return func() {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			if now := a.opts.Now(); creds.RenewDue(now) {
				if err := creds.Renew(ctx, a.opts.HTTP, a.opts.ServerURL, a.opts.ServerRoots, now); err != nil {
					a.log.Warn("certificate renewal failed; will retry", "not_after", creds.Leaf().NotAfter, "err", err)
				} else {
					a.log.Info("certificate renewed", "not_after", creds.Leaf().NotAfter)
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(jitter(renewCheckInterval(creds.Leaf().NotAfter.Sub(creds.Leaf().NotBefore)))):
			}
		}
	}()
	return func() {
		cancel()
		wg.Wait()
	}
}
