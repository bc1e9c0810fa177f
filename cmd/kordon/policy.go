package main

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/kordon-dev/kordon/policy"
	"github.com/spf13/cobra"
)

func newPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Check, compile and explain AuthorizationPolicy and EgressPolicy files",
	}
	cmd.AddCommand(newPolicyCheckCmd(), newPolicyCompileCmd(), newPolicyExplainCmd())
	return cmd
}

// loadPolicies loads files and prints positioned errors on failure, and a
// note for each file of a directory argument that is not a policy file.
func loadPolicies(cmd *cobra.Command, defaultNS string, paths []string) (*policy.Set, error) {
	set, err := policy.LoadPaths(policy.LoadOptions{DefaultNamespace: defaultNS}, paths...)
	if err != nil {
		fmt.Fprintln(cmd.ErrOrStderr(), err)
		return nil, exitError{1}
	}
	for _, w := range set.Warnings {
		fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s\n", w)
	}
	for _, s := range set.Skipped {
		fmt.Fprintf(cmd.ErrOrStderr(), "note: skipped %s: %s\n", s.Path, s.Reason)
	}
	return set, nil
}

func newPolicyCheckCmd() *cobra.Command {
	var ns string
	cmd := &cobra.Command{
		Use:   "check FILE|DIR...",
		Short: "Validate policy files; print file:line:col: field: message per error",
		Long: `Validate AuthorizationPolicy (security.kordon.dev/v1, security.istio.io/v1,
security.istio.io/v1beta1) and EgressPolicy files. Exit 0 when every file is
valid, 1 with one "file:line:col: field.path: message" line per error.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			set, err := loadPolicies(cmd, ns, args)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "ok: %d AuthorizationPolicies, %d RequestAuthentications, %d EgressPolicies\n", len(set.Authorization), len(set.RequestAuthentication), len(set.Egress))
			return err
		},
	}
	cmd.Flags().StringVar(&ns, "default-namespace", "default", "namespace for documents without metadata.namespace")
	return cmd
}

// targetFlags are the flags naming the workload to compile or explain for.
type targetFlags struct {
	namespace, labels, rootNamespace, trustDomain string
	dynamicMetadata, jwtAuthn                     bool
}

func (f *targetFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&f.namespace, "namespace", "n", "default", "namespace of the workload")
	cmd.Flags().StringVarP(&f.labels, "labels", "l", "", "labels of the workload, k=v[,k=v]")
	cmd.Flags().StringVar(&f.rootNamespace, "root-namespace", policy.DefaultRootNamespace, "namespace whose policies apply mesh-wide")
	cmd.Flags().StringVar(&f.trustDomain, "trust-domain", policy.DefaultTrustDomain, "SPIFFE trust domain")
	cmd.Flags().BoolVar(&f.jwtAuthn, "jwt-authn", false, "the data plane is Envoy: put the jwt_authn filter of the workload's RequestAuthentications first and match JWT attributes against the payload it verifies")
	cmd.Flags().BoolVar(&f.dynamicMetadata, "dynamic-metadata", false, "the data plane runs Istio's authn filter (istio_authn metadata) and the Envoy filters experimental.envoy.filters.* keys name: emit istiod's metadata matchers; by default JWT and metadata attributes are unknowable and fail closed")
}

func (f *targetFlags) target() (policy.Target, policy.CompileOptions, error) {
	labels, err := parseKV(f.labels, "--labels")
	if err != nil {
		return policy.Target{}, policy.CompileOptions{}, err
	}
	return policy.Target{Namespace: f.namespace, Labels: labels},
		policy.CompileOptions{RootNamespace: f.rootNamespace, TrustDomain: f.trustDomain, DynamicMetadata: f.dynamicMetadata, JWTAuthn: f.jwtAuthn}, nil
}

// parseKV parses k=v[,k=v].
func parseKV(s, flag string) (map[string]string, error) {
	out := map[string]string{}
	if s == "" {
		return out, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%s: %q is not k=v", flag, kv)
		}
		out[k] = v
	}
	return out, nil
}

func newPolicyCompileCmd() *cobra.Command {
	var tf targetFlags
	var output string
	cmd := &cobra.Command{
		Use:   "compile -n NS -l k=v -o json FILE|DIR...",
		Short: "Compile the policies that apply to one workload to Envoy RBAC filters",
		Long: `Print one JSON object {"httpFilters": [...], "networkFilters": [...]} whose
items are Envoy HttpFilter and network Filter messages (protojson: name and
typedConfig with @type), in the order a proxy must apply them: AUDIT (action
LOG, never denies), DENY, then ALLOW, each filter named by its action
(envoy.filters.http.rbac.audit, .deny, .allow). Policies annotated
istio.io/dry-run: "true" are shadow rules only, never enforced.`,
		Example: `  kordon policy compile -n shop -l app=payments -o json manifests/examples/`,
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "json" {
				return fmt.Errorf("unsupported output format %q (compile prints json)", output)
			}
			target, opts, err := tf.target()
			if err != nil {
				return err
			}
			set, err := loadPolicies(cmd, tf.namespace, args)
			if err != nil {
				return err
			}
			c, err := policy.Compile(set, target, opts)
			if err != nil {
				return err
			}
			b, err := c.FiltersJSON()
			if err != nil {
				return err
			}
			for _, n := range c.Notes {
				fmt.Fprintf(cmd.ErrOrStderr(), "note: %s\n", n)
			}
			_, err = cmd.OutOrStdout().Write(b)
			return err
		},
	}
	tf.register(cmd)
	addOutputFlag(cmd, &output, "json")
	return cmd
}

func newPolicyExplainCmd() *cobra.Command {
	var tf targetFlags
	var output, principal, sourceIP, remoteIP, destIP, method, path, host, sni, requestPrincipal string
	var port uint32
	var headers []string
	var tcp bool
	cmd := &cobra.Command{
		Use:   "explain -n NS -l k=v [request flags] FILE|DIR...",
		Short: "Evaluate one request against the policies: ALLOW or DENY, and which rule decided",
		Long: `Evaluate a request with Istio's semantics on the compiled Envoy RBAC (so the
answer is exactly what a proxy enforces). Exit 0 for ALLOW, 2 for DENY, 1 on error.`,
		Example: `  # ALLOW by shop/payments-from-checkout (exit 0)
  kordon policy explain -n shop -l app=payments \
    --principal spiffe://cluster.local/ns/shop/sa/checkout --method POST \
    --path /shop.payments.v1.Payments/Charge --port 8080 manifests/examples/`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			target, opts, err := tf.target()
			if err != nil {
				return err
			}
			req := policy.Request{Principal: principal, Method: method, Path: path, Host: host, SNI: sni, Port: port, RequestPrincipal: requestPrincipal, TCP: tcp, Headers: map[string]string{}}
			for _, spec := range []struct {
				flag string
				val  string
				dst  *netip.Addr
			}{{"--source-ip", sourceIP, &req.SourceIP}, {"--remote-ip", remoteIP, &req.RemoteIP}, {"--destination-ip", destIP, &req.DestinationIP}} {
				if spec.val == "" {
					continue
				}
				a, err := netip.ParseAddr(spec.val)
				if err != nil {
					return fmt.Errorf("%s: %w", spec.flag, err)
				}
				*spec.dst = a
			}
			for _, h := range headers {
				k, v, ok := strings.Cut(h, "=")
				if !ok {
					return fmt.Errorf("--header: %q is not k=v", h)
				}
				req.Headers[k] = v
			}
			set, err := loadPolicies(cmd, tf.namespace, args)
			if err != nil {
				return err
			}
			d, err := policy.Explain(set, target, req, opts)
			if err != nil {
				return err
			}
			if output == "text" {
				out := d.Decision
				if d.Policy != "" {
					out += " by " + d.Policy + " (" + d.Rule + ")"
				}
				out += ": " + d.Reason
				if len(d.Audited) > 0 {
					out += "\naudited by: " + strings.Join(d.Audited, ", ")
				}
				for _, n := range d.Notes {
					out += "\nnote: " + n
				}
				for _, r := range d.DryRun {
					out += "\ndry-run " + string(r.Action) + " policies would " + map[string]string{"ALLOW": "allow", "DENY": "deny"}[r.Decision]
					if r.Rule != "" {
						out += " (" + r.Rule + ")"
					}
				}
				fmt.Fprintln(cmd.OutOrStdout(), out)
			} else if err := printStructured(cmd.OutOrStdout(), output, d); err != nil {
				return err
			}
			if !d.Allowed {
				return exitError{2}
			}
			return nil
		},
	}
	tf.register(cmd)
	addOutputFlag(cmd, &output, "text", "json", "yaml")
	f := cmd.Flags()
	f.StringVar(&principal, "principal", "", "peer SPIFFE ID (spiffe://...); empty for a plaintext peer")
	f.StringVar(&sourceIP, "source-ip", "", "peer IP address")
	f.StringVar(&remoteIP, "remote-ip", "", "original client IP (default: --source-ip)")
	f.StringVar(&destIP, "destination-ip", "", "destination IP address")
	f.Uint32Var(&port, "port", 0, "destination port")
	f.StringVar(&method, "method", "", "HTTP method")
	f.StringVar(&path, "path", "", "HTTP path")
	f.StringVar(&host, "host", "", "HTTP host (:authority)")
	f.StringVar(&sni, "sni", "", "TLS SNI")
	f.StringVar(&requestPrincipal, "request-principal", "", "JWT principal (iss/sub)")
	f.StringArrayVar(&headers, "header", nil, "request header k=v (repeatable)")
	f.BoolVar(&tcp, "tcp", false, "evaluate the network (TCP) RBAC instead of HTTP")
	return cmd
}
