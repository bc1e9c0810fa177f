package devconfig

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/kordon-dev/kordon/xds"
	"gopkg.in/yaml.v3"
)

// ServicesFile is the name of the optional services file at the top of a
// dev folder (services.yml is accepted too).
const ServicesFile = "services.yaml"

// serviceFields are the keys of a services.yaml entry.
var serviceFields = map[string]bool{"name": true, "namespace": true, "port": true, "protocol": true, "selector": true}

// loadServices reads a services.yaml: a list of {name, namespace, port,
// protocol, selector}. namespace defaults to "default" and protocol to
// "grpc". Errors name file:line:col. It produces xds.Service, the service
// model the xDS server serves, so dev mode needs no conversion.
func loadServices(path string) ([]xds.Service, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("devconfig: %w", err)
	}
	return parseServices(path, data)
}

func parseServices(file string, data []byte) ([]xds.Service, error) {
	var root yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(data)).Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		return nil, fmt.Errorf("%s: %s", file, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	list := root.Content[0]
	if list.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("%s:%d:%d: expected a list of services", file, list.Line, list.Column)
	}
	var out []xds.Service
	var errs []error
	seen := map[string]int{}
	for i, item := range list.Content {
		fail := func(n *yaml.Node, format string, args ...any) {
			errs = append(errs, fmt.Errorf("%s:%d:%d: [%d]: %s", file, n.Line, n.Column, i, fmt.Sprintf(format, args...)))
		}
		if item.Kind != yaml.MappingNode {
			fail(item, "expected an object")
			continue
		}
		ok := true
		for j := 0; j+1 < len(item.Content); j += 2 {
			if k := item.Content[j]; !serviceFields[k.Value] {
				fail(k, "%s: unknown field", k.Value)
				ok = false
			}
		}
		if !ok {
			continue
		}
		var s xds.Service
		if err := item.Decode(&s); err != nil {
			fail(item, "%s", strings.TrimPrefix(err.Error(), "yaml: unmarshal errors:\n  "))
			continue
		}
		if s.Name == "" {
			fail(item, "name: required")
			continue
		}
		if s.Namespace == "" {
			s.Namespace = "default"
		}
		if s.Protocol == "" {
			s.Protocol = xds.ProtocolGRPC
		}
		switch s.Protocol {
		case xds.ProtocolGRPC, xds.ProtocolHTTP, xds.ProtocolTCP:
		default:
			fail(fieldNode(item, "protocol"), "protocol: %q is not one of grpc, http, tcp", s.Protocol)
			continue
		}
		if s.Port == 0 || s.Port > 65535 {
			fail(fieldNode(item, "port"), "port: %d is not between 1 and 65535", s.Port)
			continue
		}
		if len(s.Selector) == 0 {
			fail(item, "selector: required (a service without one would select every workload of its namespace)")
			continue
		}
		key := s.Namespace + "/" + s.Name
		if line, dup := seen[key]; dup {
			fail(item, "duplicate service %s (first at line %d)", key, line)
			continue
		}
		seen[key] = item.Line
		out = append(out, s)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// fieldNode returns the value node of key in mapping m, or m itself.
func fieldNode(m *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return m
}
