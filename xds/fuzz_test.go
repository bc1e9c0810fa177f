package xds

import (
	"strings"
	"testing"
)

// FuzzParseSPIFFEID: a parsed ID renders back to its input and never
// leaves the trust domain.
func FuzzParseSPIFFEID(f *testing.F) {
	for _, s := range []string{
		"spiffe://cluster.local/ns/shop/sa/frontend",
		"spiffe://cluster.local/ns//sa/x",
		"spiffe://cluster.local.evil/ns/a/sa/b",
		"spiffe://cluster.local/ns/a/sa/b/extra",
		"spiffe://other/ns/a/sa/b",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseSPIFFEID(s, "cluster.local")
		if err != nil {
			return
		}
		if got := "spiffe://cluster.local/ns/" + id.Namespace + "/sa/" + id.ServiceAccount; got != s || id.SPIFFEID != s {
			t.Fatalf("%q parsed as %+v", s, id)
		}
		if strings.Contains(id.Namespace, "/") || strings.Contains(id.ServiceAccount, "/") {
			t.Fatalf("%q: slash in a segment: %+v", s, id)
		}
	})
}

// FuzzResolveService: a dial target resolves only to a service whose name
// and namespace it spells.
func FuzzResolveService(f *testing.F) {
	svcs, err := checkServices([]Service{
		{Name: "echo", Namespace: "shop", Port: 8080, Selector: map[string]string{"app": "echo"}},
		{Name: "multi", Namespace: "shop", Port: 80, Selector: map[string]string{"app": "m"}},
		{Name: "multi", Namespace: "shop", Port: 81, Selector: map[string]string{"app": "m"}},
	})
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{"echo.shop", "echo.shop:8080", "echo.shop.svc.cluster.local:8080", "multi.shop", "x:y:z", ".shop", "echo.shop:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, target string) {
		s := resolveService(target, svcs)
		if s == nil {
			return
		}
		if !strings.HasPrefix(target, s.Name+"."+s.Namespace) {
			t.Fatalf("%q resolved to %s", target, s.Key())
		}
	})
}
