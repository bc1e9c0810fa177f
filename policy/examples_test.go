package policy

import (
	"reflect"
	"testing"
)

// TestShippedExamples: the examples in manifests/examples are valid and
// decide as their comments say.
func TestShippedExamples(t *testing.T) {
	t.Parallel()
	set, err := LoadPaths(LoadOptions{}, "../manifests/examples")
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Authorization) < 5 || len(set.Egress) < 3 {
		t.Fatalf("examples: %d authorization, %d egress", len(set.Authorization), len(set.Egress))
	}
	for _, tc := range []struct {
		labels  map[string]string
		req     Request
		allowed bool
	}{
		{map[string]string{"app": "payments", "pci": "true"}, Request{Principal: "spiffe://cluster.local/ns/shop/sa/checkout", Method: "POST", Path: "/shop.payments.v1.Payments/Charge"}, true},
		{map[string]string{"app": "payments", "pci": "true"}, Request{Principal: "spiffe://cluster.local/ns/shop/sa/report-worker", Method: "POST", Path: "/shop.payments.v1.Payments/Charge"}, false},
		{map[string]string{"app": "payments", "pci": "true"}, Request{Principal: "spiffe://cluster.local/ns/shop/sa/frontend", Method: "POST", Path: "/shop.payments.v1.Payments/Charge"}, false},
		{map[string]string{"app": "catalog"}, Request{Principal: "spiffe://cluster.local/ns/shop/sa/frontend", Method: "GET", Path: "/catalog/items"}, true},
		{map[string]string{"app": "catalog"}, Request{Principal: "spiffe://cluster.local/ns/shop/sa/frontend", Method: "DELETE", Path: "/catalog/items"}, false},
		{map[string]string{"app": "frontend"}, Request{Principal: "spiffe://cluster.local/ns/other/sa/x", Method: "GET", Path: "/admin"}, false},
	} {
		target := Target{Namespace: "shop", Labels: tc.labels}
		d, err := Explain(set, target, tc.req, CompileOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if d.Allowed != tc.allowed {
			t.Errorf("%v %+v: %s (%s)", tc.labels, tc.req, d.Decision, d.Reason)
		}
		c, err := Compile(set, target, CompileOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.FiltersJSON(); err != nil {
			t.Fatal(err)
		}
	}
	ix, err := CompileEgress(set, EgressOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pay := ix.ForWorkload("shop", map[string]string{"app": "payments", "pci": "true"})
	https := []PortRange{{Proto: ProtoTCP, First: 443, Last: 443}}
	if fw := pay.Firewall(); fw.Mode != FirewallEnforce || fw.Policy != "shop/payments-egress" ||
		len(fw.CIDRs) != 1 || fw.CIDRs[0].Prefix.String() != "203.0.113.0/24" || !reflect.DeepEqual(fw.CIDRs[0].Ports, https) {
		t.Errorf("payments firewall: %+v", fw)
	}
	if ports, any, ok := pay.NamePorts("api.paygate.example"); !ok || any || !reflect.DeepEqual(ports, https) {
		t.Errorf("payments NamePorts(api.paygate.example) = %v, %v, %v", ports, any, ok)
	}
	if fw := ix.ForWorkload("shop", map[string]string{"app": "checkout"}).Firewall(); fw.Mode != FirewallAudit {
		t.Errorf("checkout firewall: %+v", fw)
	}
}
