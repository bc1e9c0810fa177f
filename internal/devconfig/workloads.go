package devconfig

import (
	"fmt"
	"net/netip"
	"os"

	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/policy"
	"gopkg.in/yaml.v3"
)

// fileEntry is one item of workloads.yaml.
type fileEntry struct {
	Name           string            `yaml:"name"`
	Namespace      string            `yaml:"namespace"`
	ServiceAccount string            `yaml:"serviceAccount"`
	Labels         map[string]string `yaml:"labels"`
	IPs            []string          `yaml:"ips"`
	Node           string            `yaml:"node"`
	UID            string            `yaml:"uid"`
}

// LoadWorkloads reads a workloads.yaml: a YAML list of
// {name, namespace, serviceAccount, labels, ips, node, uid}. namespace
// defaults to "default" and serviceAccount to "default". Errors name
// file:line:col.
func LoadWorkloads(path string) ([]*workload.Workload, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("workload: %w", err)
	}
	return ParseWorkloads(path, data)
}

// fileList is the other form of workloads.yaml: {workloads: [...]}.
type fileList struct {
	Workloads []fileEntry `yaml:"workloads"`
}

// ParseWorkloads decodes workloads.yaml content; file names the source in errors.
// Decoding is policy's strict decoder (unknown fields with "did you
// mean", duplicate keys, types, all with file:line:col and field path).
func ParseWorkloads(file string, data []byte) ([]*workload.Workload, error) {
	docs, err := policy.Documents(file, data)
	if err != nil || len(docs) == 0 {
		return nil, err
	}
	var entries []fileEntry
	var pos *policy.Positions
	prefix := ""
	if docs[0].Kind == yaml.MappingNode {
		var l fileList
		pos, err = policy.Decode(file, data, &l)
		entries, prefix = l.Workloads, "workloads"
	} else {
		pos, err = policy.Decode(file, data, &entries)
	}
	if err != nil {
		return nil, err
	}
	var errs policy.ErrorList
	var out []*workload.Workload
	seenKey := map[string]policy.Position{}
	seenIP := map[netip.Addr]string{}
	for i, e := range entries {
		at := fmt.Sprintf("%s[%d]", prefix, i)
		fail := func(path, format string, args ...any) {
			errs = append(errs, pos.Errorf(path, format, args...))
		}
		if e.Name == "" {
			fail(at+".name", "required")
			continue
		}
		if e.Namespace == "" {
			e.Namespace = "default"
		}
		if e.ServiceAccount == "" {
			e.ServiceAccount = "default"
		}
		w := &workload.Workload{Name: e.Name, Namespace: e.Namespace, ServiceAccount: e.ServiceAccount, Labels: e.Labels, Node: e.Node, UID: e.UID}
		for j, s := range e.IPs {
			ipPath := fmt.Sprintf("%s.ips[%d]", at, j)
			ip, err := netip.ParseAddr(s)
			if err != nil {
				fail(ipPath, "invalid IP address %q", s)
				continue
			}
			if ip.Zone() != "" {
				// A zone is local to a host; pod traffic never carries one,
				// and fe80::1%a would dodge the duplicate check for fe80::1.
				fail(ipPath, "%q has a zone", s)
				continue
			}
			ip = ip.Unmap()
			if other, dup := seenIP[ip]; dup {
				fail(ipPath, "%s is already used by %s", ip, other)
				continue
			}
			seenIP[ip] = w.Key()
			w.IPs = append(w.IPs, ip)
		}
		if first, dup := seenKey[w.Key()]; dup {
			fail(at, "duplicate workload %s (first at %d:%d)", w.Key(), first.Line, first.Column)
			continue
		}
		seenKey[w.Key()] = pos.Of(at)
		out = append(out, w)
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return out, nil
}
