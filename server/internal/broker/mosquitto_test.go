package broker_test

import (
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aftercare/aftercare/internal/testenv"
)

// The shipped Mosquitto configuration and ACL, tested as they are: only
// paths, the port and persistence are rewritten for the test.
const (
	shippedConf = "../../../deploy/mosquitto/aftercare-mtls.conf"
	shippedACL  = "../../../deploy/mosquitto/aftercare.acl"
)

// mosquitto is a Mosquitto process started by the test.
type mosquitto struct {
	conf, log, addr string
	cmd             *exec.Cmd
	exited          chan struct{}
}

func TestMosquittoAttacks(t *testing.T) {
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		testenv.Missing(t, "mosquitto is not installed; install it with: apt-get install mosquitto")
	}
	p := newPKI(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "device-ca.pem"), p.ca.CertificatePEM(), 0o644)
	writeCert(t, dir, "broker", p.broker)
	crl := filepath.Join(dir, "device-crl.pem")
	p.crl(t, crl)
	acl, err := os.ReadFile(shippedACL)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "aftercare.acl"), acl, 0o644)
	m := &mosquitto{conf: filepath.Join(dir, "mosquitto.conf"), log: filepath.Join(dir, "mosquitto.log"), addr: testenv.FreeAddr(t)}
	writeTestConf(t, m, dir)
	m.start(t, bin)
	t.Cleanup(func() {
		m.stop(t)
		if t.Failed() {
			b, _ := os.ReadFile(m.log)
			t.Logf("--- mosquitto log ---\n%s", b)
		}
	})
	runAttacks(t, p, &brokerUnderTest{
		url:                "ssl://" + m.addr,
		clientIDReplaced:   true,
		willCheckedAtSend:  true,
		subackGrantsDenied: true,
		revoke: func(t *testing.T, id string) {
			p.mu.Lock()
			p.revoked[id] = true
			p.mu.Unlock()
			p.crl(t, crl)
			// Mosquitto reads the CRL when it starts.
			m.stop(t)
			m.start(t, bin)
		},
	})
}

// writeTestConf rewrites the shipped configuration for dir and m.addr and
// fails if a line it rewrites is missing, so the test keeps testing the
// shipped file.
func writeTestConf(t *testing.T, m *mosquitto, dir string) {
	t.Helper()
	b, err := os.ReadFile(shippedConf)
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(m.addr)
	conf := string(b)
	for old, repl := range map[string]string{
		"listener 8883\n":               "listener " + port + " " + host + "\n",
		"/etc/mosquitto/aftercare/":     dir + "/",
		"/var/lib/aftercare/":           dir + "/",
		"persistence true\n":            "persistence false\n",
		"/var/lib/mosquitto/\n":         dir + "/\n",
		"use_identity_as_username true": "use_identity_as_username true",
		"require_certificate true":      "require_certificate true",
		"crlfile ":                      "crlfile ",
		"acl_file ":                     "acl_file ",
		"set_tcp_nodelay true":          "set_tcp_nodelay true",
		"allow_anonymous false":         "allow_anonymous false",
		"use_username_as_clientid true": "use_username_as_clientid true",
	} {
		if !strings.Contains(conf, old) {
			t.Fatalf("%s no longer holds %q", shippedConf, old)
		}
		conf = strings.ReplaceAll(conf, old, repl)
	}
	conf += "log_dest stderr\nlog_type all\n"
	if u, err := user.Current(); err == nil && u.Uid == "0" {
		// As root, Mosquitto would switch to the mosquitto user, which
		// cannot read the test's private directory.
		conf += "user root\n"
	}
	if err := os.WriteFile(m.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (m *mosquitto) start(t *testing.T, bin string) {
	t.Helper()
	logf, err := os.OpenFile(m.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	m.cmd = exec.Command(bin, "-c", m.conf)
	m.cmd.Stdout, m.cmd.Stderr = logf, logf
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) {
		cmd.Wait()
		logf.Close()
		close(exited)
	}(m.cmd, m.exited)
	waitUntil(t, "mosquitto accepts connections on "+m.addr, func() bool {
		select {
		case <-m.exited:
			b, _ := os.ReadFile(m.log)
			t.Fatalf("mosquitto exited at start:\n%s", b)
		default:
		}
		c, err := net.DialTimeout("tcp", m.addr, time.Second)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
}

func (m *mosquitto) stop(t *testing.T) {
	t.Helper()
	if m.cmd == nil {
		return
	}
	select {
	case <-m.exited:
		return
	default:
	}
	testenv.Stop(m.cmd.Process, m.exited, syscall.SIGTERM, 10*time.Second)
}
