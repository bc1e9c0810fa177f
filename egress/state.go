package egress

import (
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
const stateVersion = 1

type stateFile struct {
	Version    int         `json:"version"`
	Elements   []stateElem `json:"elements"`
	Names      []stateName `json:"names"`
	Quarantine []stateQuar `json:"quarantine"`
}

// stateElem is one learned kernel element (a timeout set's).
type stateElem struct {
	Set     string     `json:"set"`
	Key     []byte     `json:"key"`
	KeyEnd  []byte     `json:"keyEnd,omitempty"`
	Src     netip.Addr `json:"src"`
	Expires time.Time  `json:"expires"`
}

type stateName struct {
	ID      string     `json:"id"`
	Dst     netip.Addr `json:"dst"`
	Name    string     `json:"name"`
	Expires time.Time  `json:"expires"`
}

type stateQuar struct {
	Client netip.Addr `json:"client"`
	Dst    netip.Addr `json:"dst"`
}

// saveState writes the state file (a temporary file renamed over it).
func (f *Firewall) saveState() error {
	if f.cfg.StateFile == "" {
		return nil
	}
	st := stateFile{Version: stateVersion}
	f.mu.Lock()
	kNow, now := time.Now(), f.now()
	for k, e := range f.elems {
		if e.expires.After(kNow) {
			st.Elements = append(st.Elements, stateElem{Set: k.set, Key: []byte(k.key), KeyEnd: e.keyEnd, Src: e.src, Expires: e.expires})
		}
	}
	for id, m := range f.names {
		for dst, e := range m {
			if e.expires.After(now) {
				st.Names = append(st.Names, stateName{ID: id, Dst: dst, Name: e.name, Expires: e.expires})
			}
		}
	}
	for q := range f.quar {
		st.Quarantine = append(st.Quarantine, stateQuar{Client: q[0], Dst: q[1]})
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

// restore loads the state file: learned elements the kernel lost (a new
// table, e.g. after a reboot) are re-added with their remaining time,
// names and quarantines come back into memory, and quarantines into the
// kernel.
func (f *Firewall) restore() error {
	if f.cfg.StateFile == "" {
		return nil
	}
	data, err := os.ReadFile(f.cfg.StateFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("egress: state: %w", err)
	}
	var st stateFile
	if err := json.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("egress: state %s: %w", f.cfg.StateFile, err)
	}
	if st.Version != stateVersion {
		return fmt.Errorf("egress: state %s: version %d, want %d", f.cfg.StateFile, st.Version, stateVersion)
	}
	f.progMu.Lock()
	defer f.progMu.Unlock()
	f.mu.Lock()
	kNow, now := time.Now(), f.now()
	var b batch
	var added []stateElem
	for _, e := range st.Elements {
		s := f.sets[e.Set]
		left := e.Expires.Sub(kNow)
		if s == nil || !s.HasTimeout || left < time.Second {
			continue
		}
		k := ekey{e.Set, string(e.Key)}
		if old, ok := f.elems[k]; ok && !old.expires.Before(e.Expires) {
			continue
		}
		b.add(s, nftables.SetElement{Key: e.Key, KeyEnd: e.KeyEnd, Timeout: left})
		added = append(added, e)
	}
	for _, n := range st.Names {
		if n.Expires.After(now) {
			m := f.names[n.ID]
			if m == nil {
				m = map[netip.Addr]nameEntry{}
				f.names[n.ID] = m
			}
			if _, ok := m[n.Dst]; !ok {
				f.nNames++
			}
			m[n.Dst] = nameEntry{name: n.Name, expires: n.Expires}
		}
	}
	for _, q := range st.Quarantine {
		f.quar[[2]netip.Addr{q.Client, q.Dst}] = struct{}{}
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
	if b.empty() {
		return nil
	}
	if _, err := b.send(f.conn); err != nil {
		f.m.errors.Inc()
		f.mu.Lock()
		f.rereadStatic()
		f.mu.Unlock()
		return fmt.Errorf("egress: restore: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.commitStatic(&b)
	for _, e := range added {
		f.elems[ekey{e.Set, string(e.Key)}] = eval{keyEnd: e.KeyEnd, expires: e.Expires, src: e.Src}
	}
	f.updateGaugesLocked()
	return nil
}
