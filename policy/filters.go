package policy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbachttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnet "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Envoy filter names. A workload's chain holds one RBAC filter per action,
// each named by its action (HTTPRBACFilterName + ".deny", ".allow",
// ".audit"): grpc-go's xDS client NACKs a Listener whose HTTP filters, or
// whose network filters, repeat a name ("duplicate filter name"). Envoy and
// grpc-go pick the filter implementation by the typed_config's type URL,
// so the suffix changes nothing else. (istiod names every one of them
// envoy.filters.http.rbac, pilot/pkg/security/authz/builder/builder.go
// buildHTTP, which Envoy tolerates and grpc-go does not.)
const (
	HTTPRBACFilterName    = "envoy.filters.http.rbac"
	NetworkRBACFilterName = "envoy.filters.network.rbac"
)

// HTTPFilterName is the name of c's HTTP RBAC filter, unique in a chain:
// envoy.filters.http.rbac.deny, .allow or .audit.
func (c RBACConfig) HTTPFilterName() string {
	return HTTPRBACFilterName + "." + strings.ToLower(string(c.Action))
}

// NetworkFilterName is the name of c's network RBAC filter, unique in a
// chain: envoy.filters.network.rbac.deny, .allow or .audit.
func (c RBACConfig) NetworkFilterName() string {
	return NetworkRBACFilterName + "." + strings.ToLower(string(c.Action))
}

// HTTPConfig returns the envoy.extensions.filters.http.rbac.v3.RBAC
// message for c, as istiod's buildHTTP (pilot/pkg/security/authz/builder/
// builder.go): the enforced rules (AUDIT as action LOG, which allows
// everything) and the dry-run policies as shadow rules under Istio's
// shadow stat prefix (istio_dry_run_allow_ / istio_dry_run_deny_,
// pilot/pkg/security/authz/model/model.go). istiod also sets the allow
// prefix on filters without shadow rules (shadowRuleStatPrefix of a nil
// RBAC); kordon sets it only where there are shadow rules.
func (c RBACConfig) HTTPConfig() *rbachttp.RBAC {
	return &rbachttp.RBAC{Rules: c.Rules, ShadowRules: c.Shadow, ShadowRulesStatPrefix: c.shadowStatPrefix()}
}

// Shadow rule stat prefixes, Istio's (pilot/pkg/security/authz/model/model.go
// RBACShadowRulesAllowStatPrefix, RBACShadowRulesDenyStatPrefix).
const (
	ShadowAllowStatPrefix = "istio_dry_run_allow_"
	ShadowDenyStatPrefix  = "istio_dry_run_deny_"
)

func (c RBACConfig) shadowStatPrefix() string {
	if c.Shadow == nil {
		return ""
	}
	switch c.Action {
	case ActionAllow:
		return ShadowAllowStatPrefix
	case ActionDeny:
		return ShadowDenyStatPrefix
	}
	return ""
}

// NetworkConfig returns the envoy.extensions.filters.network.rbac.v3.RBAC
// message for c (istiod's buildTCP, with kordon's stat prefix).
func (c RBACConfig) NetworkConfig() *rbacnet.RBAC {
	prefix := "kordon_" + string(c.Action) + "_"
	return &rbacnet.RBAC{Rules: c.Rules, StatPrefix: prefix, ShadowRules: c.Shadow, ShadowRulesStatPrefix: c.shadowStatPrefix()}
}

// HTTPFilters wraps the HTTP configs as HttpConnectionManager filters, in
// the order a proxy must apply them (jwt_authn when compiled with
// CompileOptions.JWTAuthn, then AUDIT, DENY, ALLOW).
func (c *Compiled) HTTPFilters() ([]*hcmv3.HttpFilter, error) {
	var out []*hcmv3.HttpFilter
	jf, err := c.JWTAuthn.HTTPFilter()
	if err != nil {
		return nil, err
	}
	if jf != nil {
		out = append(out, jf) // verifies tokens before any RBAC reads them
	}
	for _, cfg := range c.HTTP {
		msg := cfg.HTTPConfig()
		if err := msg.ValidateAll(); err != nil {
			return nil, fmt.Errorf("policy: http rbac: %w", err)
		}
		a, err := anypb.New(msg)
		if err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
		out = append(out, &hcmv3.HttpFilter{Name: cfg.HTTPFilterName(), ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}})
	}
	return out, nil
}

// NetworkFilters wraps the network configs as listener filters.
func (c *Compiled) NetworkFilters() ([]*listenerv3.Filter, error) {
	var out []*listenerv3.Filter
	for _, cfg := range c.Network {
		msg := cfg.NetworkConfig()
		if err := msg.ValidateAll(); err != nil {
			return nil, fmt.Errorf("policy: network rbac: %w", err)
		}
		a, err := anypb.New(msg)
		if err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
		out = append(out, &listenerv3.Filter{Name: cfg.NetworkFilterName(), ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: a}})
	}
	return out, nil
}

// FiltersJSON renders {"httpFilters": [...], "networkFilters": [...]} with
// each item an Envoy HttpFilter / Filter in protojson, indented and with
// sorted keys so the output is byte-for-byte deterministic.
func (c *Compiled) FiltersJSON() ([]byte, error) {
	hf, err := c.HTTPFilters()
	if err != nil {
		return nil, err
	}
	nf, err := c.NetworkFilters()
	if err != nil {
		return nil, err
	}
	doc := struct {
		HTTPFilters    []json.RawMessage `json:"httpFilters"`
		NetworkFilters []json.RawMessage `json:"networkFilters"`
	}{HTTPFilters: []json.RawMessage{}, NetworkFilters: []json.RawMessage{}}
	for _, f := range hf {
		b, err := stableJSON(f)
		if err != nil {
			return nil, err
		}
		doc.HTTPFilters = append(doc.HTTPFilters, b)
	}
	for _, f := range nf {
		b, err := stableJSON(f)
		if err != nil {
			return nil, err
		}
		doc.NetworkFilters = append(doc.NetworkFilters, b)
	}
	raw, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	if err := json.Indent(&out, raw, "", "  "); err != nil {
		return nil, err
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

// stableJSON marshals m with protojson and re-encodes it through
// encoding/json, which sorts object keys and drops protojson's
// deliberately unstable whitespace.
func stableJSON(m proto.Message) (json.RawMessage, error) {
	b, err := protojson.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	return json.Marshal(v)
}
