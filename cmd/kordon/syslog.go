package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"

	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/kordon-dev/kordon/internal/kube"
	"github.com/spf13/pflag"
)

// syslogFlags are the alert feed's syslog sinks on kordon controller,
// node and dev: --syslog (repeatable), --syslog-ca, --syslog-format.
type syslogFlags struct {
	addrs    []string
	ca       string
	format   string
	facility int
}

func (f *syslogFlags) register(fl *pflag.FlagSet) {
	fl.StringArrayVar(&f.addrs, "syslog", nil, "send every alert to a syslog receiver (a SIEM) at tcp://host:port or tls://host:port: RFC 5424, octet-counted (RFC 6587), at least once with an on-disk cursor (repeatable)")
	fl.StringVar(&f.ca, "syslog-ca", "", "PEM CA bundle that verifies tls:// syslog receivers (default: the system roots)")
	fl.StringVar(&f.format, "syslog-format", alert.SyslogSDJSON, "syslog message: sd+json (structured data kordon@32473 and the alert's JSON), sd (structured data and the alert's text) or json")
	fl.IntVar(&f.facility, "syslog-facility", 13, "syslog facility number (13: log audit, 4: auth, 16-23: local0-7)")
}

// configs returns the sinks for alert.Config.Syslog; hostname is the
// HOSTNAME of alerts that name no node.
func (f *syslogFlags) configs(hostname string) ([]alert.SyslogConfig, error) {
	if len(f.addrs) == 0 {
		return nil, nil
	}
	var tc *tls.Config
	if f.ca != "" {
		pem, err := os.ReadFile(f.ca)
		if err != nil {
			return nil, fmt.Errorf("--syslog-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--syslog-ca %s: no PEM certificate in it", f.ca)
		}
		tc = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	var out []alert.SyslogConfig
	for i, a := range f.addrs {
		_, hostport, err := alert.ParseSyslogAddress(a)
		if err != nil {
			return nil, fmt.Errorf("--syslog[%d]: %w", i, err)
		}
		// The cursor file is named for the receiver, so reordering the
		// flags keeps each receiver's position.
		name := "syslog-" + strings.Map(func(r rune) rune {
			if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
				return r
			}
			return '-'
		}, hostport)
		out = append(out, alert.SyslogConfig{Name: name, Address: a, TLS: tc, Format: f.format, Facility: f.facility, Hostname: hostname})
	}
	return out, nil
}

// deliverySinks are the --syslog receivers as sinks of the controller
// leader's cluster alert delivery (--alerts-from cluster: the local feed
// then receives nothing); their connections close with closers.
func (f *syslogFlags) deliverySinks(hostname string, closers *[]func() error) ([]kube.DeliverySink, error) {
	cfgs, err := f.configs(hostname)
	if err != nil {
		return nil, err
	}
	var sinks []kube.DeliverySink
	for _, c := range cfgs {
		s, err := alert.NewSyslogSender(c)
		if err != nil {
			return nil, err
		}
		*closers = append(*closers, func() error { s.Close(); return nil })
		sinks = append(sinks, kube.DeliverySink{Name: "syslog." + c.Name, Deliver: s.Deliver})
	}
	return sinks, nil
}
