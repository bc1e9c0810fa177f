package detect

import (
	"fmt"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// BenchmarkObserve feeds a mix of the detector's steady diet, one query
// per iteration: repeated host names, CDN hash hosts, UUID telemetry and
// reversed-address lookups from 20 workloads, none of which alerts (the
// detector's cost, not that of building detections).
func BenchmarkObserve(b *testing.B) {
	var qs []Query
	for i := 0; i < 100_000; i++ {
		client := fmt.Sprintf("shop/pod-%d", i%20)
		at := t0.Add(time.Duration(i) * 30 * time.Millisecond)
		var name string
		switch i % 4 {
		case 0:
			name = fmt.Sprintf("api%d.site%d.example.com.", i%7, i%300)
		case 1:
			name = fmt.Sprintf("%012x.cdn.site%d.example.net.", (i/4)%11*7919, i%50)
		case 2:
			name = fmt.Sprintf("%08x-%04x-4%03x-a%03x-%012x.events.telemetry.example.org.", i%300, i%300, i%300, i%300, i%300*7919)
		default:
			name = fmt.Sprintf("%d.%d.%d.%d.dnsbl.example.org.", (i/4)%100, (i/4)%100*7%256, (i/4)%100*13%256, 10)
		}
		qs = append(qs, Query{Time: at, Client: client, QName: name, QType: dns.TypeA})
	}
	d := New(Config{})
	for _, q := range qs {
		if d.Observe(q, Medium) != nil {
			b.Fatalf("detection on %s", q.QName)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		q := qs[i%len(qs)]
		q.Time = q.Time.Add(time.Duration(i/len(qs)) * time.Hour)
		d.Observe(q, Medium)
	}
}
