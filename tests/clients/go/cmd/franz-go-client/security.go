package main

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"kkp-test-clients/records"
)

// securityFlags are the security options of the test contract (kafka_client.py):
// --security-protocol PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL, --sasl-mechanism
// PLAIN|SCRAM-SHA-256|SCRAM-SHA-512 with --sasl-username and --sasl-password, and
// --ssl-ca FILE (PEM).
var securityFlags = []string{"security-protocol", "sasl-mechanism", "sasl-username", "sasl-password", "ssl-ca"}

// security turns the security options into client options: TLS with the CA as the only
// root (franz-go verifies each broker against the host it dials), and a SASL mechanism.
func security(a *records.Args) []kgo.Opt {
	flag := func(name string) string { return *a.Extra[name] }
	protocol := flag("security-protocol")
	if protocol == "" {
		protocol = "PLAINTEXT"
	}
	var opts []kgo.Opt
	switch protocol {
	case "PLAINTEXT", "SASL_PLAINTEXT":
	case "SSL", "SASL_SSL":
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if ca := flag("ssl-ca"); ca != "" {
			pem, err := os.ReadFile(ca)
			if err != nil {
				records.Fatal("--ssl-ca: %v", err)
			}
			cfg.RootCAs = x509.NewCertPool()
			if !cfg.RootCAs.AppendCertsFromPEM(pem) {
				records.Fatal("--ssl-ca %s: no PEM certificate", ca)
			}
		}
		opts = append(opts, kgo.DialTLSConfig(cfg))
	default:
		records.Usage("--security-protocol: invalid choice %q", protocol)
	}
	mechanism := flag("sasl-mechanism")
	if strings.HasPrefix(protocol, "SASL_") != (mechanism != "") {
		records.Usage("--sasl-mechanism goes with (and only with) a SASL_ --security-protocol")
	}
	if mechanism != "" {
		opts = append(opts, kgo.SASL(saslMechanism(mechanism, flag("sasl-username"), flag("sasl-password"))))
	}
	return opts
}

func saslMechanism(name, user, pass string) sasl.Mechanism {
	switch name {
	case "PLAIN":
		return plain.Auth{User: user, Pass: pass}.AsMechanism()
	case "SCRAM-SHA-256":
		return scram.Auth{User: user, Pass: pass}.AsSha256Mechanism()
	case "SCRAM-SHA-512":
		return scram.Auth{User: user, Pass: pass}.AsSha512Mechanism()
	}
	records.Usage("--sasl-mechanism: invalid choice %q", name)
	return nil // not reached: Usage exits
}
