package policy

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestExplainHandler: the HTTP form answers what Explain answers, and bad
// input names the field.
func TestExplainHandler(t *testing.T) {
	t.Parallel()
	set := mustParse(t, ap("shop", "payments-from-checkout", `selector: {matchLabels: {app: payments}}
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/checkout"]}}], to: [{operation: {methods: [POST]}}]}]`))
	srv := httptest.NewServer(ExplainHandler(func() *Set { return set }, CompileOptions{}))
	defer srv.Close()
	cases := []struct {
		name, body string
		code       int
		want       string
	}{
		{name: "allowed", body: `{"namespace":"shop","labels":{"app":"payments"},"principal":"spiffe://cluster.local/ns/shop/sa/checkout","method":"POST","path":"/charge","sourceIP":"10.0.0.1"}`,
			code: 200, want: `"decision":"ALLOW","policy":"shop/payments-from-checkout","rule":"ns[shop]-policy[payments-from-checkout]-rule[0]"`},
		{name: "denied", body: `{"namespace":"shop","labels":{"app":"payments"},"principal":"spiffe://cluster.local/ns/shop/sa/frontend","method":"POST"}`,
			code: 200, want: `"allowed":false,"decision":"DENY"`},
		{name: "other workload", body: `{"namespace":"shop","labels":{"app":"catalog"}}`, code: 200, want: `"allowed":true`},
		{name: "bad address", body: `{"namespace":"shop","sourceIP":"10.0.0"}`, code: 400,
			want: `invalid explain request: sourceIP: ParseAddr("10.0.0"): IPv4 address too short`},
		{name: "no namespace", body: `{}`, code: 400, want: "invalid explain request: namespace: required"},
		{name: "unknown field", body: `{"namespace":"shop","prinicpal":"x"}`, code: 400, want: `invalid explain request: json: unknown field "prinicpal"`},
		{name: "two values", body: `{"namespace":"shop"}{}`, code: 400, want: "invalid explain request: data after the request"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, err := http.Post(srv.URL+"/v1/policy/explain", "application/json", strings.NewReader(c.body))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != c.code || !strings.Contains(string(b), c.want) {
				t.Fatalf("status %d body %s; want %d containing %s", resp.StatusCode, b, c.code, c.want)
			}
			if c.code != 200 {
				return
			}
			// The same answer as Explain itself.
			var er ExplainRequest
			if err := json.Unmarshal([]byte(c.body), &er); err != nil {
				t.Fatal(err)
			}
			target, req, err := er.toRequest()
			if err != nil {
				t.Fatal(err)
			}
			d, err := Explain(set, target, req, CompileOptions{})
			if err != nil {
				t.Fatal(err)
			}
			want, _ := json.Marshal(d)
			if strings.TrimSpace(string(b)) != string(want) {
				t.Errorf("handler %s\nExplain %s", b, want)
			}
		})
	}
}
