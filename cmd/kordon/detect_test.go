package main

import (
	"bytes"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/dnsguard/alert"
)

// writeQueryLog writes a slow base32 leak of 2 KB/h (30 bytes every 52.7 s)
// from shop/report-worker as query log lines, split into two files at
// 25 minutes, with one bad line in the second.
func writeQueryLog(t *testing.T, dir string) (string, string) {
	t.Helper()
	start := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	var a, b bytes.Buffer
	gap := time.Duration(30.0 / 2048 * float64(time.Hour))
	for i := 0; i < 120; i++ {
		at := start.Add(time.Duration(i) * gap)
		data := fmt.Sprintf("%08d-secret-payload-of-thirty-byte", i)[:30]
		name := strings.ToLower(strings.TrimRight(base32.StdEncoding.EncodeToString([]byte(data)), "=")) + ".metrics-sync.example.net."
		line := fmt.Sprintf(`{"time":%q,"client":{"ip":"127.0.0.10","namespace":"shop","pod":"report-worker"},"qname":%q,"qtype":"A","rcode":"NOERROR","verdict":"allowed","latencySeconds":0.0001}`+"\n",
			at.Format(time.RFC3339Nano), name)
		if at.Sub(start) < 25*time.Minute {
			a.WriteString(line)
		} else {
			b.WriteString(line)
		}
		if i == 40 {
			b.WriteString("{\"time\":\"2026-11-22T10:40:00Z\"\n")
		}
	}
	fa, fb := filepath.Join(dir, "a.jsonl"), filepath.Join(dir, "b.jsonl")
	if err := os.WriteFile(fa, a.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fb, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return fa, fb
}

func runDetect(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	cmd := newRootCmd()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(append([]string{"detect", "replay"}, args...))
	err := cmd.Execute()
	return out.String(), errOut.String(), err
}

func TestDetectReplay(t *testing.T) {
	t.Parallel()
	fa, fb := writeQueryLog(t, t.TempDir())

	out, errOut, err := runDetect(t, fa, fb)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, "TIME ") || !strings.Contains(out, "shop/report-worker") || !strings.Contains(out, "example.net") || !strings.Contains(out, "exfiltration") {
		t.Fatalf("table:\n%s", out)
	}
	// The bad line is reported with file and line, and the rest is read.
	for _, want := range []string{
		fb + ":13: not a query log record: unexpected EOF",
		fa + ": querylog, 29 records, 0 skipped, 0 alerts",
		fb + ": querylog, 91 records, 1 skipped, ",
		"total: 2 files, 120 records, 1 skipped, ",
	} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}

	out, _, err = runDetect(t, "-o", "json", "--cooldown", "0", fa, fb)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var first alert.Alert
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatal(err)
	}
	// The time is the record's that raised it: the state of the first file
	// carried into the second, so it comes about 30 minutes in.
	if first.Kind != "exfiltration" || first.Namespace != "shop" || first.Pod != "report-worker" || first.Time.Minute() < 25 || first.Time.Minute() > 35 || first.Time.Hour() != 10 {
		t.Fatalf("first alert: %+v", first)
	}
	withCooldown, _, _ := runDetect(t, "-o", "json", fa, fb)
	if n := strings.Count(withCooldown, "\n"); n >= len(lines) || n < 1 {
		t.Fatalf("cooldown: %d alerts, without: %d", n, len(lines))
	}

	// Low (any case) catches the same leak later, if at all.
	low, _, _ := runDetect(t, "-o", "json", "--sensitivity", "low", fa, fb)
	if low != "" {
		var a alert.Alert
		_ = json.Unmarshal([]byte(strings.SplitN(low, "\n", 2)[0]), &a)
		if !a.Time.After(first.Time) {
			t.Fatalf("Low alerted as early as Medium: %s", a.Time)
		}
	}

	_, errOut, err = runDetect(t, fa, filepath.Join(t.TempDir(), "missing.jsonl"))
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(errOut, "missing.jsonl: no such file or directory") {
		t.Fatalf("missing file: %v\n%s", err, errOut)
	}
	if _, _, err := runDetect(t, "--sensitivity", "Paranoid", fa); err == nil || err.Error() != `--sensitivity "Paranoid": one of Low, Medium, High` {
		t.Fatalf("bad sensitivity: %v", err)
	}
}
