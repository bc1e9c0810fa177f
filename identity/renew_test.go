package identity

import (
	"testing"
	"time"
)

// TestRenewTime: every SVID holder renews at half of the life counted
// from issue (NotBefore is backdated by 30 s for clock skew), and the
// Workload API's jittered wait never runs past that point nor under
// 90% of the time left.
func TestRenewTime(t *testing.T) {
	t.Parallel()
	issued := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name      string
		notBefore time.Time
		notAfter  time.Time
		want      time.Time
	}{
		{name: "one hour", notBefore: issued.Add(-backdate), notAfter: issued.Add(time.Hour), want: issued.Add(30 * time.Minute)},
		{name: "15 s", notBefore: issued.Add(-backdate), notAfter: issued.Add(15 * time.Second), want: issued.Add(7500 * time.Millisecond)},
		{name: "not backdated (shorter than the backdate)", notBefore: issued, notAfter: issued.Add(20 * time.Second), want: issued.Add(10 * time.Second)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := RenewTime(tc.notBefore, tc.notAfter); !got.Equal(tc.want) {
				t.Fatalf("RenewTime %v, want %v", got, tc.want)
			}
			api := &WorkloadAPI{cfg: WorkloadAPIConfig{Now: func() time.Time { return issued }}}
			left := tc.want.Sub(issued)
			for range 100 {
				if d := api.renewIn(tc.want); d > left || d < left*9/10 {
					t.Fatalf("renewIn %v, want within [%v, %v]", d, left*9/10, left)
				}
			}
		})
	}
}
