package detect

import (
	"hash/maphash"
	"math"
	"strings"
	"time"
)

// Low-and-slow exfiltration is measured as the information content of the
// new names a (client, domain) pair asks for over a sliding hour, not as
// raw characters: a hex character carries 4 bits, a base32 one 5, a
// base64 one 6, a raw byte 8, a word-like label about 2. The hour is 12
// slots of 5 minutes; names and labels are remembered for two half-hour
// generations, each capped, so the state of a pair is bounded.
const (
	slotDur       = 5 * time.Minute
	hourSlots     = 12
	genSlots      = 6    // slots per generation of the name and label sets
	maxHourNames  = 2048 // unique names remembered per generation
	maxHourLabels = 2048 // unique labels remembered per generation
	sharedSlots   = 1 << 16
	// minHourlyBits is the cap at Medium: 1 KiB of encoded data per hour.
	minHourlyBits = 8192.0
	// minHourlyNames: one or two long names are never a channel.
	minHourlyNames = 4
)

// hourly is a pair's sliding hour of information.
type hourly struct {
	slotAt int64 // index of the newest slot (time / slotDur)
	bits   [hourSlots]float64
	bytes  [hourSlots]int
	nnames [hourSlots]int
	genAt  int64 // generation index of names[0] and labels[0]
	names  [2]map[uint64]struct{}
	labels [2]map[uint64]struct{}
}

// remember adds k to the current generation of sets (allocated on first
// use: most pairs never ask for a subdomain), unless it is full.
func remember(sets *[2]map[uint64]struct{}, k uint64, max int) {
	if sets[0] == nil {
		sets[0] = map[uint64]struct{}{}
	}
	if len(sets[0]) < max {
		sets[0][k] = struct{}{}
	}
}

// advance moves the ring to now; records out of order stay in the newest slot.
func (h *hourly) advance(now time.Time) {
	idx := now.UnixNano() / int64(slotDur)
	switch {
	case h.slotAt == 0:
		h.slotAt = idx
	case idx > h.slotAt:
		for n := 0; h.slotAt < idx && n < hourSlots; n++ {
			h.slotAt++
			i := h.slotAt % hourSlots
			h.bits[i], h.bytes[i], h.nnames[i] = 0, 0, 0
		}
		h.slotAt = idx
	}
	gen := h.slotAt / genSlots
	switch {
	case h.genAt == 0:
		h.genAt = gen
	case gen == h.genAt+1:
		h.names = [2]map[uint64]struct{}{nil, h.names[0]}
		h.labels = [2]map[uint64]struct{}{nil, h.labels[0]}
		h.genAt = gen
	case gen > h.genAt:
		h.names = [2]map[uint64]struct{}{}
		h.labels = [2]map[uint64]struct{}{}
		h.genAt = gen
	}
}

func seen(sets *[2]map[uint64]struct{}, k uint64) bool {
	if _, ok := sets[0][k]; ok {
		return true
	}
	_, ok := sets[1][k]
	return ok
}

// newName reports whether the name is new this hour and remembers it.
// When the set is full every name counts as new: the detector errs
// towards counting information, never towards forgetting it.
func (h *hourly) newName(k uint64) bool {
	if seen(&h.names, k) {
		return false
	}
	remember(&h.names, k, maxHourNames)
	return true
}

// add records one new name's information in the current slot.
func (h *hourly) add(bits float64, rawBytes int) {
	i := h.slotAt % hourSlots
	h.bits[i] += bits
	h.bytes[i] += rawBytes
	h.nnames[i]++
}

// totals sums the last hour.
func (h *hourly) totals() (bits float64, rawBytes, names int) {
	for i := range h.bits {
		bits += h.bits[i]
		rawBytes += h.bytes[i]
		names += h.nnames[i]
	}
	return bits, rawBytes, names
}

// nameBits estimates the information in a new subdomain (original case,
// presentation form): the sum of its labels' information, where a label
// already seen this hour costs only a reference to it (log2 of the labels
// known), so fixed labels and repeated octets are not counted twice, but
// new combinations of known labels still are.
func (h *hourly) nameBits(seed maphash.Seed, origSub, sub string) float64 {
	known := float64(len(h.labels[0]) + len(h.labels[1]))
	var total float64
	for rest := 0; rest < len(origSub); {
		end := strings.IndexByte(origSub[rest:], '.')
		if end < 0 {
			end = len(origSub)
		} else {
			end += rest
		}
		// sub is origSub lower-cased, byte for byte.
		orig, lower := origSub[rest:end], sub[rest:end]
		rest = end + 1
		if orig == "" {
			continue
		}
		full := labelBits(unescape(orig))
		k := maphash.String(seed, lower)
		if seen(&h.labels, k) {
			total += math.Min(full, math.Log2(known+1))
			continue
		}
		remember(&h.labels, k, maxHourLabels)
		total += full
	}
	return total
}

// Bits per character of the encodings a label can be written in.
var (
	bitsDecimal = math.Log2(10)
	bitsLetters = math.Log2(26)
)

const (
	bitsWord   = 2.0 // word-like labels (host names, service names)
	bitsHex    = 4.0
	bitsBase32 = 5.0 // lower-case letters and digits (base32, base36)
	bitsBase64 = 6.0
	bitsRaw    = 8.0
)

// labelBits estimates the information in one label's bytes by the
// smallest alphabet that writes it. Hyphenated lower-case labels are
// measured piece by piece (session-<uuid>, ip-10-0-12-34), since encoders
// that use a hyphen (base64url) also use both cases.
func labelBits(s string) float64 {
	cc := countChars(s)
	lower, upper, digit, hyphen, under, other, high := cc.lower, cc.upper, cc.digit, cc.hyphen, cc.under, cc.other, cc.high
	n := float64(len(s))
	letters := lower + upper
	switch {
	case n == 0:
		return 0
	case high > 0:
		return n * bitsRaw
	case upper > 0 && lower > 0 && (digit > 0 || other > 0 || under > 0 || hyphen > 0 || len(s) >= 20):
		// Mixed case with digits or symbols: base64. Mixed case alone on
		// a short label is a 0x20-randomised word.
		return n * bitsBase64
	case other > 0:
		return n * bitsBase64
	case hyphen > 0 || under > 0:
		var sum float64
		start := 0
		for i := 0; i <= len(s); i++ {
			if i == len(s) || s[i] == '-' || s[i] == '_' {
				sum += labelBits(s[start:i])
				start = i + 1
			}
		}
		return sum + float64(hyphen+under)
	case digit == len(s):
		return n * bitsDecimal
	case digit > 0 && isHexFold(s):
		return n * bitsHex
	case digit > 0:
		return n * bitsBase32
	case letters >= 12 && entropyFold(s) >= 3.4, letters >= 6 && !wordLike(s):
		// Letter strings as random as an encoder's output.
		return n * bitsLetters
	}
	return n * bitsWord
}

// wordLike reports whether letters read like a word or an abbreviation
// made of words: at least one vowel in four letters and no run of more
// than three consonants. Random letters fail it two times in three at
// eight letters, and more often the longer they are.
func wordLike(s string) bool {
	vowels, run := 0, 0
	for i := 0; i < len(s); i++ {
		switch s[i] | 0x20 {
		case 'a', 'e', 'i', 'o', 'u', 'y':
			vowels++
			run = 0
		default:
			run++
			if run > 3 {
				return false
			}
		}
	}
	return 4*vowels >= len(s)
}

// sharedName is one slot of the detector's table of recent names, which
// tells a name reused by another workload or under another domain.
type sharedName struct {
	name  uint64 // hash of the subdomain (or of its left part)
	owner uint64 // hash of the (client, domain) pair that asked first
	at    int64  // unix seconds of the last use by the owner
}

// reused reports whether the subdomain was asked within the hour by
// another (client, domain) pair: the same address looked up under several
// DNSBL zones, a CDN host many pods resolve, a file hash the fleet checks.
// Such a name carries no secret of one workload to one domain. The first
// pair to ask is always counted in full, so sending every chunk twice
// evades nothing. Besides the whole subdomain, its left part without the
// last one or two labels is compared (1.2.3.4 of 1.2.3.4.zen and of
// 1.2.3.4.psbl), but only while those labels hold at most a third of its
// information, so data cannot hide to the right of a common label. The
// table is direct-mapped and fixed in size (a collision forgets the older
// name).
func (d *Detector) reused(sub string, owner uint64, now time.Time) bool {
	if sub == "" {
		return false
	}
	ts := now.Unix()
	const hour = int64(time.Hour / time.Second)
	// The whole subdomain, then without its last label or two.
	var keys [3]uint64
	keys[0] = maphash.String(d.seed, sub)
	n := 1
	// total is the information of all labels; tail[0] that of the last
	// label, tail[1] that of the one before it (each label measured once).
	total := 0.0
	var tail [2]float64
	for rest := sub; ; {
		l, r, more := strings.Cut(rest, ".")
		b := labelBits(l)
		total += b
		tail[0], tail[1] = b, tail[0]
		if !more {
			break
		}
		rest = r
	}
	stripped, left := 0.0, sub
	for k := 1; k <= 2; k++ {
		i := strings.LastIndexByte(left, '.')
		if i < 0 {
			break
		}
		stripped += tail[k-1]
		if stripped*3 > total {
			break
		}
		left = left[:i]
		keys[n] = maphash.String(d.seed, left)
		n++
	}
	found := false
	for _, h := range keys[:n] {
		s := &d.shared[h%sharedSlots]
		if s.name == h && s.owner != owner && ts-s.at < hour {
			found = true
			continue
		}
		*s = sharedName{name: h, owner: owner, at: ts}
	}
	return found
}
