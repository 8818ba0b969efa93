package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// maxResponseBytes bounds an API response the CLI reads.
const maxResponseBytes = 64 << 20 // 64 MiB

// client talks to the fleet server's API with an API token.
type client struct {
	base   string
	token  string
	reason string // X-Aftercare-Reason; "" sends none
	http   *http.Client
}

func newClient(base, token string) *client {
	return &client{
		base:  strings.TrimRight(base, "/"),
		token: token,
		http: &http.Client{Transport: &http.Transport{
			DialContext:           (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
			ResponseHeaderTimeout: 10 * time.Minute, // a large upload is verified before the answer
		}},
	}
}

// apiError is a non-2xx answer, with the server's message.
type apiError struct {
	Status   int
	Message  string   `json:"error"`
	Problems []string `json:"problems"`
}

func (e *apiError) Error() string {
	msg := fmt.Sprintf("server answered %d: %s", e.Status, e.Message)
	for _, p := range e.Problems {
		msg += "\n  - " + p
	}
	return msg
}

// do sends a request and decodes a JSON answer into out (unless nil).
func (c *client) do(ctx context.Context, method, path, contentType string, body io.Reader, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if c.reason != "" {
		req.Header.Set("X-Aftercare-Reason", c.reason)
	}
	res, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, maxResponseBytes))
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if res.StatusCode/100 != 2 {
		ae := &apiError{Status: res.StatusCode}
		if json.Unmarshal(b, ae) != nil || ae.Message == "" {
			ae.Message = strings.TrimSpace(string(b))
		}
		return ae
	}
	if out == nil || res.StatusCode == http.StatusNoContent {
		return nil
	}
	if raw, ok := out.(*[]byte); ok {
		*raw = b
		return nil
	}
	return json.Unmarshal(b, out)
}

func (c *client) getJSON(ctx context.Context, path string, out any) error {
	return c.do(ctx, http.MethodGet, path, "", nil, out)
}

func (c *client) postJSON(ctx context.Context, path string, in, out any) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodPost, path, "application/json", bytes.NewReader(b), out)
}

// uploadRelease streams the bundle and the signed targets metadata as a
// multipart form, without holding the bundle in memory.
func (c *client) uploadRelease(ctx context.Context, bundlePath string, targets []byte, out any) error {
	f, err := os.Open(bundlePath)
	if err != nil {
		return err
	}
	defer f.Close()
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		err := func() error {
			tw, err := mw.CreateFormFile("targets", "targets.json")
			if err != nil {
				return err
			}
			if _, err := tw.Write(targets); err != nil {
				return err
			}
			bw, err := mw.CreateFormFile("bundle", "bundle.tar")
			if err != nil {
				return err
			}
			if _, err := io.Copy(bw, f); err != nil {
				return err
			}
			return mw.Close()
		}()
		pw.CloseWithError(err)
	}()
	return c.do(ctx, http.MethodPost, "/api/v1/releases", mw.FormDataContentType(), pr, out)
}
