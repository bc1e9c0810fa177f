package dnsguard

import (
	"bufio"
	"fmt"
	"hash/maphash"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/kordon-dev/kordon/policy"
)

// Blocklist is a mesh-wide deny list loaded from the list formats people
// already use:
//
//   - hosts files ("0.0.0.0 ads.example.com", "127.0.0.1 a b"): each name
//     is blocked exactly;
//   - plain domain lists ("ads.example.com"), "*.example.com" and
//     Adblock-style "||example.com^": the domain and every name below it.
//
// Comments start with '#' or '!'. Memory stays small for millions of
// entries: names are kept only as sorted 64-bit hashes (8 bytes each), so
// 1,000,000 entries cost about 8-16 MB. A hash collision could block an
// unlisted name with probability ~n/2^64 per lookup (about 5e-14 for a
// million entries); matched names are reported by hash position, and the
// list never allows anything.
type Blocklist struct {
	seed    maphash.Seed
	exact   []uint64 // sorted hashes of exactly-blocked names
	subtree []uint64 // sorted hashes of names blocked with their subdomains
	sources []string
}

// BlocklistStats describes a loaded list.
type BlocklistStats struct {
	Exact, Subtree, Skipped int
}

// LoadBlocklist reads the files into one Blocklist.
func LoadBlocklist(paths ...string) (*Blocklist, BlocklistStats, error) {
	b := &Blocklist{seed: maphash.MakeSeed()}
	var st BlocklistStats
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, st, fmt.Errorf("dnsguard: blocklist: %w", err)
		}
		err = b.read(f, &st)
		f.Close()
		if err != nil {
			return nil, st, fmt.Errorf("dnsguard: blocklist %s: %w", p, err)
		}
		b.sources = append(b.sources, p)
	}
	b.finish()
	st.Exact, st.Subtree = len(b.exact), len(b.subtree)
	return b, st, nil
}

// ParseBlocklist reads one list from r (for tests and embedding).
func ParseBlocklist(r io.Reader) (*Blocklist, BlocklistStats, error) {
	b := &Blocklist{seed: maphash.MakeSeed()}
	var st BlocklistStats
	if err := b.read(r, &st); err != nil {
		return nil, st, err
	}
	b.finish()
	st.Exact, st.Subtree = len(b.exact), len(b.subtree)
	return b, st, nil
}

func (b *Blocklist) read(r io.Reader, st *BlocklistStats) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	lineNo := 0
	for sc.Scan() {
		lineNo++
		line := sc.Text()
		if i := strings.IndexAny(line, "#!"); i >= 0 {
			line = line[:i]
		}
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if len(fields) >= 2 && looksLikeIP(fields[0]) {
			for _, name := range fields[1:] {
				n, err := policy.NormalizeDomain(name)
				if err != nil || n == "localhost" || n == "localhost.localdomain" || n == "local" || n == "broadcasthost" {
					st.Skipped++
					continue
				}
				b.exact = append(b.exact, maphash.String(b.seed, n))
			}
			continue
		}
		entry := fields[0]
		entry = strings.TrimPrefix(entry, "||")
		entry = strings.TrimSuffix(entry, "^")
		entry = strings.TrimPrefix(entry, "*.")
		n, err := policy.NormalizeDomain(entry)
		if err != nil {
			st.Skipped++
			continue
		}
		b.subtree = append(b.subtree, maphash.String(b.seed, n))
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("line %d: %w", lineNo+1, err)
	}
	return nil
}

func looksLikeIP(s string) bool {
	return strings.Count(s, ".") == 3 && strings.Trim(s, "0123456789.") == "" || strings.Contains(s, ":")
}

func (b *Blocklist) finish() {
	slices.Sort(b.exact)
	b.exact = slices.Compact(b.exact)
	slices.Sort(b.subtree)
	b.subtree = slices.Compact(b.subtree)
	b.exact = slices.Clip(b.exact)
	b.subtree = slices.Clip(b.subtree)
}

// Len is the number of distinct entries.
func (b *Blocklist) Len() int { return len(b.exact) + len(b.subtree) }

// Match reports whether a normalized name is blocked, and the listed
// entry that blocks it (the name or its blocked ancestor).
func (b *Blocklist) Match(name string) (string, bool) {
	if b == nil || b.Len() == 0 {
		return "", false // also the zero Blocklist, whose seed cannot hash
	}
	if _, ok := slices.BinarySearch(b.exact, maphash.String(b.seed, name)); ok {
		return name, true
	}
	if len(b.subtree) == 0 {
		return "", false
	}
	suffix := name
	for {
		if _, ok := slices.BinarySearch(b.subtree, maphash.String(b.seed, suffix)); ok {
			return suffix, true
		}
		i := strings.IndexByte(suffix, '.')
		if i < 0 {
			return "", false
		}
		suffix = suffix[i+1:]
	}
}
