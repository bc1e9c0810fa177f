package main

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/xds"
)

func runXDSCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newXDSCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func TestXDSStatusCmd(t *testing.T) {
	t.Parallel()
	srv, err := xds.New(xds.Config{Registry: workload.NewRegistry(), TrustDomain: "cluster.local", AllowUnauthenticated: true})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.StatusHandler())
	defer hs.Close()
	out, err := runXDSCmd(t, "status", "--server", hs.URL)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, "NODE ") || !strings.Contains(out, "LAST ERROR") {
		t.Fatalf("table: %q", out)
	}
	out, err = runXDSCmd(t, "status", "--server", hs.URL, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var rep xds.StatusReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.Nodes == nil {
		t.Fatalf("json: %v %q", err, out)
	}
	if _, err := runXDSCmd(t, "status", "--server", hs.URL, "--node", "shop/ghost"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("unknown node: %v", err)
	}
}

func TestXDSBootstrapCmd(t *testing.T) {
	t.Parallel()
	out, err := runXDSCmd(t, "bootstrap", "--node", "shop/frontend-0", "--cert", "c.pem", "--key", "k.pem", "--ca", "ca.pem")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Node struct {
			ID string `json:"id"`
		} `json:"node"`
		Template string `json:"server_listener_resource_name_template"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Node.ID != "shop/frontend-0" || doc.Template != xds.ServerListenerPrefix+"%s" {
		t.Fatalf("bootstrap %+v", doc)
	}
	if _, err := runXDSCmd(t, "bootstrap", "--node", "shop/frontend-0"); err == nil {
		t.Fatal("bootstrap without certificate files succeeded")
	}
}
