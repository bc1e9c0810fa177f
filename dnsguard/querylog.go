package dnsguard

import (
	"bufio"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// queryLog writes QueryEvents without ever blocking the query path: as
// JSON lines (the query log) or as dnstap frames. Answering goroutines
// encode their records themselves (in parallel, with encode) and hand
// them over in chunks, one per batch of answers, to one goroutine that
// writes them to a chunkSink. When more than limit records are queued,
// new ones are dropped and counted (kordon_dnsguard_querylog_dropped_total,
// kordon_dnsguard_dnstap_dropped_total) rather than slowing DNS down.
type queryLog struct {
	ch      chan *logChunk
	done    chan struct{}
	sink    chunkSink
	encode  func(b []byte, ev *QueryEvent) []byte
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

// chunkSink is where queryLog's writer goroutine puts chunks; it is
// called from that goroutine only.
type chunkSink interface {
	// write takes a chunk's records (b, n of them); it keeps nothing of b.
	write(b []byte, n int)
	// flush pushes out what write buffered (every 200 ms); close flushes
	// and releases the sink.
	flush()
	close()
}

// jsonSink writes JSON lines through a 64 KiB buffer.
type jsonSink struct{ bw *bufio.Writer }

func (j jsonSink) write(b []byte, _ int) { _, _ = j.bw.Write(b) }
func (j jsonSink) flush()                { _ = j.bw.Flush() }
func (j jsonSink) close()                { _ = j.bw.Flush() }

func newQueryLog(w io.Writer, limit int, dropped func(n int)) *queryLog {
	return newChunkLog(jsonSink{bufio.NewWriterSize(w, 64<<10)}, appendEvent, limit, dropped)
}

func newChunkLog(sink chunkSink, encode func([]byte, *QueryEvent) []byte, limit int, dropped func(n int)) *queryLog {
	l := &queryLog{ch: make(chan *logChunk, limit), done: make(chan struct{}), sink: sink, encode: encode, dropped: dropped, limit: int64(limit), flushEv: 200 * time.Millisecond}
	go l.run()
	return l
}

// log queues one record.
func (l *queryLog) log(ev *QueryEvent) {
	c := chunkPool.Get().(*logChunk)
	c.b, c.n = l.encode(c.b[:0], ev), 1
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
		c.b = l.encode(c.b, &evs[i])
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
	write := func(c *logChunk) {
		l.sink.write(c.b, c.n)
		l.queued.Add(-int64(c.n))
		putChunk(c)
	}
	t := time.NewTicker(l.flushEv)
	defer t.Stop()
	for {
		select {
		case c, ok := <-l.ch:
			if !ok {
				l.sink.close()
				return
			}
			write(c)
			// Drain what is queued before flushing: one write per batch.
			for n := 0; n < 4096; n++ {
				select {
				case c, ok = <-l.ch:
					if !ok {
						l.sink.close()
						return
					}
					write(c)
					continue
				default:
				}
				break
			}
		case <-t.C:
			l.sink.flush()
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
