package workload

import (
	"math/bits"
	"unsafe"
)

// trie is a persistent hash array mapped trie (HAMT, in the CHAMP layout):
// a map whose put and del return a new trie sharing every node off the
// changed path with the old one, which stays valid and unchanged. That is
// what lets the registry publish a new immutable index per event in
// O(log n) (a path of at most 14 nodes: 13 levels of 5 hash bits and a
// collision list; about 4 at 150,000 keys) instead of rebuilding it, while
// readers keep reading without locks.
//
// A node has 32 slots, chosen by 5 bits of the hash at its level: datamap
// marks those holding an entry, nodemap those holding a child, and each
// kind is packed in an array of its own. A child is held by value (its
// bitmaps and array pointers) in its parent's array, so a lookup reads one
// array element a level; arrays are held by a pointer to their first
// element, their length being the bitmap's popcount, so that copying a
// path (what a change allocates) stays small. Below the last level (hash
// bits exhausted) a node is a collision list: entries in no order,
// datamap their count.
//
// Callers pass the key's 64-bit hash with the key.
type trie[K comparable, V any] struct {
	root node[K, V]
	len  int
}

type node[K comparable, V any] struct {
	datamap, nodemap uint32
	entries          *tentry[K, V] // nil: none
	kids             *node[K, V]   // nil: none
}

type tentry[K comparable, V any] struct {
	hash uint64
	key  K
	val  V
}

const (
	trieBits  = 5
	trieMask  = 1<<trieBits - 1
	trieDepth = 64 // shift at which hash bits run out
)

func slot(h uint64, shift uint) uint32 { return 1 << ((h >> shift) & trieMask) }

// pos is the index in a packed array of the slot bit within bitmap.
func pos(bitmap, bit uint32) int { return bits.OnesCount32(bitmap & (bit - 1)) }

// mk is the node at shift with these arrays.
func mk[K comparable, V any](shift uint, datamap, nodemap uint32, ents []tentry[K, V], kids []node[K, V]) node[K, V] {
	n := node[K, V]{datamap: datamap, nodemap: nodemap}
	if shift >= trieDepth {
		n.datamap, n.nodemap = uint32(len(ents)), 0
	}
	if len(ents) > 0 {
		n.entries = &ents[0]
	}
	if len(kids) > 0 {
		n.kids = &kids[0]
	}
	return n
}

// ents is n's entry array; shift is n's level.
func (n node[K, V]) ents(shift uint) []tentry[K, V] {
	if n.entries == nil {
		return nil
	}
	l := n.datamap
	if shift < trieDepth {
		l = uint32(bits.OnesCount32(l))
	}
	return unsafe.Slice(n.entries, l)
}

func (n node[K, V]) kidArray() []node[K, V] {
	if n.kids == nil {
		return nil
	}
	return unsafe.Slice(n.kids, bits.OnesCount32(n.nodemap))
}

// get returns the value stored for k, whose hash is h.
func (t *trie[K, V]) get(h uint64, k K) (V, bool) {
	n := &t.root
	for shift := uint(0); ; shift += trieBits {
		if shift >= trieDepth {
			for _, e := range n.ents(shift) {
				if e.key == k {
					return e.val, true
				}
			}
			break
		}
		bit := slot(h, shift)
		if n.datamap&bit != 0 {
			e := (*tentry[K, V])(unsafe.Add(unsafe.Pointer(n.entries), uintptr(pos(n.datamap, bit))*unsafe.Sizeof(*n.entries)))
			if e.hash == h && e.key == k {
				return e.val, true
			}
			break
		}
		if n.nodemap&bit == 0 {
			break
		}
		n = (*node[K, V])(unsafe.Add(unsafe.Pointer(n.kids), uintptr(pos(n.nodemap, bit))*unsafe.Sizeof(*n.kids)))
	}
	var zero V
	return zero, false
}

// put returns t with k set to v.
func (t trie[K, V]) put(h uint64, k K, v V) trie[K, V] {
	root, added := t.root.put(0, tentry[K, V]{hash: h, key: k, val: v})
	t.root = root
	if added {
		t.len++
	}
	return t
}

// del returns t without k.
func (t trie[K, V]) del(h uint64, k K) trie[K, V] {
	root, removed := t.root.del(0, h, k)
	if removed {
		t.root = root
		t.len--
	}
	return t
}

// each calls f for every entry, in no particular order.
func (t *trie[K, V]) each(f func(K, V)) { t.root.each(0, f) }

func (n node[K, V]) each(shift uint, f func(K, V)) {
	for _, e := range n.ents(shift) {
		f(e.key, e.val)
	}
	for _, c := range n.kidArray() {
		c.each(shift+trieBits, f)
	}
}

func (n node[K, V]) put(shift uint, e tentry[K, V]) (node[K, V], bool) {
	ents, kids := n.ents(shift), n.kidArray()
	if shift >= trieDepth {
		for i := range ents {
			if ents[i].key == e.key {
				return mk(shift, 0, 0, replace(ents, i, e), nil), false
			}
		}
		return mk(shift, 0, 0, insert(ents, len(ents), e), nil), true
	}
	bit := slot(e.hash, shift)
	switch {
	case n.datamap&bit != 0:
		i := pos(n.datamap, bit)
		if old := ents[i]; old.hash == e.hash && old.key == e.key {
			return mk(shift, n.datamap, n.nodemap, replace(ents, i, e), kids), false
		}
		// Two keys in one slot: push both one level down.
		sub := pair(shift+trieBits, ents[i], e)
		return mk(shift, n.datamap&^bit, n.nodemap|bit, remove(ents, i), insert(kids, pos(n.nodemap|bit, bit), sub)), true
	case n.nodemap&bit != 0:
		i := pos(n.nodemap, bit)
		sub, added := kids[i].put(shift+trieBits, e)
		return mk(shift, n.datamap, n.nodemap, ents, replace(kids, i, sub)), added
	default:
		return mk(shift, n.datamap|bit, n.nodemap, insert(ents, pos(n.datamap|bit, bit), e), kids), true
	}
}

// pair is the node at shift holding a and b, two different keys.
func pair[K comparable, V any](shift uint, a, b tentry[K, V]) node[K, V] {
	if shift >= trieDepth {
		return mk[K, V](shift, 0, 0, []tentry[K, V]{a, b}, nil)
	}
	ba, bb := slot(a.hash, shift), slot(b.hash, shift)
	if ba == bb {
		return mk(shift, 0, ba, nil, []node[K, V]{pair(shift+trieBits, a, b)})
	}
	if ba > bb {
		a, b = b, a
	}
	return mk[K, V](shift, ba|bb, 0, []tentry[K, V]{a, b}, nil)
}

// del returns n without k and whether k was there. A child left with one
// entry and no children is folded into its parent, so the trie stays as
// shallow as its keys need and no child is ever empty.
func (n node[K, V]) del(shift uint, h uint64, k K) (node[K, V], bool) {
	ents, kids := n.ents(shift), n.kidArray()
	if shift >= trieDepth {
		for i := range ents {
			if ents[i].key == k {
				return mk(shift, 0, 0, remove(ents, i), nil), true
			}
		}
		return n, false
	}
	bit := slot(h, shift)
	switch {
	case n.datamap&bit != 0:
		i := pos(n.datamap, bit)
		if e := ents[i]; e.hash != h || e.key != k {
			return n, false
		}
		return mk(shift, n.datamap&^bit, n.nodemap, remove(ents, i), kids), true
	case n.nodemap&bit != 0:
		i := pos(n.nodemap, bit)
		sub, removed := kids[i].del(shift+trieBits, h, k)
		if !removed {
			return n, false
		}
		if sub.kids == nil {
			if se := sub.ents(shift + trieBits); len(se) <= 1 {
				// Fold the lone entry (if any) into this level's slot.
				ents2 := ents
				dm := n.datamap
				if len(se) == 1 {
					dm |= bit
					ents2 = insert(ents, pos(dm, bit), se[0])
				}
				return mk(shift, dm, n.nodemap&^bit, ents2, remove(kids, i)), true
			}
		}
		return mk(shift, n.datamap, n.nodemap, ents, replace(kids, i, sub)), true
	}
	return n, false
}

// replace returns a new slice: s with v at i.
func replace[T any](s []T, i int, v T) []T {
	out := make([]T, len(s))
	copy(out, s)
	out[i] = v
	return out
}

// insert returns a new slice: s with v inserted at i.
func insert[T any](s []T, i int, v T) []T {
	out := make([]T, len(s)+1)
	copy(out, s[:i])
	out[i] = v
	copy(out[i+1:], s[i:])
	return out
}

// remove returns a new slice: s without its element i (nil when empty).
func remove[T any](s []T, i int) []T {
	if len(s) == 1 {
		return nil
	}
	out := make([]T, len(s)-1)
	copy(out, s[:i])
	copy(out[i:], s[i+1:])
	return out
}

// diff calls f for every key whose value differs between a and b (both
// tries of one hasher): hasOld/hasNew say whether the key is in a/b. eq
// decides whether two values of one key are the same. Subtrees the two
// tries share (everything off the paths changed between them) are
// skipped by pointer, so the cost follows the number of changes, not the
// size of the tries.
func diff[K comparable, V any](a, b *trie[K, V], eq func(V, V) bool, f func(k K, old V, hasOld bool, nu V, hasNew bool)) {
	a.root.diff(&b.root, 0, eq, f)
}

func (n *node[K, V]) same(o *node[K, V]) bool {
	return n.datamap == o.datamap && n.nodemap == o.nodemap && n.entries == o.entries && n.kids == o.kids
}

func (n *node[K, V]) diff(o *node[K, V], shift uint, eq func(V, V) bool, f func(K, V, bool, V, bool)) {
	if n.same(o) {
		return
	}
	var zero V
	if shift >= trieDepth {
		ae, be := n.ents(shift), o.ents(shift)
		for _, x := range ae {
			found := false
			for _, y := range be {
				if x.key == y.key {
					found = true
					if !eq(x.val, y.val) {
						f(x.key, x.val, true, y.val, true)
					}
				}
			}
			if !found {
				f(x.key, x.val, true, zero, false)
			}
		}
		for _, y := range be {
			if !slicesContainKey(ae, y.key) {
				f(y.key, zero, false, y.val, true)
			}
		}
		return
	}
	aents, akids, bents, bkids := n.ents(shift), n.kidArray(), o.ents(shift), o.kidArray()
	for i := range uint(32) {
		bit := uint32(1) << i
		switch {
		case n.datamap&bit != 0 && o.datamap&bit != 0:
			x, y := aents[pos(n.datamap, bit)], bents[pos(o.datamap, bit)]
			if x.key == y.key {
				if !eq(x.val, y.val) {
					f(x.key, x.val, true, y.val, true)
				}
				continue
			}
			f(x.key, x.val, true, zero, false)
			f(y.key, zero, false, y.val, true)
		case n.datamap&bit != 0 && o.nodemap&bit != 0:
			// An entry that became a subtree (another key joined its slot).
			entryVsTree(aents[pos(n.datamap, bit)], &bkids[pos(o.nodemap, bit)], shift+trieBits, true, eq, f)
		case n.nodemap&bit != 0 && o.datamap&bit != 0:
			entryVsTree(bents[pos(o.datamap, bit)], &akids[pos(n.nodemap, bit)], shift+trieBits, false, eq, f)
		case n.nodemap&bit != 0 && o.nodemap&bit != 0:
			akids[pos(n.nodemap, bit)].diff(&bkids[pos(o.nodemap, bit)], shift+trieBits, eq, f)
		case n.datamap&bit != 0:
			x := aents[pos(n.datamap, bit)]
			f(x.key, x.val, true, zero, false)
		case n.nodemap&bit != 0:
			akids[pos(n.nodemap, bit)].each(shift+trieBits, func(k K, v V) { f(k, v, true, zero, false) })
		case o.datamap&bit != 0:
			y := bents[pos(o.datamap, bit)]
			f(y.key, zero, false, y.val, true)
		case o.nodemap&bit != 0:
			bkids[pos(o.nodemap, bit)].each(shift+trieBits, func(k K, v V) { f(k, zero, false, v, true) })
		}
	}
}

// entryVsTree diffs a slot that holds entry x on one side and subtree sub
// (at shift) on the other; xOld says x is on the old side.
func entryVsTree[K comparable, V any](x tentry[K, V], sub *node[K, V], shift uint, xOld bool, eq func(V, V) bool, f func(K, V, bool, V, bool)) {
	var zero V
	// pair reports key k, with a the value on x's side and b the other.
	pair := func(k K, a V, hasA bool, b V, hasB bool) {
		if xOld {
			f(k, a, hasA, b, hasB)
		} else {
			f(k, b, hasB, a, hasA)
		}
	}
	found := false
	sub.each(shift, func(k K, v V) {
		if k != x.key {
			pair(k, zero, false, v, true)
			return
		}
		found = true
		if (xOld && !eq(x.val, v)) || (!xOld && !eq(v, x.val)) {
			pair(k, x.val, true, v, true)
		}
	})
	if !found {
		pair(x.key, x.val, true, zero, false)
	}
}

func slicesContainKey[K comparable, V any](es []tentry[K, V], k K) bool {
	for _, e := range es {
		if e.key == k {
			return true
		}
	}
	return false
}
