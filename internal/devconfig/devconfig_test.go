package devconfig

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

const goodWorkloads = `- name: web
  namespace: shop
  serviceAccount: web
  labels: {app: web}
  ips: [127.0.0.10]
- name: worker
  namespace: shop
  ips: [127.0.0.13]
`

const goodEgress = `apiVersion: security.kordon.dev/v1
kind: EgressPolicy
metadata:
  name: web-egress
  namespace: shop
spec:
  selector:
    matchLabels: {app: web}
  allow: ["*.cdn.example"]
`

// badEgress has a typo'd field at line 8, column 3.
const badEgress = `apiVersion: security.kordon.dev/v1
kind: EgressPolicy
metadata:
  name: web-egress
  namespace: shop
spec:
  selector: {matchLabels: {app: web}}
  alow: ["*.cdn.example"]
`

const secondEgress = `apiVersion: security.kordon.dev/v1
kind: EgressPolicy
metadata:
  name: web-egress
  namespace: shop
spec:
  selector:
    matchLabels: {app: web}
  allow: ["*.cdn.example", api.example]
---
apiVersion: security.kordon.dev/v1
kind: EgressPolicy
metadata:
  name: worker-egress
  namespace: shop
spec:
  deny: ["*.bad.example"]
`

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func newDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "workloads.yaml"), goodWorkloads)
	writeFile(t, filepath.Join(dir, "policies", "egress.yaml"), goodEgress)
	return dir
}

func TestLoadExamples(t *testing.T) {
	t.Parallel()
	snap, err := Load("../../examples/dev")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, w := range snap.Workloads {
		names = append(names, w.Key())
	}
	if got, want := strings.Join(names, " "), "shop/catalog shop/checkout shop/frontend shop/payments shop/report-worker"; got != want {
		t.Errorf("workloads %q, want %q", got, want)
	}
	if len(snap.Services) != 3 {
		t.Errorf("%d services, want 3", len(snap.Services))
	}
	if len(snap.Policies.Authorization) != 5 || len(snap.Policies.Egress) != 4 {
		t.Errorf("policies: %d authorization, %d egress; want 5 and 4", len(snap.Policies.Authorization), len(snap.Policies.Egress))
	}
	for _, w := range snap.Workloads {
		for _, ip := range w.IPs {
			if !ip.IsLoopback() {
				t.Errorf("%s has %s, want loopback addresses only", w.Key(), ip)
			}
		}
	}
}

func TestLoadErrorsNamePositions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		files map[string]string
		want  string
	}{
		{
			name:  "policy typo",
			files: map[string]string{"workloads.yaml": goodWorkloads, "egress.yaml": badEgress},
			want:  "egress.yaml:8:3: spec.alow: unknown field",
		},
		{
			name:  "workload bad IP",
			files: map[string]string{"workloads.yaml": "- name: a\n  ips: [127.0.0.300]\n"},
			want:  "workloads.yaml:2:9: [0].ips[0]: invalid IP address \"127.0.0.300\"",
		},
		{
			name:  "both wrong",
			files: map[string]string{"workloads.yaml": "- name: a\n  ip: [127.0.0.1]\n", "egress.yaml": badEgress},
			want:  "workloads.yaml:2:3: [0].ip: unknown field (did you mean \"ips\"?)\negress.yaml:8:3: spec.alow: unknown field",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			for name, content := range tc.files {
				writeFile(t, filepath.Join(dir, name), content)
			}
			_, err := Load(dir)
			if err == nil {
				t.Fatal("loaded a bad folder")
			}
			want := strings.ReplaceAll(tc.want, "workloads.yaml:", filepath.Join(dir, "workloads.yaml")+":")
			want = strings.ReplaceAll(want, "egress.yaml:", filepath.Join(dir, "egress.yaml")+":")
			if !strings.HasPrefix(err.Error(), want) {
				t.Errorf("error:\n%s\nwant prefix:\n%s", err, want)
			}
		})
	}
}

func TestLoadSkipsHiddenAndBackups(t *testing.T) {
	t.Parallel()
	dir := newDir(t)
	writeFile(t, filepath.Join(dir, ".egress.yaml.swp.yaml"), "not: [valid")
	writeFile(t, filepath.Join(dir, "egress.yaml~"), "not: [valid")
	writeFile(t, filepath.Join(dir, ".git", "x.yaml"), "not: [valid")
	snap, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(snap.Files, " "); got != "policies/egress.yaml workloads.yaml" {
		t.Errorf("files %q", got)
	}
}

// recorder collects applied snapshots.
type recorder struct {
	mu    sync.Mutex
	snaps []*Snapshot
	fail  error
}

func (r *recorder) apply(s *Snapshot) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return r.fail
	}
	r.snaps = append(r.snaps, s)
	return nil
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.snaps)
}

func TestBadChangeKeepsLastGoodAndFixReloads(t *testing.T) {
	t.Parallel()
	dir := newDir(t)
	var logs bytes.Buffer
	rec := &recorder{}
	reg := prometheus.NewRegistry()
	w, err := New(Config{Dir: dir, Apply: rec.apply, Registerer: reg, Logger: slog.New(slog.NewTextHandler(&syncWriter{w: &logs}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	first := w.Current()
	if rec.count() != 1 || len(first.Workloads) != 2 || len(first.Policies.Egress) != 1 {
		t.Fatalf("initial: %d applies, %d workloads, %d egress", rec.count(), len(first.Workloads), len(first.Policies.Egress))
	}
	if applied, err := w.Poll(); applied || err != nil {
		t.Fatalf("unchanged folder: applied=%v err=%v", applied, err)
	}

	egress := filepath.Join(dir, "policies", "egress.yaml")
	writeFile(t, egress, badEgress)
	applied, err := w.Poll()
	if applied || err == nil {
		t.Fatalf("bad change: applied=%v err=%v", applied, err)
	}
	if want := egress + ":8:3: spec.alow: unknown field"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not contain %q", err, want)
	}
	if w.Current() != first || rec.count() != 1 {
		t.Error("a bad change replaced the snapshot in force")
	}
	if w.LastError() == nil {
		t.Error("LastError is nil after a rejected change")
	}
	// The bad file stays on disk: it is not reported again.
	_, _ = w.Poll()
	if n := strings.Count(logs.String(), "config rejected"); n != 1 {
		t.Errorf("rejection logged %d times, want 1:\n%s", n, logs.String())
	}
	if got := testutil.ToFloat64(w.valid); got != 0 {
		t.Errorf("config_valid = %v after a rejected change", got)
	}

	writeFile(t, egress, secondEgress)
	applied, err = w.Poll()
	if !applied || err != nil {
		t.Fatalf("fix: applied=%v err=%v", applied, err)
	}
	if got := w.Current(); got == first || len(got.Policies.Egress) != 2 || got.Digest == first.Digest {
		t.Errorf("fix not applied: %d egress policies", len(got.Policies.Egress))
	}
	if w.LastError() != nil {
		t.Errorf("LastError after fix: %v", w.LastError())
	}
	if !strings.Contains(logs.String(), "config reloaded") {
		t.Errorf("no reload line in logs:\n%s", logs.String())
	}
	if got := testutil.ToFloat64(w.reloads.WithLabelValues("applied")); got != 1 {
		t.Errorf("reloads_total{applied} = %v", got)
	}
	if got := testutil.ToFloat64(w.reloads.WithLabelValues("rejected")); got != 1 {
		t.Errorf("reloads_total{rejected} = %v", got)
	}
}

func TestSameSizeEditWithinTimestampGranularity(t *testing.T) {
	t.Parallel()
	dir := newDir(t)
	rec := &recorder{}
	w, err := New(Config{Dir: dir, Apply: rec.apply})
	if err != nil {
		t.Fatal(err)
	}
	wl := filepath.Join(dir, "workloads.yaml")
	st, err := os.Stat(wl)
	if err != nil {
		t.Fatal(err)
	}
	// Same size, same mtime: only the content hash can tell.
	writeFile(t, wl, strings.Replace(goodWorkloads, "127.0.0.13", "127.0.0.14", 1))
	if err := os.Chtimes(wl, st.ModTime(), st.ModTime()); err != nil {
		t.Fatal(err)
	}
	applied, err := w.Poll()
	if !applied || err != nil {
		t.Fatalf("applied=%v err=%v", applied, err)
	}
	if ip := w.Current().Workloads[1].IPs[0].String(); ip != "127.0.0.14" {
		t.Errorf("worker IP %s after reload", ip)
	}
}

func TestApplyErrorRejectsSnapshot(t *testing.T) {
	t.Parallel()
	dir := newDir(t)
	rec := &recorder{}
	w, err := New(Config{Dir: dir, Apply: rec.apply})
	if err != nil {
		t.Fatal(err)
	}
	first := w.Current()
	rec.mu.Lock()
	rec.fail = errors.New("resolver refused the policies")
	rec.mu.Unlock()
	writeFile(t, filepath.Join(dir, "policies", "egress.yaml"), secondEgress)
	applied, err := w.Poll()
	if applied || err == nil || !strings.Contains(err.Error(), "resolver refused the policies") {
		t.Fatalf("applied=%v err=%v", applied, err)
	}
	if w.Current() != first {
		t.Error("snapshot replaced although Apply failed")
	}
}

func TestNewFailsOnBadFolder(t *testing.T) {
	t.Parallel()
	dir := newDir(t)
	writeFile(t, filepath.Join(dir, "policies", "egress.yaml"), badEgress)
	if _, err := New(Config{Dir: dir}); err == nil || !strings.Contains(err.Error(), ":8:3: spec.alow: unknown field") {
		t.Fatalf("err = %v", err)
	}
	if _, err := New(Config{Dir: filepath.Join(dir, "missing")}); err == nil {
		t.Fatal("no error for a missing folder")
	}
}

func TestRunAppliesChangesLive(t *testing.T) {
	t.Parallel()
	dir := newDir(t)
	rec := &recorder{}
	w, err := New(Config{Dir: dir, Apply: rec.apply, Interval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	writeFile(t, filepath.Join(dir, "more.yaml"), strings.Replace(goodEgress, "web-egress", "web-egress-2", 1))
	deadline := time.Now().Add(10 * time.Second)
	for rec.count() < 2 {
		if time.Now().After(deadline) {
			t.Fatal("change not applied within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := len(w.Current().Policies.Egress); got != 2 {
		t.Errorf("%d egress policies, want 2", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// syncWriter makes a bytes.Buffer safe for a logger used from one
// goroutine while the test reads it from another.
type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func TestServices(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in, want string
	}{
		{name: "ok", in: "- name: pay\n  namespace: shop\n  port: 8082\n  selector: {app: pay}\n"},
		{name: "unknown field", in: "- name: pay\n  prot: 1\n", want: "s.yaml:2:3: [0].prot: unknown field (did you mean \"port\"?)"},
		{name: "bad protocol", in: "- name: pay\n  port: 1\n  protocol: udp\n  selector: {a: b}\n", want: "s.yaml:3:13: [0].protocol: \"udp\" is not one of grpc, http, tcp"},
		{name: "port zero", in: "- name: pay\n  port: 0\n  selector: {a: b}\n", want: "s.yaml:2:9: [0].port: 0 is not between 1 and 65535"},
		{name: "port not a number", in: "- name: pay\n  port: http\n  selector: {a: b}\n", want: "s.yaml:2:9: [0].port: expected a non-negative integer, got \"http\""},
		{name: "no selector", in: "- name: pay\n  port: 80\n", want: "s.yaml:1:3: [0].selector: required (a service without one would select every workload of its namespace)"},
		{name: "duplicate", in: "- {name: a, port: 1, selector: {a: b}}\n- {name: a, port: 2, selector: {a: b}}\n", want: "s.yaml:2:3: [1]: duplicate service default/a (first at 1:3)"},
		{name: "duplicate key", in: "- name: a\n  port: 1\n  port: 2\n", want: "s.yaml:3:3: [0].port: duplicate key \"port\" (first at 2:3)"},
		{name: "not a list", in: "name: a\n", want: "s.yaml:1:1: expected a list, got an object"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			svcs, err := parseServices("s.yaml", []byte(tc.in))
			if tc.want == "" {
				if err != nil || len(svcs) != 1 || svcs[0].Protocol != "grpc" {
					t.Fatalf("svcs %+v err %v", svcs, err)
				}
				return
			}
			if err == nil || err.Error() != tc.want {
				t.Errorf("error:\n%v\nwant:\n%s", err, tc.want)
			}
		})
	}
}

func FuzzParseServices(f *testing.F) {
	f.Add([]byte("- {name: a, namespace: shop, port: 80, selector: {a: b}}\n"))
	f.Add([]byte("- name: a\n  port: 99999\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		svcs, err := parseServices("f.yaml", b)
		if err != nil {
			return
		}
		for _, s := range svcs {
			if s.Name == "" || s.Port == 0 || s.Port > 65535 || len(s.Selector) == 0 {
				t.Fatalf("invalid service accepted: %+v", s)
			}
		}
	})
}
