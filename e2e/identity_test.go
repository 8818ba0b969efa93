package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aftercare/aftercare/internal/testenv"
)

// TestRevokedDeviceIsCutOff revokes one device of a running fleet through
// the CLI: the embedded broker closes its connection and refuses its
// reconnects, and the server's log says so.
func TestRevokedDeviceIsCutOff(t *testing.T) {
	s := startServer(t, serverOptions{})
	f := enroll(t, s, map[string]int{"St. Mary Radiology": 2})
	runSim(t, s, f, "", time.Minute)
	waitReported(t, s, f)
	var out struct{ Devices []devicePatch }
	cliJSON(t, s, &out, "devices")
	victim := out.Devices[0].ID
	printed := runCLI(t, s.cliEnv(), "devices", "revoke", victim, "--reason", "stolen from ward 3")
	if !strings.Contains(printed, "device "+victim+" revoked at ") || !strings.Contains(printed, "stolen from ward 3") {
		t.Fatalf("aftercare devices revoke printed %q", printed)
	}
	waitFor(t, 60*time.Second, "the broker refuses the revoked device's reconnect", func() bool {
		b, _ := os.ReadFile(s.proc.log)
		return strings.Contains(string(b), "device certificate refused") && strings.Contains(string(b), victim)
	})
	if _, err := tryCLI(s.cliEnv(), "devices", "revoke", victim); err == nil {
		t.Fatal("aftercare devices revoke without --reason succeeded")
	}
}

// TestRolloutMosquittoMTLS runs the whole story through a Mosquitto the
// test starts with the shipped deploy/mosquitto/aftercare-mtls.conf and
// aftercare.acl: devices and the server connect with certificates from
// the server's device CA. Then a device is revoked and Mosquitto,
// restarted, refuses it through the server's CRL.
func TestRolloutMosquittoMTLS(t *testing.T) {
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		testenv.Missing(t, "mosquitto is not installed; install it with: apt-get install mosquitto")
	}
	// The first start makes the device CA in the data directory.
	s := startServer(t, serverOptions{})
	dir := t.TempDir()
	caCert, caKey := loadCA(t, s.dataDir)
	issueTo(t, dir, "broker", "broker", x509.ExtKeyUsageServerAuth, caCert, caKey)
	issueTo(t, dir, "server-client", "aftercare:server", x509.ExtKeyUsageClientAuth, caCert, caKey)
	m := &mosq{bin: bin, addr: testenv.FreeAddr(t), dir: dir}
	m.configure(t, filepath.Join(s.dataDir, "device-ca.pem"), filepath.Join(s.dataDir, "device-crl.pem"))
	m.start(t)
	t.Cleanup(func() {
		m.stop()
		if t.Failed() {
			b, _ := os.ReadFile(m.log)
			t.Logf("--- mosquitto log ---\n%s", tail(b, 100))
		}
	})
	s.restart(t, "AFTERCARE_BROKER_URL=ssl://"+m.addr,
		"AFTERCARE_BROKER_CA_FILE="+filepath.Join(s.dataDir, "device-ca.pem"),
		"AFTERCARE_BROKER_CLIENT_CERT="+filepath.Join(dir, "server-client.pem"),
		"AFTERCARE_BROKER_CLIENT_KEY="+filepath.Join(dir, "server-client.key"),
		// The shipped ACL is written for the default prefix; this broker
		// is the test's own.
		"AFTERCARE_TOPIC_PREFIX=aftercare/v1")
	rolloutToAll(t, s, "")

	var out struct{ Devices []devicePatch }
	cliJSON(t, s, &out, "devices")
	victim := out.Devices[0].ID
	runCLI(t, s.cliEnv(), "devices", "revoke", victim, "--reason", "lost")
	// Mosquitto reads the CRL the server just wrote when it starts.
	m.stop()
	before, _ := os.ReadFile(m.log)
	m.start(t)
	since := func() string {
		b, _ := os.ReadFile(m.log)
		return string(b[len(before):])
	}
	waitFor(t, 60*time.Second, "the other devices reconnect and the revoked one is refused", func() bool {
		log := since()
		for _, d := range out.Devices[1:] {
			if !strings.Contains(log, " as "+d.ID+" ") {
				return false
			}
		}
		return strings.Contains(log, "certificate verify failed")
	})
	if strings.Contains(since(), " as "+victim+" ") {
		t.Fatalf("the revoked device %s connected to Mosquitto after the restart", victim)
	}
}

func loadCA(t *testing.T, dataDir string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	cb, err := os.ReadFile(filepath.Join(dataDir, "device-ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	kb, err := os.ReadFile(filepath.Join(dataDir, "device-ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	cblk, _ := pem.Decode(cb)
	kblk, _ := pem.Decode(kb)
	cert, err := x509.ParseCertificate(cblk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	key, err := x509.ParsePKCS8PrivateKey(kblk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key.(*ecdsa.PrivateKey)
}

// issueTo signs a certificate for cn with the device CA, as an operator
// does with openssl (docs/security-model.md), into dir/name.pem and .key.
func issueTo(t *testing.T, dir, name, cn string, usage x509.ExtKeyUsage, ca *x509.Certificate, caKey *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	os.WriteFile(filepath.Join(dir, name+".pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(filepath.Join(dir, name+".key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
	if _, err := tls.LoadX509KeyPair(filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")); err != nil {
		t.Fatal(err)
	}
}

// mosq is a Mosquitto process with the shipped configuration.
type mosq struct {
	bin, addr, dir, conf, log string
	proc                      *exec.Cmd
	exited                    chan struct{}
}

func (m *mosq) configure(t *testing.T, caFile, crlFile string) {
	t.Helper()
	b, err := os.ReadFile("../deploy/mosquitto/aftercare-mtls.conf")
	if err != nil {
		t.Fatal(err)
	}
	acl, err := os.ReadFile("../deploy/mosquitto/aftercare.acl")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(m.dir, "aftercare.acl"), acl, 0o644)
	host, port, _ := net.SplitHostPort(m.addr)
	conf := strings.NewReplacer(
		"listener 8883\n", "listener "+port+" "+host+"\n",
		"/etc/mosquitto/aftercare/device-ca.pem", caFile,
		"/var/lib/aftercare/device-crl.pem", crlFile,
		"/etc/mosquitto/aftercare/", m.dir+"/",
		"persistence true\n", "persistence false\n",
		"/var/lib/mosquitto/\n", m.dir+"/\n",
	).Replace(string(b))
	conf += "log_dest stderr\nlog_type all\n"
	if u, err := user.Current(); err == nil && u.Uid == "0" {
		conf += "user root\n" // the mosquitto user could not read the test's files
	}
	m.conf, m.log = filepath.Join(m.dir, "mosquitto.conf"), filepath.Join(m.dir, "mosquitto.log")
	if err := os.WriteFile(m.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (m *mosq) start(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile(m.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	m.proc = exec.Command(m.bin, "-c", m.conf)
	m.proc.Stdout, m.proc.Stderr = f, f
	if err := m.proc.Start(); err != nil {
		t.Fatal(err)
	}
	m.exited = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		cmd.Wait()
		f.Close()
		close(done)
	}(m.proc, m.exited)
	waitFor(t, 15*time.Second, "mosquitto listens on "+m.addr, func() bool {
		c, err := net.DialTimeout("tcp", m.addr, time.Second)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
}

func (m *mosq) stop() {
	if m.proc == nil {
		return
	}
	select {
	case <-m.exited:
		return
	default:
	}
	testenv.Stop(m.proc.Process, m.exited, os.Interrupt, 10*time.Second)
}

// TestDevicesOverHTTPSRenewTheirCertificates runs the API over HTTPS with
// device certificates that live 90 seconds: the devices enroll over HTTPS,
// connect to the embedded broker with mutual TLS, renew in the last third
// of the life through the API (authenticated by the current certificate)
// and, restarted after the first certificate expired, report with the
// renewed one. The CLI and the simulator trust the test's CA through
// SSL_CERT_FILE.
func TestDevicesOverHTTPSRenewTheirCertificates(t *testing.T) {
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "e2e HTTPS CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	caFile := filepath.Join(dir, "https-ca.pem")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644)
	issueTo(t, dir, "api", "127.0.0.1", x509.ExtKeyUsageServerAuth, caCert, caKey)
	// Child processes (server, CLI, simulator) verify the server with it.
	t.Setenv("SSL_CERT_FILE", caFile)

	s := startServerWith(t, []string{
		"AFTERCARE_TLS_CERT_FILE=" + filepath.Join(dir, "api.pem"),
		"AFTERCARE_TLS_KEY_FILE=" + filepath.Join(dir, "api.key"),
		"AFTERCARE_DEVICE_CERT_VALIDITY=90s",
	}, caCert)
	f := enroll(t, s, map[string]int{"St. Mary Radiology": 2})
	sim := runSim(t, s, f, "", time.Minute)
	waitReported(t, s, f)
	reported := time.Now() // every device has enrolled by now
	first := map[string]string{}
	for _, d := range f.devices {
		first[d.Serial] = deviceCertSerial(t, f, d.Serial)
	}
	// Renewal is due 60 s after enrollment; the agent checks every 9 s.
	// The new certificate lands on disk just before the agent logs it.
	waitFor(t, 150*time.Second, "every device renewed its certificate and said so", func() bool {
		for _, d := range f.devices {
			if deviceCertSerial(t, f, d.Serial) == first[d.Serial] {
				return false
			}
		}
		b, _ := os.ReadFile(sim.log)
		return strings.Count(string(b), "certificate renewed") >= len(f.devices)
	})
	// Past the first certificates' expiry, a restarted fleet reports
	// through the broker with the renewed ones.
	var before struct{ Devices []devicePatch }
	cliJSON(t, s, &before, "devices")
	sim.stop()
	waitFor(t, 60*time.Second, "the first certificates expire", func() bool {
		return time.Now().After(reported.Add(95 * time.Second))
	})
	runSim(t, s, f, "", time.Minute)
	waitFor(t, 60*time.Second, "every device reports again", func() bool {
		var now struct{ Devices []devicePatch }
		cliJSON(t, s, &now, "devices")
		for i, d := range now.Devices {
			if d.LastSeq <= before.Devices[i].LastSeq {
				return false
			}
		}
		return true
	})
}

// deviceCertSerial reads the serial of the certificate a simulated device
// holds in its state directory.
func deviceCertSerial(t *testing.T, f *fleet, serial string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(f.dir, "devices", serial, "device.pem"))
	if err != nil {
		return ""
	}
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return ""
		}
		if blk.Type == "CERTIFICATE" {
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return ""
			}
			return c.SerialNumber.Text(16)
		}
	}
}

// startServerWith is startServer with the embedded broker, extra
// environment, and the API over HTTPS verified with ca.
func startServerWith(t *testing.T, env []string, ca *x509.Certificate) *server {
	t.Helper()
	s := startServer(t, serverOptions{})
	s.proc.stop() // the same data directory, now over HTTPS
	s.url = "https://" + s.listen
	s.env = append(s.env, env...)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	s.proc = start(t, "server-"+randomHex(2)+".log", s.env, "aftercare-server", "-listen", s.listen, "-data-dir", s.dataDir)
	waitFor(t, 30*time.Second, "the server answers /healthz over HTTPS", func() bool {
		res, err := c.Get(s.url + "/healthz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	})
	return s
}
