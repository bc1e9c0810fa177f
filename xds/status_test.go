package xds

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestStatusEndpointAndTable(t *testing.T) {
	t.Parallel()
	m := startMesh(t, shopWorkloads(), nil)
	m.srv.status.update("shop/echo-0", func(st *NodeStatus) {
		st.Kind, st.Connected, st.SnapshotVersion = KindProxyless, true, "3-abc"
		*st.typ("type.googleapis.com/envoy.config.listener.v3.Listener") = TypeStatus{Sent: "3-abc", Acked: "3-abc"}
		*st.typ("type.googleapis.com/envoy.config.route.v3.RouteConfiguration") = TypeStatus{Sent: "3-abc", Acked: "2-def", Nacked: "3-abc", NackError: "rbac: bad"}
		*st.typ("type.googleapis.com/envoy.config.cluster.v3.Cluster") = TypeStatus{Sent: "3-abc", Acked: "2-def"}
	})
	hs := httptest.NewServer(m.srv.StatusHandler())
	defer hs.Close()

	rep, err := FetchStatus(context.Background(), hs.Client(), hs.URL+"?node=shop/echo-0")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := WriteStatusTable(&buf, rep); err != nil {
		t.Fatal(err)
	}
	want := "NODE         KIND  CONNECTED  VERSION  LDS     RDS     CDS    EDS  SDS  LAST ERROR\n" +
		"shop/echo-0  grpc  true       3-abc    SYNCED  NACKED  STALE  -    -    rbac: bad\n"
	if buf.String() != want {
		t.Fatalf("table:\n%s\nwant:\n%s", buf.String(), want)
	}
	if _, err := FetchStatus(context.Background(), hs.Client(), hs.URL+"?node=shop/ghost"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("unknown node: %v", err)
	}
	resp, err := hs.Client().Post(hs.URL, "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST: %d", resp.StatusCode)
	}
}
