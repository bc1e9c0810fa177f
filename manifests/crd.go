// Package manifests generates kordon's Kubernetes manifests from one
// source: CustomResourceDefinitions derived from the Go API types of
// package policy, and the cluster-wide install (namespace, RBAC,
// controller Deployment, node DaemonSet, Services, PodDisruptionBudget,
// NetworkPolicy). `go run ./manifests/gen` writes crds.yaml and
// install.yaml; TestGeneratedManifestsUpToDate keeps them in sync.
package manifests

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"reflect"
	"strings"
	"time"

	"github.com/kordon-dev/kordon/policy"
)

// docs maps "Type.Field" (and "Type") to the doc comment in the source.
type docs map[string]string

func parseDocs(file string) (docs, error) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, file, nil, parser.ParseComments)
	if err != nil {
		return nil, err
	}
	d := docs{}
	for _, decl := range f.Decls {
		gd, ok := decl.(*ast.GenDecl)
		if !ok {
			continue
		}
		for _, spec := range gd.Specs {
			ts, ok := spec.(*ast.TypeSpec)
			if !ok {
				continue
			}
			if gd.Doc != nil {
				d[ts.Name.Name] = clean(gd.Doc.Text())
			}
			st, ok := ts.Type.(*ast.StructType)
			if !ok {
				continue
			}
			for _, fld := range st.Fields.List {
				if fld.Doc == nil {
					continue
				}
				for _, n := range fld.Names {
					d[ts.Name.Name+"."+n.Name] = clean(fld.Doc.Text())
				}
			}
		}
	}
	return d, nil
}

func clean(s string) string {
	return strings.TrimSpace(strings.Join(strings.Fields(s), " "))
}

// enumOf returns the allowed values of the string field key
// ("Type.Field"), from package policy (policy.Enums), which tests them
// against its validation.
func enumOf(key string) ([]any, bool) {
	vs, ok := policy.Enums()[key]
	if !ok {
		vs, ok = stateEnums[key]
	}
	out := make([]any, 0, len(vs))
	for _, v := range vs {
		out = append(out, v)
	}
	return out, ok
}

// ranges lists the inclusive bounds of integer fields, by "Type.Field".
var ranges = map[string][2]int{
	"EgressPort.Port":    {1, 65535},
	"EgressPort.EndPort": {1, 65535},
}

// itemFormats lists the OpenAPI format of the items of []string fields,
// by "Type.Field".
var itemFormats = map[string]string{"EgressPolicySpec.AllowCIDRs": "cidr"}

// intOrString lists []string fields whose items may be written as numbers.
var intOrString = map[string]bool{"Operation.Ports": true, "Operation.NotPorts": true}

// schemaFor builds an OpenAPI v3 structural schema for t.
func schemaFor(t reflect.Type, d docs, owner, field string) map[string]any {
	key := owner + "." + field
	s := map[string]any{}
	if doc := d[key]; doc != "" {
		s["description"] = doc
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t {
	case reflect.TypeOf(time.Time{}):
		s["type"], s["format"] = "string", "date-time"
		return s
	case reflect.TypeOf(json.RawMessage{}):
		s["type"], s["x-kubernetes-preserve-unknown-fields"] = "object", true
		return s
	}
	switch t.Kind() {
	case reflect.String:
		s["type"] = "string"
		if e, ok := enumOf(key); ok {
			s["enum"] = e
		}
	case reflect.Bool:
		s["type"] = "boolean"
	case reflect.Float64:
		s["type"] = "number"
	case reflect.Int, reflect.Int32, reflect.Int64, reflect.Uint32, reflect.Uint64:
		s["type"] = "integer"
		if r, ok := ranges[key]; ok {
			s["minimum"], s["maximum"] = r[0], r[1]
		}
	case reflect.Slice:
		s["type"] = "array"
		item := schemaFor(t.Elem(), d, t.Elem().Name(), "")
		if intOrString[key] {
			item = map[string]any{"x-kubernetes-int-or-string": true}
		}
		if f, ok := itemFormats[key]; ok {
			item["format"] = f
		}
		delete(item, "description")
		s["items"] = item
	case reflect.Map:
		s["type"] = "object"
		s["additionalProperties"] = map[string]any{"type": "string"}
	case reflect.Struct:
		s["type"] = "object"
		if doc := d[t.Name()]; doc != "" && s["description"] == nil {
			s["description"] = doc
		}
		props := map[string]any{}
		var required []any
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag := f.Tag.Get("json")
			name, opts, _ := strings.Cut(tag, ",")
			if name == "-" || name == "" || f.Type.Kind() == reflect.Interface {
				continue
			}
			props[name] = schemaFor(f.Type, d, t.Name(), f.Name)
			if !strings.Contains(opts, "omitempty") && f.Type.Kind() != reflect.Pointer {
				required = append(required, name)
			}
		}
		s["properties"] = props
		if len(required) > 0 {
			s["required"] = required
		}
	}
	return s
}

// statusSchema is the status subresource the controller writes.
func statusSchema() map[string]any {
	return map[string]any{
		"type": "object",
		"properties": map[string]any{
			"observedGeneration": map[string]any{"type": "integer"},
			"appliesTo": map[string]any{
				"type": "string", "description": "Where the policy applies: its namespace, or mesh-wide for the root namespace.",
			},
			"conditions": map[string]any{
				"type":                   "array",
				"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": []any{"type"},
				"items": map[string]any{
					"type":     "object",
					"required": []any{"type", "status"},
					"properties": map[string]any{
						"type":               map[string]any{"type": "string"},
						"status":             map[string]any{"type": "string", "enum": []any{"True", "False", "Unknown"}},
						"reason":             map[string]any{"type": "string"},
						"message":            map[string]any{"type": "string"},
						"observedGeneration": map[string]any{"type": "integer"},
						"lastTransitionTime": map[string]any{"type": "string", "format": "date-time"},
					},
				},
			},
		},
	}
}

// crd builds one CustomResourceDefinition.
func crd(kind, plural, short string, spec reflect.Type, d docs, columns []any) map[string]any {
	schema := map[string]any{
		"type":        "object",
		"description": d[kind],
		"properties": map[string]any{
			"apiVersion": map[string]any{"type": "string"},
			"kind":       map[string]any{"type": "string"},
			"metadata":   map[string]any{"type": "object"},
			"spec":       schemaFor(spec, d, kind, "Spec"),
			"status":     statusSchema(),
		},
	}
	return map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1",
		"kind":       "CustomResourceDefinition",
		"metadata":   map[string]any{"name": plural + ".security.kordon.dev", "labels": map[string]any{"app.kubernetes.io/part-of": "kordon"}},
		"spec": map[string]any{
			"group": "security.kordon.dev",
			"names": map[string]any{"kind": kind, "listKind": kind + "List", "plural": plural, "singular": strings.ToLower(kind), "shortNames": []any{short}, "categories": []any{"kordon"}},
			"scope": "Namespaced",
			"versions": []any{map[string]any{
				"name": "v1", "served": true, "storage": true,
				"schema":                   map[string]any{"openAPIV3Schema": schema},
				"subresources":             map[string]any{"status": map[string]any{}},
				"additionalPrinterColumns": columns,
			}},
		},
	}
}

// CRDs returns the CustomResourceDefinitions of kordon's API.
func CRDs(typesFile string) ([]map[string]any, error) {
	d, err := parseDocs(typesFile)
	if err != nil {
		return nil, err
	}
	if err := mergeStateDocs(d, typesFile); err != nil {
		return nil, err
	}
	age := map[string]any{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
	ready := map[string]any{"name": "Compiled", "type": "string", "jsonPath": `.status.conditions[?(@.type=="Compiled")].status`}
	ra, err := requestAuthnCRD(d, typesFile, ready, age)
	if err != nil {
		return nil, err
	}
	return append([]map[string]any{ra,
		crd(policy.KindAuthorizationPolicy, "authorizationpolicies", "kap", reflect.TypeOf(policy.AuthorizationPolicySpec{}), d, []any{
			map[string]any{"name": "Action", "type": "string", "jsonPath": ".spec.action"}, ready, age,
		}),
		crd(policy.KindEgressPolicy, "egresspolicies", "egp", reflect.TypeOf(policy.EgressPolicySpec{}), d, []any{
			map[string]any{"name": "Mode", "type": "string", "jsonPath": ".spec.mode"}, ready, age,
		}),
	}, stateCRDs(d)...), nil
}
