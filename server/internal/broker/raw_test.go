package broker_test

import (
	"crypto/tls"
	"io"
	"strings"
	"testing"
	"time"
)

// rawConnectWithWill opens an MQTT 3.1.1 connection over TLS by hand,
// sends a CONNECT carrying a will (QoS 1) and, if the broker accepts it,
// drops the TCP connection without DISCONNECT, so the broker publishes
// the will if it lets the client write there. paho cannot drop a
// connection without a DISCONNECT. It reports whether CONNACK accepted.
func rawConnectWithWill(t *testing.T, p *pki, url string, cert *tls.Certificate, clientID, willTopic, willMsg string) bool {
	t.Helper()
	addr := strings.TrimPrefix(url, "ssl://")
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: p.ca.Pool(), Certificates: []tls.Certificate{*cert}, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatalf("TLS dial %s: %v", addr, err)
	}
	defer conn.Close()
	str := func(s string) []byte { return append([]byte{byte(len(s) >> 8), byte(len(s))}, s...) }
	// MQTT 3.1.1 §3.1.2: protocol name, level 4, flags (will QoS 1 0x08,
	// will 0x04, clean session 0x02), keep alive 30 s.
	body := append(str("MQTT"), 4, 0x08|0x04|0x02, 0, 30)
	body = append(body, str(clientID)...)
	body = append(body, str(willTopic)...)
	body = append(body, str(willMsg)...)
	if len(body) > 127 {
		t.Fatalf("CONNECT of %d bytes needs a longer length encoding", len(body))
	}
	if _, err := conn.Write(append([]byte{0x10, byte(len(body))}, body...)); err != nil {
		t.Fatalf("write CONNECT: %v", err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	ack := make([]byte, 4)
	if _, err := io.ReadFull(conn, ack); err != nil {
		return false // the broker closed the connection: refused
	}
	// §3.2: 0x20, remaining length 2, session present, return code.
	return ack[0] == 0x20 && ack[3] == 0
}
