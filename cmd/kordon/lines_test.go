package main

import (
	"bytes"
	"testing"
)

// TestSharedLines: two writers sharing one output, each writing records in
// pieces, never interleave halves of lines.
func TestSharedLines(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	l := sharedLines(&out, 2)
	for _, w := range []struct {
		i int
		s string
	}{{0, "query "}, {1, "flow 1\nflow "}, {0, "1\nquery 2"}, {1, "2\n"}, {0, "\n"}} {
		if n, err := l[w.i].Write([]byte(w.s)); n != len(w.s) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", w.s, n, err)
		}
	}
	if got, want := out.String(), "flow 1\nquery 1\nflow 2\nquery 2\n"; got != want {
		t.Errorf("output %q, want %q", got, want)
	}
}
