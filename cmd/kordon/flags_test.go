package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// TestOneFlagNameForOneThing: every long-running command names the same
// thing with the same flag, and the names of earlier versions still set
// it (deprecated, hidden from help).
func TestOneFlagNameForOneThing(t *testing.T) {
	t.Parallel()
	devUpstream := func() *cobra.Command { return newDevUpstreamCmd() }
	cases := []struct {
		name    string
		cmd     func() *cobra.Command
		flags   []string
		aliases map[string]string // old -> new
	}{
		{name: "controller", cmd: newControllerCmd, flags: []string{"http-listen", "xds-listen", "log-level", "log-format"}},
		{name: "node", cmd: newNodeCmd, flags: []string{"dns-listen", "http-listen", "metrics-listen", "query-log", "state-dir", "log-level", "log-format"},
			aliases: map[string]string{"log": "query-log"}},
		{name: "dev", cmd: newDevCmd, flags: []string{"dns-listen", "http-listen", "xds-listen", "query-log", "state-dir", "log-level", "log-format"}},
		{name: "dnsguard", cmd: newDNSGuardCmd, flags: []string{"dns-listen", "metrics-listen", "query-log", "log-level", "log-format"},
			aliases: map[string]string{"listen": "dns-listen", "log": "query-log"}},
		{name: "dev upstream", cmd: devUpstream, flags: []string{"dns-listen"}, aliases: map[string]string{"listen": "dns-listen"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			for _, f := range tc.flags {
				if tc.cmd().Flags().Lookup(f) == nil {
					t.Errorf("no --%s", f)
				}
			}
			for old, name := range tc.aliases {
				c := tc.cmd()
				var stderr bytes.Buffer
				c.SetErr(&stderr)
				if err := c.Flags().Parse([]string{"--" + old, "127.0.0.1:7"}); err != nil {
					t.Fatalf("--%s: %v", old, err)
				}
				if got := c.Flags().Lookup(name).Value.String(); got != "127.0.0.1:7" {
					t.Errorf("--%s 127.0.0.1:7 left --%s = %q", old, name, got)
				}
				of := c.Flags().Lookup(old)
				if of.Deprecated != "use --"+name || !of.Hidden {
					t.Errorf("--%s: deprecated %q, hidden %v; want \"use --%s\", hidden", old, of.Deprecated, of.Hidden, name)
				}
			}
		})
	}
}

func TestNewLogger(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	log, err := newLogger(&b, "info", "json")
	if err != nil {
		t.Fatal(err)
	}
	log.Debug("hidden")
	log.Info("config reloaded", "files", 3)
	var rec map[string]any
	if err := json.Unmarshal(b.Bytes(), &rec); err != nil {
		t.Fatalf("not one JSON object: %v: %q", err, b.String())
	}
	if rec["msg"] != "config reloaded" || rec["files"] != float64(3) {
		t.Fatalf("record %v", rec)
	}
	b.Reset()
	log, err = newLogger(&b, "debug", "text")
	if err != nil {
		t.Fatal(err)
	}
	log.Debug("shown")
	if !strings.Contains(b.String(), "level=DEBUG msg=shown") {
		t.Fatalf("text record %q", b.String())
	}
	for _, bad := range []struct{ level, format, want string }{
		{"info", "xml", `--log-format: want json or text, got "xml"`},
		{"loud", "json", `--log-level: slog: level string "loud": unknown name`},
	} {
		if _, err := newLogger(&b, bad.level, bad.format); err == nil || err.Error() != bad.want {
			t.Errorf("newLogger(%q, %q) = %v, want %s", bad.level, bad.format, err, bad.want)
		}
	}
}
