package policy

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestEgressFirewallDecode(t *testing.T) {
	t.Parallel()
	doc := ep("shop", "p", "  allow: [api.example.com]\n  allowCIDRs: [203.0.113.0/24, \"2001:db8::/32\"]\n  ports:\n  - port: 443\n  - {protocol: UDP, port: \"1000\", endPort: 2000}")
	set, err := Parse("e.yaml", []byte(doc), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	spec := set.Egress[0].Spec
	if want := []string{"203.0.113.0/24", "2001:db8::/32"}; !reflect.DeepEqual(spec.AllowCIDRs, want) {
		t.Errorf("allowCIDRs = %q, want %q", spec.AllowCIDRs, want)
	}
	if want := []EgressPort{{Port: 443}, {Protocol: "UDP", Port: 1000, EndPort: 2000}}; !reflect.DeepEqual(spec.Ports, want) {
		t.Errorf("ports = %+v, want %+v", spec.Ports, want)
	}
}

func TestEgressFirewallValidation(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		spec string
		want []string
	}{
		{name: "bad cidr", spec: "  allowCIDRs: [10.0.0.300/8]",
			want: []string{`e.yaml:7:16: spec.allowCIDRs[0]: invalid CIDR "10.0.0.300/8": IPv4 field has value >255`}},
		{name: "prefix too long", spec: "  allowCIDRs:\n  - 10.0.0.0/33",
			want: []string{`e.yaml:8:5: spec.allowCIDRs[0]: invalid CIDR "10.0.0.0/33": prefix length out of range`}},
		{name: "not an address", spec: "  allowCIDRs: [partner.example/24]",
			want: []string{`e.yaml:7:16: spec.allowCIDRs[0]: invalid CIDR "partner.example/24": unexpected character (at "partner.example")`}},
		{name: "host bits set", spec: "  allowCIDRs: [10.1.2.3/8]",
			want: []string{`e.yaml:7:16: spec.allowCIDRs[0]: invalid CIDR "10.1.2.3/8": host bits are set (the range is "10.0.0.0/8"; write a single address as "10.1.2.3/32")`}},
		{name: "ipv6 host bits set", spec: "  allowCIDRs: [\"2001:db8::1/64\"]",
			want: []string{`e.yaml:7:16: spec.allowCIDRs[0]: invalid CIDR "2001:db8::1/64": host bits are set (the range is "2001:db8::/64"; write a single address as "2001:db8::1/128")`}},
		{name: "bare address", spec: "  allowCIDRs: [\"2001:db8::1\", 198.51.100.7]",
			want: []string{
				`e.yaml:7:16: spec.allowCIDRs[0]: invalid CIDR "2001:db8::1": missing prefix length (write "2001:db8::1/128" for one address)`,
				`e.yaml:7:31: spec.allowCIDRs[1]: invalid CIDR "198.51.100.7": missing prefix length (write "198.51.100.7/32" for one address)`,
			}},
		{name: "ipv4-mapped", spec: "  allowCIDRs: [\"::ffff:10.0.0.0/104\"]",
			want: []string{`e.yaml:7:16: spec.allowCIDRs[0]: invalid CIDR "::ffff:10.0.0.0/104": IPv4-mapped IPv6 range (write "10.0.0.0/8")`}},
		{name: "port out of range", spec: "  allow: [a.example]\n  ports:\n  - port: 0\n  - port: 65536\n  - {port: 80, endPort: 70000}",
			want: []string{
				`e.yaml:9:11: spec.ports[0].port: invalid port 0: must be a number from 1 to 65535`,
				`e.yaml:10:11: spec.ports[1].port: invalid port 65536: must be a number from 1 to 65535`,
				`e.yaml:11:25: spec.ports[2].endPort: invalid port 70000: must be a number from 1 to 65535`,
			}},
		{name: "endPort below port", spec: "  allow: [a.example]\n  ports:\n  - {port: 443, endPort: 80}",
			want: []string{`e.yaml:9:26: spec.ports[0].endPort: endPort 80 is below port 443`}},
		{name: "endPort without port", spec: "  allow: [a.example]\n  ports:\n  - endPort: 80",
			want: []string{`e.yaml:9:14: spec.ports[0].endPort: endPort needs port`}},
		{name: "port missing", spec: "  allow: [a.example]\n  ports:\n  - protocol: UDP",
			want: []string{`e.yaml:9:5: spec.ports[0].port: port is required (a number from 1 to 65535)`}},
		{name: "port not a number", spec: "  allow: [a.example]\n  ports:\n  - port: https",
			want: []string{`e.yaml:9:11: spec.ports[0].port: expected an integer, got "https"`}},
		{name: "unknown protocol", spec: "  allow: [a.example]\n  ports:\n  - {protocol: tcp, port: 443}\n  - {protocol: ICMP, port: 1}",
			want: []string{
				`e.yaml:9:16: spec.ports[0].protocol: unknown protocol "tcp" (want TCP, UDP or SCTP)`,
				`e.yaml:10:16: spec.ports[1].protocol: unknown protocol "ICMP" (want TCP, UDP or SCTP)`,
			}},
		{name: "unknown field under ports", spec: "  allow: [a.example]\n  ports:\n  - {prot: TCP, port: 443}",
			want: []string{`e.yaml:9:6: spec.ports[0].prot: unknown field (did you mean "port"?)`}},
		{name: "ports not a list", spec: "  allow: [a.example]\n  ports: 443",
			want: []string{`e.yaml:8:10: spec.ports: expected a list, got a number`}},
		{name: "ports alone", spec: "  deny: [a.example]\n  ports:\n  - port: 443",
			want: []string{`e.yaml:9:3: spec.ports: needs spec.allow or spec.allowCIDRs`}},
		{name: "allowCIDRs misspelt", spec: "  allowCidrs: [10.0.0.0/8]",
			want: []string{`e.yaml:7:3: spec.allowCidrs: unknown field (did you mean "allowCIDRs"?)`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			set, err := Parse("e.yaml", []byte(ep("shop", "p", tc.spec)), LoadOptions{})
			if err == nil {
				t.Fatalf("no error; set has %d policies", set.Len())
			}
			if got, want := err.Error(), strings.Join(tc.want, "\n"); got != want {
				t.Errorf("got:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

func TestEgressFirewallValid(t *testing.T) {
	t.Parallel()
	for _, spec := range []string{
		"  allowCIDRs: [0.0.0.0/0, \"::/0\", 203.0.113.7/32]",
		"  allowCIDRs: [10.0.0.0/8]\n  ports: [{port: 22}]",
		"  allow: [a.example]\n  ports: [{protocol: SCTP, port: 1, endPort: 65535}, {protocol: UDP, port: 53, endPort: 53}]",
		"  allow: [a.example]\n  ports: [{port: \"443\"}]",
	} {
		if _, err := Parse("e.yaml", []byte(ep("shop", "p", spec)), LoadOptions{}); err != nil {
			t.Errorf("%q: %v", spec, err)
		}
	}
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func TestEgressFirewall(t *testing.T) {
	t.Parallel()
	ix := egressSet(t,
		ep("shop", "api", "  selector: {matchLabels: {app: web}}\n  allow: [api.example.com]\n  ports: [{port: 443}]"),
		ep("shop", "partner", "  selector: {matchLabels: {app: web}}\n  allowCIDRs: [203.0.113.0/24, 198.51.100.0/24, 203.0.113.0/24]\n  ports: [{port: 22}]"),
		ep("shop", "partner-any", "  selector: {matchLabels: {app: web}}\n  allowCIDRs: [203.0.113.0/24]"),
		ep("shop", "web-audit", "  selector: {matchLabels: {app: web}}\n  mode: Audit\n  allowCIDRs: [192.0.2.0/24]"),
		ep("shop", "trial", "  selector: {matchLabels: {app: trial}}\n  mode: Audit\n  allow: [new.example]\n  allowCIDRs: [\"2001:db8::/32\", 192.0.2.0/24]\n  ports: [{protocol: UDP, port: 4000, endPort: 4010}, {protocol: UDP, port: 4011}]"),
		ep("shop", "trial-deny", "  selector: {matchLabels: {app: trial}}\n  deny: [bad.example]"),
		ep("shop", "watch", "  selector: {matchLabels: {app: batch}}\n  deny: [\"*.adnet.example\"]\n  detection: {action: Quarantine}"),
		ep("kordon-system", "mesh-deny", "  deny: [\"*.evil.example\"]"),
		ep("kordon-system", "mesh-cidr", "  selector: {matchLabels: {mesh: strict}}\n  allowCIDRs: [\"2001:db8:1::/48\"]"),
		ep("other", "ns-wide", "  allowCIDRs: [10.20.0.0/16]\n  ports: [{port: 5432}]"),
	)
	cases := []struct {
		name   string
		ns     string
		labels map[string]string
		want   Firewall
	}{
		{name: "enforce beats audit, per-policy ports, deduplicated and sorted", ns: "shop", labels: map[string]string{"app": "web"}, want: Firewall{
			Mode: FirewallEnforce, Policy: "shop/api",
			CIDRs: []CIDRGrant{
				{Prefix: pfx("198.51.100.0/24"), Ports: []PortRange{{Proto: "tcp", First: 22, Last: 22}}, Policy: "shop/partner"},
				{Prefix: pfx("203.0.113.0/24"), Policy: "shop/partner-any"},
				{Prefix: pfx("203.0.113.0/24"), Ports: []PortRange{{Proto: "tcp", First: 22, Last: 22}}, Policy: "shop/partner"},
			},
		}},
		{name: "audit only", ns: "shop", labels: map[string]string{"app": "trial"}, want: Firewall{
			Mode: FirewallAudit, Policy: "shop/trial",
			CIDRs: []CIDRGrant{
				{Prefix: pfx("192.0.2.0/24"), Ports: []PortRange{{Proto: "udp", First: 4000, Last: 4011}}, Policy: "shop/trial"},
				{Prefix: pfx("2001:db8::/32"), Ports: []PortRange{{Proto: "udp", First: 4000, Last: 4011}}, Policy: "shop/trial"},
			},
		}},
		{name: "deny-only policies give off; quarantine", ns: "shop", labels: map[string]string{"app": "batch"}, want: Firewall{Mode: FirewallOff, Quarantine: true}},
		{name: "no selecting policy but the mesh deny", ns: "shop", labels: map[string]string{"app": "other"}, want: Firewall{Mode: FirewallOff}},
		{name: "root namespace policy counts, with its selector", ns: "shop", labels: map[string]string{"app": "batch", "mesh": "strict"}, want: Firewall{
			Mode: FirewallEnforce, Policy: "kordon-system/mesh-cidr", Quarantine: true,
			CIDRs: []CIDRGrant{{Prefix: pfx("2001:db8:1::/48"), Policy: "kordon-system/mesh-cidr"}},
		}},
		{name: "namespace-wide policy, other namespace", ns: "other", labels: nil, want: Firewall{
			Mode: FirewallEnforce, Policy: "other/ns-wide",
			CIDRs: []CIDRGrant{{Prefix: pfx("10.20.0.0/16"), Ports: []PortRange{{Proto: "tcp", First: 5432, Last: 5432}}, Policy: "other/ns-wide"}},
		}},
		{name: "selectors of another namespace do not apply", ns: "other", labels: map[string]string{"app": "web"}, want: Firewall{
			Mode: FirewallEnforce, Policy: "other/ns-wide",
			CIDRs: []CIDRGrant{{Prefix: pfx("10.20.0.0/16"), Ports: []PortRange{{Proto: "tcp", First: 5432, Last: 5432}}, Policy: "other/ns-wide"}},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := ix.ForWorkload(tc.ns, tc.labels).Firewall()
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestEgressNamePorts(t *testing.T) {
	t.Parallel()
	ix := egressSet(t,
		ep("shop", "api", "  selector: {matchLabels: {app: web}}\n  allow: [api.example.com, \"*.cdn.example\"]\n  deny: [bad.cdn.example]\n  ports: [{port: 443}]"),
		ep("shop", "partner", "  selector: {matchLabels: {app: web}}\n  allowCIDRs: [203.0.113.0/24]\n  ports: [{port: 22}]"),
		ep("shop", "api-alt", "  selector: {matchLabels: {app: web}}\n  allow: [api.example.com]\n  ports: [{port: 8443, endPort: 8444}, {port: 444}, {protocol: UDP, port: 443}]"),
		ep("shop", "cdn-any", "  selector: {matchLabels: {app: web}}\n  allow: [img.cdn.example]"),
		ep("shop", "web-audit", "  selector: {matchLabels: {app: web}}\n  mode: Audit\n  allow: [audit-only.example]\n  deny: [api.example.com]"),
		ep("shop", "trial", "  selector: {matchLabels: {app: trial}}\n  mode: Audit\n  allow: [new.example, old.example]\n  deny: [old.example]\n  ports: [{port: 80}]"),
		ep("shop", "trial-deny", "  selector: {matchLabels: {app: trial}}\n  deny: [blocked.example]"),
		ep("shop", "cidr-only", "  selector: {matchLabels: {app: cidr}}\n  allowCIDRs: [203.0.113.0/24]"),
		ep("kordon-system", "mesh", "  deny: [\"*.evil.example\"]"),
		ep("kordon-system", "mesh-web", "  selector: {matchLabels: {app: web}}\n  allow: [mesh.example]"),
	)
	web := map[string]string{"app": "web"}
	tcp := func(first, last uint16) PortRange { return PortRange{Proto: "tcp", First: first, Last: last} }
	cases := []struct {
		name   string
		labels map[string]string
		qname  string
		ports  []PortRange
		any    bool
		ok     bool
	}{
		{name: "ports of every allowing policy merged", labels: web, qname: "api.example.com",
			ports: []PortRange{tcp(443, 444), tcp(8443, 8444), {Proto: "udp", First: 443, Last: 443}}, ok: true},
		{name: "another policy's CIDR ports never apply to a name", labels: web, qname: "x.cdn.example",
			ports: []PortRange{tcp(443, 443)}, ok: true},
		{name: "a policy without ports allows any", labels: web, qname: "img.cdn.example", any: true, ok: true},
		{name: "denied by the allowing policy", labels: web, qname: "bad.cdn.example"},
		{name: "denied mesh-wide", labels: web, qname: "x.evil.example"},
		{name: "root namespace allow counts", labels: web, qname: "mesh.example", any: true, ok: true},
		{name: "not allowed", labels: web, qname: "google.com"},
		{name: "audit allow grants nothing in enforce mode", labels: web, qname: "audit-only.example"},
		{name: "in-cluster names are not the firewall's", labels: web, qname: "db.shop.svc.cluster.local"},
		{name: "audit mode", labels: map[string]string{"app": "trial"}, qname: "new.example", ports: []PortRange{tcp(80, 80)}, ok: true},
		{name: "audit mode, audit deny", labels: map[string]string{"app": "trial"}, qname: "old.example"},
		{name: "audit mode, enforce deny", labels: map[string]string{"app": "trial"}, qname: "blocked.example"},
		{name: "firewall off", labels: map[string]string{"app": "none"}, qname: "anything.example"},
		{name: "cidr-only policy grants no names", labels: map[string]string{"app": "cidr"}, qname: "anything.example"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			we := ix.ForWorkload("shop", tc.labels)
			ports, any, ok := we.NamePorts(tc.qname)
			if !reflect.DeepEqual(ports, tc.ports) || any != tc.any || ok != tc.ok {
				t.Errorf("NamePorts(%s) = %v, %v, %v; want %v, %v, %v", tc.qname, ports, any, ok, tc.ports, tc.any, tc.ok)
			}
			if d := we.Decide(tc.qname); ok && d.Verdict == EgressBlock {
				t.Errorf("NamePorts ok for a name Decide blocks: %+v", d)
			}
		})
	}
}

// TestCompileEgressFirewallFailsClosed: policies built in code skip
// validation, so CompileEgress checks allowCIDRs and ports itself rather
// than dropping a bad entry (which could turn the firewall off).
func TestCompileEgressFirewallFailsClosed(t *testing.T) {
	t.Parallel()
	mk := func(spec EgressPolicySpec) *Set {
		return &Set{Egress: []*EgressPolicy{{Metadata: ObjectMeta{Name: "p", Namespace: "shop"}, Spec: spec}}}
	}
	cases := []struct {
		name string
		spec EgressPolicySpec
		want string
	}{
		{name: "host bits", spec: EgressPolicySpec{AllowCIDRs: []string{"10.0.0.1/8"}},
			want: `policy: EgressPolicy shop/p: invalid CIDR "10.0.0.1/8": host bits are set (the range is "10.0.0.0/8"; write a single address as "10.0.0.1/32")`},
		{name: "no port", spec: EgressPolicySpec{AllowCIDRs: []string{"10.0.0.0/8"}, Ports: []EgressPort{{Protocol: "UDP"}}},
			want: `policy: EgressPolicy shop/p: spec.ports[0].port: port is required (a number from 1 to 65535)`},
		{name: "endPort below port", spec: EgressPolicySpec{AllowCIDRs: []string{"10.0.0.0/8"}, Ports: []EgressPort{{Port: 9, EndPort: 8}}},
			want: `policy: EgressPolicy shop/p: spec.ports[0].endPort: endPort 8 is below port 9`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := CompileEgress(mk(tc.spec), EgressOptions{})
			if err == nil || err.Error() != tc.want {
				t.Fatalf("got %v\nwant %s", err, tc.want)
			}
		})
	}
	ix, err := CompileEgress(mk(EgressPolicySpec{AllowCIDRs: []string{"10.0.0.0/8"}, Ports: []EgressPort{{Port: 443}, {Protocol: "UDP", Port: 53}}}), EgressOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := Firewall{Mode: FirewallEnforce, Policy: "shop/p", CIDRs: []CIDRGrant{{Prefix: pfx("10.0.0.0/8"), Ports: []PortRange{{Proto: "tcp", First: 443, Last: 443}, {Proto: "udp", First: 53, Last: 53}}, Policy: "shop/p"}}}
	if got := ix.ForWorkload("shop", nil).Firewall(); !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
}
