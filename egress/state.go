package egress

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/google/nftables"
)

// stateVersion is the StateFile format.
const stateVersion = 2

// stateFile is what StateFile holds. Elements and names are packed
// records (base64 in JSON): half a million of them load in well under a
// second, where one JSON object each took seconds.
type stateFile struct {
	Version int `json:"version"`
	// Sets: per timeout set, records of key + expiry (8 bytes, unix ms,
	// big endian).
	Sets []stateSet `json:"sets"`
	// Names: per client identity, records of address (16 bytes) + index
	// into Strings (4 bytes) + expiry (8 bytes, unix ms).
	Names      []stateNames `json:"names"`
	Quarantine []stateQuar  `json:"quarantine"`
	// Owners: address -> workload key at the last reconcile, so that an
	// address that changed hands while the agent was down loses its
	// learned grants.
	Owners map[netip.Addr]string `json:"owners,omitempty"`
}

type stateSet struct {
	Name    string `json:"name"`
	KeyLen  int    `json:"keyLen"`
	Records []byte `json:"records"`
}

type stateNames struct {
	ID      string   `json:"id"`
	Strings []string `json:"strings"`
	Records []byte   `json:"records"`
}

type stateQuar struct {
	Client netip.Addr `json:"client"`
	Dst    netip.Addr `json:"dst"`
}

const nameRec = 16 + 4 + 8

// saveState writes the state file (a temporary file renamed over it).
func (f *Firewall) saveState() error {
	if f.cfg.StateFile == "" {
		return nil
	}
	st := stateFile{Version: stateVersion, Owners: map[netip.Addr]string{}}
	f.mu.Lock()
	kNow, now := time.Now().UnixNano(), f.now().UnixNano()
	bySet := make([]stateSet, len(f.tsets))
	for i, t := range f.tsets {
		bySet[i] = stateSet{Name: t.s.Name, KeyLen: int(t.s.KeyType.Bytes)}
	}
	for k, exp := range f.elems {
		if exp > kNow {
			r := &bySet[k.set]
			r.Records = append(r.Records, f.keyOf(k)...)
			r.Records = binary.BigEndian.AppendUint64(r.Records, uint64(exp/int64(time.Millisecond)))
		}
	}
	for _, r := range bySet {
		if len(r.Records) > 0 {
			st.Sets = append(st.Sets, r)
		}
	}
	for id, m := range f.names {
		sn := stateNames{ID: id}
		idx := map[string]uint32{}
		for dst, e := range m {
			if e.expires <= now {
				continue
			}
			i, ok := idx[e.name]
			if !ok {
				i = uint32(len(sn.Strings))
				idx[e.name] = i
				sn.Strings = append(sn.Strings, e.name)
			}
			a := dst.As16()
			sn.Records = append(sn.Records, a[:]...)
			sn.Records = binary.BigEndian.AppendUint32(sn.Records, i)
			sn.Records = binary.BigEndian.AppendUint64(sn.Records, uint64(e.expires/int64(time.Millisecond)))
		}
		if len(sn.Records) > 0 {
			st.Names = append(st.Names, sn)
		}
	}
	for q := range f.quar {
		st.Quarantine = append(st.Quarantine, stateQuar{Client: q[0], Dst: q[1]})
	}
	for a, k := range f.owner {
		st.Owners[a] = k
	}
	f.dirty = false
	f.mu.Unlock()
	data, err := json.Marshal(&st)
	if err != nil {
		return fmt.Errorf("egress: state: %w", err)
	}
	dir := filepath.Dir(f.cfg.StateFile)
	tmp, err := os.CreateTemp(dir, filepath.Base(f.cfg.StateFile)+".tmp*")
	if err != nil {
		return fmt.Errorf("egress: state: %w", err)
	}
	_, werr := tmp.Write(data)
	if werr == nil {
		werr = tmp.Sync()
	}
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp.Name(), f.cfg.StateFile)
	}
	if werr != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("egress: state: %w", werr)
	}
	return nil
}

// loadState reads and checks a state file; nil, nil when there is none.
func loadState(path string) (*stateFile, error) {
	if path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("egress: state: %w", err)
	}
	var st stateFile
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("egress: state %s: %w", path, err)
	}
	if st.Version != stateVersion {
		return nil, fmt.Errorf("egress: state %s: version %d, want %d", path, st.Version, stateVersion)
	}
	for _, s := range st.Sets {
		if s.KeyLen <= 0 || len(s.Records)%(s.KeyLen+8) != 0 {
			return nil, fmt.Errorf("egress: state %s: set %s: bad records", path, s.Name)
		}
	}
	for _, n := range st.Names {
		if len(n.Records)%nameRec != 0 {
			return nil, fmt.Errorf("egress: state %s: names of %s: bad records", path, n.ID)
		}
	}
	return &st, nil
}

// restore applies a loaded state file: learned elements the kernel does
// not hold (a new table, e.g. after a reboot; with an adopted table they
// are still there and re-adding refreshes nothing) are added with their
// remaining time, names and quarantines come back into memory, and
// quarantines into the kernel.
func (f *Firewall) restore(st *stateFile) error {
	f.progMu.Lock()
	defer f.progMu.Unlock()
	f.mu.Lock()
	kNow, now := time.Now(), f.now().UnixNano()
	adopted := f.adopted
	var b batch
	type added struct {
		k   ekey
		exp int64
	}
	var adds []added
	for _, ss := range st.Sets {
		i, ok := f.tsetIndex(ss.Name)
		if !ok || int(f.tsets[i].s.KeyType.Bytes) != ss.KeyLen {
			continue // a set this version no longer has
		}
		s := f.tsets[i].s
		rl := ss.KeyLen + 8
		for off := 0; off+rl <= len(ss.Records); off += rl {
			key := ss.Records[off : off+ss.KeyLen]
			exp := time.UnixMilli(int64(binary.BigEndian.Uint64(ss.Records[off+ss.KeyLen:])))
			left := exp.Sub(kNow)
			if left < time.Second {
				continue
			}
			k := mkEkey(i, key)
			adds = append(adds, added{k, exp.UnixNano()})
			if !adopted {
				b.add(s, nftables.SetElement{Key: key, Timeout: left})
			}
		}
	}
	for _, n := range st.Names {
		m := f.names[n.ID]
		if m == nil {
			m = map[netip.Addr]nameEntry{}
			f.names[n.ID] = m
		}
		for off := 0; off+nameRec <= len(n.Records); off += nameRec {
			r := n.Records[off : off+nameRec]
			a := netip.AddrFrom16([16]byte(r[:16])).Unmap()
			si := binary.BigEndian.Uint32(r[16:])
			exp := int64(binary.BigEndian.Uint64(r[20:])) * int64(time.Millisecond)
			if exp <= now || int(si) >= len(n.Strings) {
				continue
			}
			if _, ok := m[a]; !ok {
				f.nNames++
			}
			m[a] = nameEntry{name: n.Strings[si], expires: exp}
		}
	}
	for _, q := range st.Quarantine {
		f.quar[[2]netip.Addr{q.Client, q.Dst}] = struct{}{}
	}
	for a, k := range st.Owners {
		f.owner[a] = k
	}
	want := desiredStatic(f.view.Load(), f.quar)
	f.diffStatic(&b, setQuar, func(fm *fam) map[string]nftables.SetElement {
		// Keep quarantine elements the kernel has beyond this process's
		// view (its view is empty until SetPolicies).
		w := want[setQuar+fm.suffix]
		for k, e := range f.static[setQuar+fm.suffix] {
			w[k] = e
		}
		return w
	})
	f.mu.Unlock()
	if !b.empty() {
		if _, err := b.send(f.conn); err != nil {
			f.m.errors.Inc()
			f.mu.Lock()
			f.rereadStatic()
			f.mu.Unlock()
			return fmt.Errorf("egress: restore: %w", err)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.commitStatic(&b)
	for _, a := range adds {
		if old, ok := f.elems[a.k]; !ok || old < a.exp {
			f.putElem(a.k, a.exp)
		}
	}
	f.updateGaugesLocked()
	return nil
}
