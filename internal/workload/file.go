package workload

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"

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

// LoadFile reads a workloads.yaml: a YAML list of
// {name, namespace, serviceAccount, labels, ips, node, uid}. namespace
// defaults to "default" and serviceAccount to "default". Errors name
// file:line:col.
func LoadFile(path string) ([]*Workload, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("workload: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes workloads.yaml content; file names the source in errors.
func Parse(file string, data []byte) ([]*Workload, error) {
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		if !strings.HasPrefix(msg, "line ") {
			// yaml.v3 gives no mark for errors at the end of the stream
			// (an unclosed quote): point at the end.
			last := bytes.LastIndexByte(data, '\n')
			return nil, fmt.Errorf("%s:%d:%d: %s", file, bytes.Count(data, []byte("\n"))+1, len(data)-last, msg)
		}
		return nil, fmt.Errorf("%s: %s", file, msg)
	}
	if len(root.Content) == 0 {
		return nil, nil
	}
	list := root.Content[0]
	if list.Kind == yaml.MappingNode {
		// Also accept {workloads: [...]}.
		for i := 0; i+1 < len(list.Content); i += 2 {
			if list.Content[i].Value == "workloads" {
				list = list.Content[i+1]
				break
			}
		}
	}
	if list.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("%s:%d:%d: expected a list of workloads", file, list.Line, list.Column)
	}
	var errs []error
	var out []*Workload
	seenKey := map[string]int{}
	seenIP := map[netip.Addr]string{}
	for i, item := range list.Content {
		fail := func(n *yaml.Node, format string, args ...any) {
			errs = append(errs, fmt.Errorf("%s:%d:%d: [%d]: %s", file, n.Line, n.Column, i, fmt.Sprintf(format, args...)))
		}
		var e fileEntry
		if !decodeStrict(item, &e, fail) {
			continue
		}
		if e.Name == "" {
			fail(item, "name: required")
			continue
		}
		if e.Namespace == "" {
			e.Namespace = "default"
		}
		if e.ServiceAccount == "" {
			e.ServiceAccount = "default"
		}
		w := &Workload{Name: e.Name, Namespace: e.Namespace, ServiceAccount: e.ServiceAccount, Labels: e.Labels, Node: e.Node, UID: e.UID}
		ipsNode := field(item, "ips")
		for j, s := range e.IPs {
			ip, err := netip.ParseAddr(s)
			n := item
			if ipsNode != nil && j < len(ipsNode.Content) {
				n = ipsNode.Content[j]
			}
			if err != nil {
				fail(n, "ips[%d]: invalid IP address %q", j, s)
				continue
			}
			if ip.Zone() != "" {
				// A zone is local to a host; pod traffic never carries one,
				// and fe80::1%a would dodge the duplicate check for fe80::1.
				fail(n, "ips[%d]: %q has a zone", j, s)
				continue
			}
			ip = ip.Unmap()
			if other, dup := seenIP[ip]; dup {
				fail(n, "ips[%d]: %s is already used by %s", j, ip, other)
				continue
			}
			seenIP[ip] = w.Key()
			w.IPs = append(w.IPs, ip)
		}
		if line, dup := seenKey[w.Key()]; dup {
			fail(item, "duplicate workload %s (first at line %d)", w.Key(), line)
			continue
		}
		seenKey[w.Key()] = item.Line
		out = append(out, w)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

func field(m *yaml.Node, name string) *yaml.Node {
	if m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == name {
			return m.Content[i+1]
		}
	}
	return nil
}

// knownFields are the keys of a workloads.yaml entry.
var knownFields = map[string]bool{"name": true, "namespace": true, "serviceAccount": true, "labels": true, "ips": true, "node": true, "uid": true}

// decodeStrict decodes n into v, reporting unknown keys at their own
// position.
func decodeStrict(n *yaml.Node, v any, fail func(*yaml.Node, string, ...any)) bool {
	if n.Kind != yaml.MappingNode {
		fail(n, "expected an object")
		return false
	}
	ok := true
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i]; !knownFields[k.Value] {
			fail(k, "%s: unknown field", k.Value)
			ok = false
		}
	}
	if !ok {
		return false
	}
	if err := n.Decode(v); err != nil {
		fail(n, "%s", strings.TrimPrefix(err.Error(), "yaml: unmarshal errors:\n  "))
		return false
	}
	return true
}
