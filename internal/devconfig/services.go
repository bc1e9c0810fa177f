package devconfig

import (
	"fmt"
	"os"

	"github.com/kordon-dev/kordon/policy"
	"github.com/kordon-dev/kordon/xds"
)

// ServicesFile is the name of the optional services file at the top of a
// dev folder (services.yml is accepted too).
const ServicesFile = "services.yaml"

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
	var list []xds.Service
	pos, err := policy.Decode(file, data, &list)
	if err != nil {
		return nil, err
	}
	var out []xds.Service
	var errs policy.ErrorList
	seen := map[string]policy.Position{}
	for i, s := range list {
		at := fmt.Sprintf("[%d]", i)
		fail := func(path, format string, args ...any) {
			errs = append(errs, pos.Errorf(path, format, args...))
		}
		if s.Name == "" {
			fail(at+".name", "required")
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
			fail(at+".protocol", "%q is not one of grpc, http, tcp", s.Protocol)
			continue
		}
		if s.Port == 0 || s.Port > 65535 {
			fail(at+".port", "%d is not between 1 and 65535", s.Port)
			continue
		}
		if len(s.Selector) == 0 {
			fail(at+".selector", "required (a service without one would select every workload of its namespace)")
			continue
		}
		key := s.Namespace + "/" + s.Name
		if first, dup := seen[key]; dup {
			fail(at, "duplicate service %s (first at %d:%d)", key, first.Line, first.Column)
			continue
		}
		seen[key] = pos.Of(at)
		out = append(out, s)
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return out, nil
}
