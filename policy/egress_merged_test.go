package policy

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// TestMergedDecideEqualsLoop: with many selecting policies Decide uses
// merged sets; on random policies and names it must give exactly the
// decision of the policy-by-policy loop (verdict, policy and pattern).
func TestMergedDecideEqualsLoop(t *testing.T) {
	t.Parallel()
	labels := []string{"a", "b", "c"}
	domains := []string{"x.example", "y.x.example", "z.y.x.example", "example", "other.test", "q.other.test"}
	pattern := func(r *rand.Rand) string {
		d := domains[r.IntN(len(domains))]
		if r.IntN(2) == 0 && strings.Contains(d, ".") {
			return `"*.` + d + `"`
		}
		return d
	}
	list := func(r *rand.Rand) string {
		var ps []string
		for n := r.IntN(4); n > 0; n-- {
			ps = append(ps, pattern(r))
		}
		return "[" + strings.Join(ps, ", ") + "]"
	}
	for seed := uint64(0); seed < 40; seed++ {
		r := rand.New(rand.NewPCG(seed, 7))
		var docs []string
		for i := 0; i < 4+r.IntN(8); i++ {
			spec := "  selector: {matchLabels: {app: " + labels[r.IntN(len(labels))] + "}}\n"
			if r.IntN(3) == 0 {
				spec += "  mode: Audit\n"
			}
			if r.IntN(2) == 0 {
				spec += "  allow: " + list(r) + "\n"
			}
			if r.IntN(2) == 0 {
				spec += "  deny: " + list(r) + "\n"
			}
			docs = append(docs, ep("ns", fmt.Sprintf("p%d", i), spec))
		}
		ix := egressSet(t, docs...)
		for _, app := range labels {
			w := ix.ForWorkload("ns", map[string]string{"app": app})
			loop := *w
			loop.merged = nil
			if len(w.policies) >= mergedThreshold && w.merged == nil {
				t.Fatalf("seed %d: %d policies but no merged sets", seed, len(w.policies))
			}
			for _, d := range domains {
				for _, name := range []string{d, "w." + d, "v.w." + d} {
					if got, want := w.Decide(name), loop.Decide(name); got != want {
						t.Fatalf("seed %d app %s %s: merged %+v, loop %+v\n%s", seed, app, name, got, want, strings.Join(docs, "---\n"))
					}
				}
			}
		}
	}
}
