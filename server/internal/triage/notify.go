package triage

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/smtp"
	"strings"
	"time"

	"github.com/aftercare/aftercare/internal/confload"
	"github.com/aftercare/aftercare/server/internal/store"
)

// Notification channels.
const (
	ChannelWebhook = "webhook"
	ChannelEmail   = "email"
)

// SMTP configures email delivery.
type SMTP struct {
	Addr     string          // host:port of the SMTP server
	Username string          // "" for no authentication
	Password confload.Secret // with Username; sent only over TLS (or to localhost)
	From     string
	To       []string
}

// NotifierOptions configure a Notifier.
type NotifierOptions struct {
	Store *store.Store // required
	Log   *slog.Logger // required
	HTTP  *http.Client // required when WebhookURL is set; has timeouts
	// WebhookURL receives a JSON POST per notification; "" disables webhooks.
	WebhookURL string
	// WebhookSecret, when set, signs each body: header
	// X-Aftercare-Signature: sha256=<hex HMAC-SHA256 of the body>.
	WebhookSecret confload.Secret
	// SMTP, when Addr is set, sends each notification by email.
	SMTP SMTP
	Now  func() time.Time // nil: time.Now
}

// A Notifier delivers queued notifications. It is safe for concurrent use
// by one Deliver at a time per process; concurrent Delivers may send twice.
type Notifier struct {
	opts NotifierOptions
}

// NewNotifier returns a Notifier.
func NewNotifier(opts NotifierOptions) (*Notifier, error) {
	if opts.Store == nil || opts.Log == nil {
		return nil, errors.New("triage: Store and Log are required")
	}
	if opts.WebhookURL != "" && opts.HTTP == nil {
		return nil, errors.New("triage: HTTP is required with a webhook URL")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Notifier{opts: opts}, nil
}

// Channels returns the configured channels.
func (n *Notifier) Channels() []string {
	if n == nil {
		return nil
	}
	var out []string
	if n.opts.WebhookURL != "" {
		out = append(out, ChannelWebhook)
	}
	if n.opts.SMTP.Addr != "" {
		out = append(out, ChannelEmail)
	}
	return out
}

// maxAttempts bounds retries of one notification.
const maxAttempts = 10

// Deliver sends every pending notification once and records the outcome.
// It returns how many were sent.
func (n *Notifier) Deliver(ctx context.Context) (int, error) {
	pending, err := n.opts.Store.PendingNotifications(ctx, 100)
	if err != nil {
		return 0, err
	}
	sent := 0
	for _, nt := range pending {
		if nt.Attempts >= maxAttempts {
			continue
		}
		var err error
		switch nt.Channel {
		case ChannelWebhook:
			err = n.postWebhook(ctx, nt)
		case ChannelEmail:
			err = n.sendEmail(ctx, nt)
		default:
			err = fmt.Errorf("unknown channel %q", nt.Channel)
		}
		log := n.opts.Log.With("notification_id", nt.ID, "channel", nt.Channel)
		if err != nil {
			log.Warn("notification not delivered", "attempt", nt.Attempts+1, "err", err)
		} else {
			sent++
			log.Info("notification delivered")
		}
		msg := ""
		if err != nil {
			msg = err.Error()
		}
		if err := n.opts.Store.MarkNotification(ctx, nt.ID, err == nil, msg, n.opts.Now()); err != nil {
			return sent, err
		}
	}
	return sent, nil
}

func (n *Notifier) postWebhook(ctx context.Context, nt store.Notification) error {
	if n.opts.WebhookURL == "" {
		return errors.New("no webhook URL is configured (vuln.webhook_url)")
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.opts.WebhookURL, strings.NewReader(nt.Body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Aftercare-Notification", nt.ID)
	if n.opts.WebhookSecret != "" {
		mac := hmac.New(sha256.New, []byte(string(n.opts.WebhookSecret)))
		mac.Write([]byte(nt.Body))
		req.Header.Set("X-Aftercare-Signature", "sha256="+hex.EncodeToString(mac.Sum(nil)))
	}
	res, err := n.opts.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("POST webhook: %w", err)
	}
	defer res.Body.Close()
	io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10))
	if res.StatusCode/100 != 2 {
		return fmt.Errorf("POST webhook: status %d", res.StatusCode)
	}
	return nil
}

func (n *Notifier) sendEmail(ctx context.Context, nt store.Notification) error {
	c := n.opts.SMTP
	if c.Addr == "" {
		return errors.New("no SMTP server is configured (vuln.smtp.addr)")
	}
	var msg bytes.Buffer
	fmt.Fprintf(&msg, "From: %s\r\nTo: %s\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <%s@aftercare>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
		c.From, strings.Join(c.To, ", "), nt.Subject, n.opts.Now().UTC().Format(time.RFC1123Z), nt.ID)
	msg.WriteString(strings.ReplaceAll(nt.Body, "\n", "\r\n"))
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", c.Addr)
	if err != nil {
		return fmt.Errorf("connect to SMTP server %s: %w", c.Addr, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	host, _, _ := net.SplitHostPort(c.Addr)
	cl, err := smtp.NewClient(conn, host)
	if err != nil {
		return fmt.Errorf("SMTP server %s: %w", c.Addr, err)
	}
	defer cl.Close()
	if ok, _ := cl.Extension("STARTTLS"); ok {
		if err := cl.StartTLS(&tls.Config{ServerName: host}); err != nil {
			return fmt.Errorf("SMTP STARTTLS with %s: %w", c.Addr, err)
		}
	}
	if c.Username != "" {
		// PlainAuth refuses to send the password without TLS unless the
		// server is on localhost.
		if err := cl.Auth(smtp.PlainAuth("", c.Username, string(c.Password), host)); err != nil {
			return fmt.Errorf("SMTP AUTH with %s: %w", c.Addr, err)
		}
	}
	if err := cl.Mail(c.From); err != nil {
		return fmt.Errorf("SMTP MAIL FROM %s: %w", c.From, err)
	}
	for _, to := range c.To {
		if err := cl.Rcpt(to); err != nil {
			return fmt.Errorf("SMTP RCPT TO %s: %w", to, err)
		}
	}
	w, err := cl.Data()
	if err != nil {
		return fmt.Errorf("SMTP DATA: %w", err)
	}
	if _, err := w.Write(msg.Bytes()); err != nil {
		return fmt.Errorf("SMTP DATA: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("SMTP DATA: %w", err)
	}
	return cl.Quit()
}
