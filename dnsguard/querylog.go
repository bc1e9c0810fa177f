package dnsguard

import (
	"bufio"
	"io"
	"sync"
	"time"
)

// queryLog writes QueryEvents as JSON lines without ever blocking the
// query path: events go through a bounded channel to one goroutine that
// encodes and writes them in batches. When the writer falls behind, events
// are dropped and counted (kordon_dnsguard_querylog_dropped_total) rather
// than slowing DNS down.
type queryLog struct {
	ch      chan QueryEvent
	done    chan struct{}
	w       io.Writer
	dropped func()
	once    sync.Once
	flushEv time.Duration
}

func newQueryLog(w io.Writer, buffer int, dropped func()) *queryLog {
	l := &queryLog{ch: make(chan QueryEvent, buffer), done: make(chan struct{}), w: w, dropped: dropped, flushEv: 200 * time.Millisecond}
	go l.run()
	return l
}

func (l *queryLog) log(ev *QueryEvent) {
	select {
	case l.ch <- *ev:
	default:
		l.dropped()
	}
}

func (l *queryLog) run() {
	defer close(l.done)
	bw := bufio.NewWriterSize(l.w, 64<<10)
	var line []byte
	encode := func(ev *QueryEvent) {
		line = appendEvent(line[:0], ev)
		_, _ = bw.Write(line)
	}
	t := time.NewTicker(l.flushEv)
	defer t.Stop()
	for {
		select {
		case ev, ok := <-l.ch:
			if !ok {
				_ = bw.Flush()
				return
			}
			encode(&ev)
			// Drain what is queued before flushing: one write per batch.
			for n := 0; n < 4096; n++ {
				select {
				case ev, ok = <-l.ch:
					if !ok {
						_ = bw.Flush()
						return
					}
					encode(&ev)
					continue
				default:
				}
				break
			}
		case <-t.C:
			_ = bw.Flush()
		}
	}
}

// close flushes everything queued and stops the writer.
func (l *queryLog) close() {
	l.once.Do(func() {
		close(l.ch)
		<-l.done
	})
}
