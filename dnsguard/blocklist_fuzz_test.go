package dnsguard

import (
	"strings"
	"testing"

	"github.com/kordon-dev/kordon/policy"
)

// FuzzParseBlocklist checks the blocklist reader: errors name a line, the
// stats add up, and the list is the union of its lines: every name a line
// blocks on its own is blocked by the whole list, subtree entries block
// their subdomains, and a list never blocks a name no line blocks.
func FuzzParseBlocklist(f *testing.F) {
	for _, s := range []string{
		"# hosts\n0.0.0.0 ads.example.com\n127.0.0.1 a.example b.example # two\n::1 localhost\n",
		"ads.example.com\n*.tracker.example\n||adblock.example^\n! comment\n",
		"||example.com^$third-party\n0.0.0.0\n",
		"BÜCHER.example\nxn--bcher-kva.example.\n",
		"a..b\n" + strings.Repeat("a", 70) + ".example\n",
		"255.255.255.255 broadcasthost\n0.0.0.0 0.0.0.0\nfe80::1%lo0 local\n",
		"\r\n\t\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data string) {
		b, st, err := ParseBlocklist(strings.NewReader(data))
		if err != nil {
			if b != nil {
				t.Fatal("error with a non-nil list")
			}
			if !strings.HasPrefix(err.Error(), "line ") {
				t.Fatalf("error without a line: %v", err)
			}
			return
		}
		if st.Exact+st.Subtree != b.Len() {
			t.Fatalf("stats %+v, Len %d", st, b.Len())
		}
		skipped := 0
		for _, line := range strings.Split(data, "\n") {
			one, ost, err := ParseBlocklist(strings.NewReader(line))
			if err != nil {
				t.Fatalf("line %q fails alone: %v", line, err)
			}
			skipped += ost.Skipped
			for _, name := range strings.Fields(line) {
				n, err := policy.NormalizeDomain(strings.TrimPrefix(strings.TrimSuffix(strings.TrimPrefix(name, "||"), "^"), "*."))
				if err != nil {
					continue
				}
				blockedAlone, _ := one.Match(n)
				blocked, _ := b.Match(n)
				if blockedAlone != "" && blocked == "" {
					t.Fatalf("line %q blocks %s alone but not in the list", line, n)
				}
				if blocked == "" {
					continue
				}
				if blocked != n && !strings.HasSuffix(n, "."+blocked) {
					t.Fatalf("%s blocked by %s, which is not it or an ancestor", n, blocked)
				}
				if ost.Subtree > 0 && blockedAlone != "" {
					if m, ok := b.Match("sub." + n); !ok || !strings.HasSuffix("sub."+n, m) {
						t.Fatalf("subtree entry %s does not block sub.%s", n, n)
					}
				}
			}
		}
		if skipped != st.Skipped {
			t.Fatalf("skipped %d line by line, %d at once", skipped, st.Skipped)
		}
		if _, ok := b.Match("kordon-fuzz-unlisted.invalid"); ok && !strings.Contains(data, "invalid") {
			t.Fatal("an unlisted name is blocked")
		}
	})
}

func TestParseBlocklistLongLineNamesIt(t *testing.T) {
	t.Parallel()
	in := "ads.example.com\n" + strings.Repeat("a", 1<<20+1) + "\n"
	_, _, err := ParseBlocklist(strings.NewReader(in))
	if want := "line 2: bufio.Scanner: token too long"; err == nil || err.Error() != want {
		t.Fatalf("got %v, want %s", err, want)
	}
}
