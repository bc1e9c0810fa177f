package egress

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// Limits of one netlink batch. google/nftables v0.3.0 encodes all the
// elements of one SetAddElements call in one netlink attribute (whose
// length field is 16 bits): past about 64 KiB the kernel silently stores
// only part of the elements (measured: notes/egress-enforcement.md). So every call carries at most
// maxCallBytes of encoded elements, and one Flush at most maxFlushBytes
// (well under the socket buffers set in dial).
const (
	maxCallBytes  = 32 << 10
	maxFlushBytes = 1 << 20
	maxFlushMsgs  = 128
	sockBuf       = 8 << 20
)

// elemBytes estimates the encoded size of one element: nested headers for
// the element, key and key end, the keys, and the timeout attribute.
func elemBytes(e *nftables.SetElement) int {
	n := 4 + 8 + len(e.Key)
	if len(e.KeyEnd) > 0 {
		n += 8 + len(e.KeyEnd)
	}
	if e.Timeout > 0 {
		n += 12
	}
	if e.IntervalEnd {
		n += 8
	}
	return n
}

// Keys. Concatenated fields are padded to 4 bytes each, as the kernel
// lays them out in its 32-bit registers.

func keyPair(src, dst netip.Addr) []byte {
	b := make([]byte, 0, 32)
	b = append(b, src.AsSlice()...)
	return append(b, dst.AsSlice()...)
}

func protoNum(proto string) (byte, error) {
	switch proto {
	case "tcp":
		return unix.IPPROTO_TCP, nil
	case "udp":
		return unix.IPPROTO_UDP, nil
	case "sctp":
		return unix.IPPROTO_SCTP, nil
	}
	return 0, fmt.Errorf("egress: unknown protocol %q", proto)
}

func keyPort(src, dst netip.Addr, proto byte, port uint16) []byte {
	b := make([]byte, 0, 40)
	b = append(b, src.AsSlice()...)
	b = append(b, dst.AsSlice()...)
	b = append(b, proto, 0, 0, 0)
	return append(b, byte(port>>8), byte(port), 0, 0)
}

// prefixRange returns the first and last address of p.
func prefixRange(p netip.Prefix) (first, last netip.Addr) {
	p = p.Masked()
	first = p.Addr()
	b := first.AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	last, _ = netip.AddrFromSlice(b)
	return first, last
}

// op is a group of element changes to one set.
type op struct {
	set   *nftables.Set
	del   bool
	elems []nftables.SetElement
}

// batch collects element changes and sends them to the kernel in
// chunks: each SetAddElements/SetDeleteElements call carries at most
// maxCallBytes, each Flush at most maxFlushBytes and maxFlushMsgs
// messages (each is acknowledged). A batch that fits in one Flush is one
// netlink transaction. Changes go out grouped by set and direction, in the
// order each group first appeared.
type batch struct {
	ops []op
	// idx finds the op of a set and direction, so interleaved changes to
	// several sets still make one message per chunk, not per element.
	idx map[opKey]int
	n   int // elements
	// pendingStatic are the static sets' contents once the batch lands.
	pendingStatic map[string]map[string]nftables.SetElement
}

func (b *batch) add(s *nftables.Set, es ...nftables.SetElement) {
	b.push(s, false, es)
}

func (b *batch) del(s *nftables.Set, es ...nftables.SetElement) {
	b.push(s, true, es)
}

func (b *batch) push(s *nftables.Set, del bool, es []nftables.SetElement) {
	if len(es) == 0 {
		return
	}
	b.n += len(es)
	k := opKey{s.Name, del}
	if i, ok := b.idx[k]; ok {
		b.ops[i].elems = append(b.ops[i].elems, es...)
		return
	}
	if b.idx == nil {
		b.idx = map[opKey]int{}
	}
	b.idx[k] = len(b.ops)
	b.ops = append(b.ops, op{set: s, del: del, elems: es})
}

type opKey struct {
	set string
	del bool
}

func (b *batch) empty() bool { return b.n == 0 }

// send queues the batch on c and flushes; it returns the number of
// Flushes made.
func (b *batch) send(c *nftables.Conn) (int, error) {
	flushes := 0
	pending := false
	flushBytes, msgs := 0, 0
	flush := func() error {
		flushes++
		flushBytes, msgs = 0, 0
		pending = false
		return c.Flush()
	}
	for _, o := range b.ops {
		es := o.elems
		for len(es) > 0 {
			n, size := 0, 0
			for n < len(es) {
				sz := elemBytes(&es[n])
				// An interval-end element belongs to its start: keep
				// the pair in one call.
				if size+sz > maxCallBytes && n > 0 && !es[n].IntervalEnd {
					break
				}
				size += sz
				n++
			}
			if (flushBytes+size > maxFlushBytes || msgs >= maxFlushMsgs) && pending {
				if err := flush(); err != nil {
					return flushes, err
				}
			}
			var err error
			if o.del {
				err = c.SetDeleteElements(o.set, es[:n])
			} else {
				err = c.SetAddElements(o.set, es[:n])
			}
			if err != nil {
				return flushes, err
			}
			pending = true
			flushBytes += size
			msgs++
			es = es[n:]
		}
	}
	if pending {
		if err := flush(); err != nil {
			return flushes, err
		}
	}
	return flushes, nil
}

// timeoutOf bounds an element timeout: the kernel takes milliseconds, and
// zero would mean the set's default (none).
func timeoutOf(d time.Duration) time.Duration {
	if d < time.Millisecond {
		return time.Millisecond
	}
	return d
}
