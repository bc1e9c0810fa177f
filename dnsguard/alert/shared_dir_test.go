package alert

import (
	"context"
	"fmt"
	"sync"
	"testing"
)

// TestTwoFeedsShareADir: the old and the new node agent share the state
// directory during a rolling update. Publishing from both at once (and
// rotating) gives one series of unique IDs, each feed lists the other's
// alerts written before its own, and a later feed recovers all of them.
func TestTwoFeedsShareADir(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	open := func() *Feed {
		f, err := NewFeed(Config{Dir: dir, SegmentBytes: 2048, MaxSegments: 1000, Cooldown: -1})
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	oldF, newF := open(), open()
	const each = 200
	var wg sync.WaitGroup
	for w, f := range []*Feed{oldF, newF} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				if _, ok, err := f.Publish(context.Background(), Alert{Kind: KindExfiltration, Namespace: "shop", Pod: fmt.Sprintf("w%d", w), Domain: fmt.Sprintf("d%d.example", i)}); err != nil || !ok {
					t.Errorf("writer %d publish %d: %v %v", w, i, ok, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := oldF.Close(); err != nil {
		t.Fatal(err)
	}
	if err := newF.Close(); err != nil {
		t.Fatal(err)
	}
	later := open()
	defer later.Close()
	all := later.List(Filter{})
	if len(all) != 2*each {
		t.Fatalf("recovered %d alerts, want %d", len(all), 2*each)
	}
	for i, a := range all {
		if a.ID != uint64(i+1) {
			t.Fatalf("alert %d has ID %d: IDs repeat or skip across the two writers", i, a.ID)
		}
	}
}
