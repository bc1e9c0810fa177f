package flowlog

import (
	"encoding/json"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
)

// recordWriter writes records as JSON lines without ever blocking the
// event loop, in the query log's manner: the loop encodes the records of
// one batch of kernel messages into one chunk and hands it over; one
// goroutine writes what is queued, taking no more chunks into a write once
// it holds 64 KiB. When more than limit records wait, new ones are dropped
// and counted.
type recordWriter struct {
	w      io.Writer
	ch     chan *chunk
	done   chan struct{}
	queued atomic.Int64
	limit  int64
	m      *metrics
	log    *slog.Logger

	mu     sync.RWMutex // held for reading while sending, for writing by close
	closed bool
	once   sync.Once
}

// chunk is a run of encoded records.
type chunk struct {
	b []byte
	n int
}

// add encodes one record into c.
func (c *chunk) add(r *Record) {
	b, err := json.Marshal(r)
	if err != nil { // cannot happen: every field marshals
		return
	}
	c.b = append(append(c.b, b...), '\n')
	c.n++
}

// writeBatch is the most a single Write carries.
const writeBatch = 64 << 10

func newRecordWriter(w io.Writer, limit int, m *metrics, log *slog.Logger) *recordWriter {
	rw := &recordWriter{w: w, ch: make(chan *chunk, limit), done: make(chan struct{}), limit: int64(limit), m: m, log: log}
	go rw.run()
	return rw
}

// send queues c, or drops it (counted) when the queue is full. It never
// blocks.
func (rw *recordWriter) send(c *chunk) {
	if c.n == 0 {
		return
	}
	n := int64(c.n)
	if rw.queued.Add(n) > rw.limit {
		rw.queued.Add(-n)
		rw.m.dropped.Add(float64(c.n))
		return
	}
	rw.mu.RLock()
	defer rw.mu.RUnlock()
	if rw.closed {
		rw.queued.Add(-n)
		rw.m.dropped.Add(float64(c.n))
		return
	}
	select {
	case rw.ch <- c:
	default: // cannot happen while queued <= limit = cap(ch)
		rw.queued.Add(-n)
		rw.m.dropped.Add(float64(c.n))
	}
}

func (rw *recordWriter) run() {
	defer close(rw.done)
	var buf []byte
	records := 0
	failing := false
	flush := func() {
		if len(buf) == 0 {
			return
		}
		if _, err := rw.w.Write(buf); err != nil {
			rw.m.dropped.Add(float64(records))
			if !failing { // log a failing writer once, not per batch
				rw.log.Warn("flow log write failed", "error", err)
			}
			failing = true
		} else {
			rw.m.records.Add(float64(records))
			failing = false
		}
		rw.queued.Add(-int64(records))
		buf, records = buf[:0], 0
	}
	for c := range rw.ch {
		buf, records = append(buf, c.b...), records+c.n
		// Drain what is queued before writing: one write per batch.
	drain:
		for len(buf) < writeBatch {
			select {
			case c, ok := <-rw.ch:
				if !ok {
					break drain
				}
				buf, records = append(buf, c.b...), records+c.n
			default:
				break drain
			}
		}
		flush()
	}
	flush()
}

// close writes everything queued and stops the writer; later records are
// dropped.
func (rw *recordWriter) close() {
	rw.once.Do(func() {
		rw.mu.Lock()
		rw.closed = true
		close(rw.ch)
		rw.mu.Unlock()
		<-rw.done
	})
}
