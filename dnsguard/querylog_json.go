package dnsguard

import (
	"math"
	"strconv"
	"time"
	"unicode/utf8"
)

// appendEvent encodes ev exactly as encoding/json would (same fields,
// order, omitempty and escaping) without reflection: the query log writes
// one per query, and reflection was a large share of a cache hit's cost.
// TestAppendEventMatchesEncodingJSON keeps the two in step.
func appendEvent(b []byte, ev *QueryEvent) []byte {
	b = append(b, `{"time":"`...)
	b = ev.Time.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","client":{"ip":`...)
	if ev.Client.IP.IsValid() {
		b = append(b, '"')
		b = ev.Client.IP.AppendTo(b)
		b = append(b, '"')
	} else {
		b = append(b, `""`...)
	}
	b = appendOptString(b, "namespace", ev.Client.Namespace)
	b = appendOptString(b, "pod", ev.Client.Pod)
	b = appendOptString(b, "serviceAccount", ev.Client.ServiceAccount)
	b = appendOptString(b, "spiffeId", ev.Client.SPIFFEID)
	b = appendOptString(b, "node", ev.Client.Node)
	b = append(b, `},"qname":`...)
	b = appendJSONString(b, ev.QName)
	b = append(b, `,"qtype":`...)
	b = appendJSONString(b, ev.QType)
	b = append(b, `,"rcode":`...)
	b = appendJSONString(b, ev.RCode)
	b = append(b, `,"verdict":`...)
	b = appendJSONString(b, string(ev.Verdict))
	b = appendOptString(b, "policy", ev.Policy)
	b = appendOptString(b, "upstream", ev.Upstream)
	if ev.Cached {
		b = append(b, `,"cached":true`...)
	}
	b = append(b, `,"latencySeconds":`...)
	b = appendJSONFloat(b, ev.Latency)
	if len(ev.Answers) > 0 {
		b = append(b, `,"answers":[`...)
		for i, a := range ev.Answers {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, '"')
			b = a.AppendTo(b)
			b = append(b, '"')
		}
		b = append(b, ']')
	}
	return append(b, "}\n"...)
}

func appendOptString(b []byte, key, v string) []byte {
	if v == "" {
		return b
	}
	b = append(b, ',', '"')
	b = append(b, key...)
	b = append(b, '"', ':')
	return appendJSONString(b, v)
}

const hexDigits = "0123456789abcdef"

// jsonSafe marks the bytes appendJSONString copies as they are.
var jsonSafe = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return t
}()

// appendJSONString quotes s as encoding/json does (HTML-safe escaping,
// invalid UTF-8 as U+FFFD).
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	// Most strings (names, pods, policies) need no escaping: copy the
	// safe prefix at once.
	i := 0
	for i < len(s) && jsonSafe[s[i]] {
		i++
	}
	b = append(b, s[:i]...)
	for i < len(s) {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c == '\t':
				b = append(b, '\\', 't')
			case c == '\b':
				b = append(b, '\\', 'b')
			case c == '\f':
				b = append(b, '\\', 'f')
			case c < 0x20 || c == '<' || c == '>' || c == '&':
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
		default:
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}

// appendJSONFloat formats like encoding/json's float64 encoder.
func appendJSONFloat(b []byte, f float64) []byte {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return append(b, '0')
	}
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// clean up e-09 to e-9
		n := len(b)
		if n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}
