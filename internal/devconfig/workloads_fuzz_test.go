package devconfig

import (
	"reflect"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

var workloadsErrPos = regexp.MustCompile(`^fuzz\.yaml:(\d+:\d+:| line \d+:)`)

// FuzzParseWorkloads checks the workloads.yaml decoder: every error line names
// fuzz.yaml and a position; accepted files have unique keys and IPs,
// defaults filled in, and round-trip through YAML to the same workloads.
func FuzzParseWorkloads(f *testing.F) {
	for _, s := range []string{
		"- name: frontend\n  namespace: shop\n  serviceAccount: frontend\n  labels: {app: frontend}\n  ips: [10.0.0.5, '2001:db8::5']\n  node: node-a\n  uid: 2c48913c-b29f-11e7-9350-020968147796\n",
		"workloads:\n- {name: a}\n- {name: b, ips: ['::ffff:10.0.0.1']}\n",
		"- {name: a, ips: [10.0.0.1]}\n- {name: b, ips: [10.0.0.1]}\n",
		"- {name: a}\n- {name: a}\n",
		"- {name: a, ips: [nope], colour: red}\n",
		"- {name: a, ips: ['fe80::1%eth0', 'fe80::1']}\n",
		"- {name: a, labels: [x]}\n- {name: b, ips: 3}\n",
		"- &x {name: a}\n- *x\n",
		"{}\n",
		"- [",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ws, err := ParseWorkloads("fuzz.yaml", data)
		if err != nil {
			if ws != nil {
				t.Fatal("error with workloads")
			}
			for _, line := range strings.Split(err.Error(), "\n") {
				if !workloadsErrPos.MatchString(line) {
					t.Fatalf("error line without a position: %q in\n%v", line, err)
				}
			}
			return
		}
		keys := map[string]bool{}
		ips := map[string]bool{}
		var entries []map[string]any
		for _, w := range ws {
			if w.Name == "" || w.Namespace == "" || w.ServiceAccount == "" {
				t.Fatalf("incomplete workload %+v", w)
			}
			if keys[w.Key()] {
				t.Fatalf("duplicate key %s", w.Key())
			}
			keys[w.Key()] = true
			var ipStrs []string
			for _, ip := range w.IPs {
				if !ip.IsValid() || ip.Is4In6() || ip.Zone() != "" {
					t.Fatalf("%s: IP %v is not a plain unmapped address", w.Key(), ip)
				}
				if ips[ip.String()] {
					t.Fatalf("IP %s used twice", ip)
				}
				ips[ip.String()] = true
				ipStrs = append(ipStrs, ip.String())
			}
			entries = append(entries, map[string]any{"name": w.Name, "namespace": w.Namespace, "serviceAccount": w.ServiceAccount, "labels": w.Labels, "ips": ipStrs, "node": w.Node, "uid": w.UID})
		}
		out, err := yaml.Marshal(entries)
		if err != nil {
			t.Fatal(err)
		}
		again, err := ParseWorkloads("again.yaml", out)
		if err != nil {
			t.Fatalf("re-encoded workloads do not parse: %v\n%s", err, out)
		}
		if len(ws) == 0 && len(again) == 0 {
			return
		}
		for _, w := range append(ws, again...) {
			if len(w.Labels) == 0 {
				w.Labels = nil
			}
		}
		if !reflect.DeepEqual(ws, again) {
			t.Fatalf("round trip changed workloads:\n%+v\n%+v", ws, again)
		}
	})
}

func TestParseWorkloadsRejects(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, in, want string
	}{
		{name: "unclosed quote points at the end", in: `"`, want: "f.yaml:1:2: invalid YAML: found unexpected end of stream"},
		{name: "zoned IP", in: "- {name: a, ips: ['fe80::1%eth0']}\n", want: `f.yaml:1:19: [0].ips[0]: "fe80::1%eth0" has a zone`},
		{name: "zoned IP in a block list", in: "- name: a\n  ips:\n  - 10.0.0.1\n  - 'fe80::1%eth0'\n", want: `f.yaml:4:5: [0].ips[1]: "fe80::1%eth0" has a zone`},
		{name: "unknown field with suggestion", in: "- name: a\n  serviceaccount: x\n", want: `f.yaml:2:3: [0].serviceaccount: unknown field (did you mean "serviceAccount"?)`},
		{name: "unknown field in the workloads form", in: "workloads:\n- name: a\n  ip: [10.0.0.1]\n", want: `f.yaml:3:3: workloads[0].ip: unknown field (did you mean "ips"?)`},
		{name: "unknown top-level key", in: "workload: []\n", want: `f.yaml:1:1: workload: unknown field (did you mean "workloads"?)`},
		{name: "duplicate key", in: "- name: a\n  node: n1\n  node: n2\n", want: `f.yaml:3:3: [0].node: duplicate key "node" (first at 2:3)`},
		{name: "wrong type", in: "- name: a\n  labels: [x]\n", want: `f.yaml:2:11: [0].labels: expected an object, got a list`},
		{name: "missing name", in: "- namespace: x\n", want: `f.yaml:1:3: [0].name: required`},
		{name: "duplicate workload", in: "- name: a\n- {name: a, namespace: default}\n", want: `f.yaml:2:3: [1]: duplicate workload default/a (first at 1:3)`},
		{name: "json key case", in: `[{"name": "a", "Labels": {}}]`, want: `f.yaml:1:16: [0].Labels: unknown field (did you mean "labels"?)`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := ParseWorkloads("f.yaml", []byte(tc.in))
			if err == nil || err.Error() != tc.want {
				t.Fatalf("got %v, want %s", err, tc.want)
			}
		})
	}
}
