package siem

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"io"
	"math/big"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/server/internal/store"
)

var update = flag.Bool("update", false, "rewrite testdata/export.golden")

var at = time.Date(2026, 11, 23, 2, 14, 5, 3000000, time.UTC)

func events() []store.StoredEvent {
	return []store.StoredEvent{
		{DeviceID: "pump-0042", SiteID: "site-a", Seq: 17, Time: at, Source: "syslog", Category: protocol.CategoryAuth, Severity: protocol.SeverityWarning,
			Message: "Failed password for root from 10.0.0.9 port 51122 ssh2", Fields: map[string]string{"event": "login_failure", "user": "root", "remote": "10.0.0.9"}},
		{DeviceID: "pump-0042", SiteID: "site-a", Seq: 18, Time: at.Add(time.Second), Source: "agent", Category: protocol.CategoryIntegrity, Severity: protocol.SeverityError,
			Message: "assignment refused: hash mismatch | a=b ] \"quoted\" \\ \nnext line", Fields: map[string]string{"code": "image mismatch", "weird]key=": "v]\"\\"}, Dropped: 3},
	}
}

func TestFormatsGolden(t *testing.T) {
	var b strings.Builder
	for _, f := range Formats {
		for _, e := range events() {
			line, err := Format(f, e)
			if err != nil {
				t.Fatal(err)
			}
			b.WriteString(line + "\n")
		}
	}
	if _, err := Format("xml", events()[0]); err == nil {
		t.Error(`Format("xml") = nil error, want one`)
	}
	const golden = "testdata/export.golden"
	if *update {
		os.WriteFile(golden, []byte(b.String()), 0o644)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if b.String() != string(want) {
		t.Fatalf("exports differ from %s (run with -update to accept):\n%s", golden, b.String())
	}
}

// rfc5424 matches a message per RFC 5424 §6: PRI VERSION SP TIMESTAMP SP
// HOSTNAME SP APP-NAME SP PROCID SP MSGID SP STRUCTURED-DATA [SP MSG].
var rfc5424 = regexp.MustCompile(`^<([0-9]{1,3})>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)) ([!-~]{1,255}) ([!-~]{1,48}) ([!-~]{1,128}) ([!-~]{1,32}) ((?:\[[^ =\]"]{1,32}(?: [^ =\]"]{1,32}="(?:[^"\\\]]|\\["\\\]])*")*\])+|-)(?: \x{FEFF}(.*))?$`)

// receive reads octet-counted syslog frames (RFC 6587 §3.4.1) from conn.
func receive(t *testing.T, r io.Reader, n int) []string {
	t.Helper()
	br := bufio.NewReader(r)
	var out []string
	for range n {
		lenText, err := br.ReadString(' ')
		if err != nil {
			t.Fatalf("read frame length: %v", err)
		}
		size, err := strconv.Atoi(strings.TrimSuffix(lenText, " "))
		if err != nil {
			t.Fatalf("frame length %q: %v", lenText, err)
		}
		msg := make([]byte, size)
		if _, err := io.ReadFull(br, msg); err != nil {
			t.Fatal(err)
		}
		out = append(out, string(msg))
	}
	return out
}

func TestSendRFC5424OverTCPAndTLS(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "siem"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	roots := x509.NewCertPool()
	roots.AddCert(leaf)
	for _, scheme := range []string{"tcp", "tls"} {
		t.Run(scheme, func(t *testing.T) {
			var ln net.Listener
			var err error
			if scheme == "tls" {
				ln, err = tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
			} else {
				ln, err = net.Listen("tcp", "127.0.0.1:0")
			}
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			got := make(chan []string, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					got <- nil
					return
				}
				defer c.Close()
				got <- receive(t, c, 2)
			}()
			s, err := Dial(context.Background(), scheme+"://"+ln.Addr().String(), FormatRFC5424, &tls.Config{RootCAs: roots})
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range events() {
				if err := s.Send(RFC5424(e)); err != nil {
					t.Fatal(err)
				}
			}
			s.Close()
			msgs := <-got
			if len(msgs) != 2 {
				t.Fatalf("received %d messages, want 2", len(msgs))
			}
			for i, m := range msgs {
				sm := rfc5424.FindStringSubmatch(m)
				if sm == nil {
					t.Fatalf("message %d is not RFC 5424: %q", i, m)
				}
				if sm[3] != "pump-0042" || sm[4] != "aftercare" {
					t.Errorf("message %d HOSTNAME %q APP-NAME %q; want the device and aftercare", i, sm[3], sm[4])
				}
			}
			if pri := rfc5424.FindStringSubmatch(msgs[0])[1]; pri != "84" { // authpriv(10)*8 + warning(4)
				t.Errorf("PRI of a warning auth event = %s, want 84", pri)
			}
		})
	}
}

func TestDialRefusesBadTargets(t *testing.T) {
	for _, target := range []string{"udp://127.0.0.1:514", "127.0.0.1:514", "tcp://"} {
		if _, err := Dial(context.Background(), target, FormatRFC5424, nil); err == nil {
			t.Errorf("Dial(%q) = nil error, want one", target)
		}
	}
}
