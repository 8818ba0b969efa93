package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"time"

	"github.com/aftercare/aftercare/server/internal/broker"
	"github.com/aftercare/aftercare/server/internal/config"
	"github.com/aftercare/aftercare/server/internal/deviceca"
	"github.com/aftercare/aftercare/server/internal/fleet"
)

// serviceCertValidity is the life of the certificates the server issues
// itself at each start (the embedded broker's and its own MQTT client's);
// they live only in memory, and a restart issues new ones.
const serviceCertValidity = 365 * 24 * time.Hour

// httpsConfig is the API listener's TLS: the configured certificate, and a
// device's client certificate verified against the device CA when the
// device offers one. People and tools present none; device routes require
// it (package api).
func httpsConfig(cfg config.Config, ca *deviceca.CA) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
	if err != nil {
		return nil, fmt.Errorf("tls_cert_file/tls_key_file: %w", err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    ca.Pool(),
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// serviceCert issues a fresh key and certificate from the device CA.
func serviceCert(ca *deviceca.CA, cn string, usage x509.ExtKeyUsage, hosts []string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generate %s key: %w", cn, err)
	}
	issued, err := ca.IssueService(cn, &key.PublicKey, usage, hosts, time.Now(), serviceCertValidity)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{issued.DER}, PrivateKey: key}, nil
}

// startEmbeddedBroker starts the embedded broker with a server certificate
// from the device CA, and returns the TLS configuration of the server's
// own client (CN deviceca.ServerCN).
func startEmbeddedBroker(cfg config.Config, ca *deviceca.CA, fl *fleet.Service, log *slog.Logger) (*broker.Broker, *tls.Config, error) {
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	if h, _, err := net.SplitHostPort(cfg.EmbeddedBrokerListen); err == nil && h != "" {
		hosts = append(hosts, h)
	}
	if u, err := url.Parse(cfg.DeviceBrokerURL); err == nil && u.Hostname() != "" {
		hosts = append(hosts, u.Hostname())
	}
	brokerCert, err := serviceCert(ca, "aftercare embedded broker", x509.ExtKeyUsageServerAuth, hosts)
	if err != nil {
		return nil, nil, err
	}
	b, err := broker.Start(broker.Options{
		Listen: cfg.EmbeddedBrokerListen, TopicPrefix: cfg.TopicPrefix,
		TLS:      &tls.Config{Certificates: []tls.Certificate{brokerCert}, ClientCAs: ca.Pool(), MinVersion: tls.VersionTLS12},
		ServerCN: deviceca.ServerCN, Devices: fl.DeviceCertValid, Log: log,
	})
	if err != nil {
		return nil, nil, err
	}
	clientCert, err := serviceCert(ca, deviceca.ServerCN, x509.ExtKeyUsageClientAuth, nil)
	if err != nil {
		b.Close()
		return nil, nil, err
	}
	return b, &tls.Config{
		Certificates: []tls.Certificate{clientCert}, RootCAs: ca.Pool(),
		ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12,
	}, nil
}

// externalBrokerTLS is the server's TLS towards an external broker: the
// configured CA and client certificate; nil when neither is configured.
func externalBrokerTLS(cfg config.Config) (*tls.Config, error) {
	if cfg.BrokerCAFile == "" && cfg.BrokerClientCert == "" {
		return nil, nil
	}
	t := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.BrokerCAFile != "" {
		b, err := os.ReadFile(cfg.BrokerCAFile)
		if err != nil {
			return nil, fmt.Errorf("broker_ca_file: %w", err)
		}
		t.RootCAs = x509.NewCertPool()
		if !t.RootCAs.AppendCertsFromPEM(b) {
			return nil, errors.New("broker_ca_file holds no PEM certificate")
		}
	}
	if cfg.BrokerClientCert != "" {
		c, err := tls.LoadX509KeyPair(cfg.BrokerClientCert, cfg.BrokerClientKey)
		if err != nil {
			return nil, fmt.Errorf("broker_client_cert/broker_client_key: %w", err)
		}
		t.Certificates = []tls.Certificate{c}
	}
	return t, nil
}
