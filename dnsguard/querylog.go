package dnsguard

import (
	"bufio"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// queryLog writes QueryEvents as JSON lines without ever blocking the
// query path. Answering goroutines encode their records themselves (in
// parallel) and hand them over in chunks, one per batch of answers, to
// one goroutine that writes them through a 64 KiB buffer. When more than
// limit records are queued, new ones are dropped and counted
// (kordon_dnsguard_querylog_dropped_total) rather than slowing DNS down.
type queryLog struct {
	ch      chan *logChunk
	done    chan struct{}
	w       io.Writer
	dropped func(n int)
	queued  atomic.Int64
	limit   int64
	once    sync.Once
	mu      sync.RWMutex // held for reading while sending, for writing by close
	closed  bool
	flushEv time.Duration
}

// logChunk is a run of encoded records.
type logChunk struct {
	b []byte
	n int
}

var chunkPool = sync.Pool{New: func() any { return &logChunk{b: make([]byte, 0, 4096)} }}

// maxPooledChunk bounds the chunk buffers kept for reuse.
const maxPooledChunk = 64 << 10

func newQueryLog(w io.Writer, limit int, dropped func(n int)) *queryLog {
	l := &queryLog{ch: make(chan *logChunk, limit), done: make(chan struct{}), w: w, dropped: dropped, limit: int64(limit), flushEv: 200 * time.Millisecond}
	go l.run()
	return l
}

// log queues one record.
func (l *queryLog) log(ev *QueryEvent) {
	c := chunkPool.Get().(*logChunk)
	c.b, c.n = appendEvent(c.b[:0], ev), 1
	l.send(c)
}

// logAll queues records in one chunk.
func (l *queryLog) logAll(evs []QueryEvent) {
	if len(evs) == 0 {
		return
	}
	c := chunkPool.Get().(*logChunk)
	c.b, c.n = c.b[:0], len(evs)
	for i := range evs {
		c.b = appendEvent(c.b, &evs[i])
	}
	l.send(c)
}

func (l *queryLog) send(c *logChunk) {
	n := int64(c.n)
	if l.queued.Add(n) > l.limit {
		l.queued.Add(-n)
		l.dropped(c.n)
		putChunk(c)
		return
	}
	l.mu.RLock()
	if l.closed {
		l.mu.RUnlock()
		l.queued.Add(-n)
		putChunk(c)
		return
	}
	select {
	case l.ch <- c:
	default: // cannot happen while queued <= limit = cap(ch); stay safe
		l.queued.Add(-n)
		l.dropped(c.n)
		putChunk(c)
	}
	l.mu.RUnlock()
}

func putChunk(c *logChunk) {
	if cap(c.b) <= maxPooledChunk {
		chunkPool.Put(c)
	}
}

func (l *queryLog) run() {
	defer close(l.done)
	bw := bufio.NewWriterSize(l.w, 64<<10)
	write := func(c *logChunk) {
		_, _ = bw.Write(c.b)
		l.queued.Add(-int64(c.n))
		putChunk(c)
	}
	t := time.NewTicker(l.flushEv)
	defer t.Stop()
	for {
		select {
		case c, ok := <-l.ch:
			if !ok {
				_ = bw.Flush()
				return
			}
			write(c)
			// Drain what is queued before flushing: one write per batch.
			for n := 0; n < 4096; n++ {
				select {
				case c, ok = <-l.ch:
					if !ok {
						_ = bw.Flush()
						return
					}
					write(c)
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

// close flushes everything queued and stops the writer. Records sent
// after close are discarded.
func (l *queryLog) close() {
	l.once.Do(func() {
		l.mu.Lock()
		l.closed = true
		close(l.ch)
		l.mu.Unlock()
		<-l.done
	})
}
