package main

import (
	"bytes"
	"io"
	"sync"
)

// lineWriter buffers what is written and hands emit only whole lines, each
// ending in '\n' (all those complete at once); a line split across writes
// waits for its end. One goroutine writes to a lineWriter at a time. emit
// must not keep the slice.
type lineWriter struct {
	emit    func(lines []byte) error
	pending []byte
}

func (l *lineWriter) Write(b []byte) (int, error) {
	l.pending = append(l.pending, b...)
	i := bytes.LastIndexByte(l.pending, '\n')
	if i < 0 {
		return len(b), nil
	}
	err := l.emit(l.pending[:i+1])
	n := copy(l.pending, l.pending[i+1:])
	l.pending = l.pending[:n]
	if err != nil {
		return 0, err
	}
	return len(b), nil
}

// lineSink returns a lineWriter handing add each line without its '\n'
// (a summary reading the query or flow log).
func lineSink(add func(line []byte)) *lineWriter {
	return &lineWriter{emit: func(lines []byte) error {
		for line := range bytes.Lines(lines) {
			add(line[:len(line)-1])
		}
		return nil
	}}
}

// sharedLines returns n lineWriters over w, which they share (the query
// log and the flow log both on stdout): a mutex serialises their writes of
// whole lines, so their buffered writers never interleave halves of
// records.
func sharedLines(w io.Writer, n int) []*lineWriter {
	mu := new(sync.Mutex)
	emit := func(lines []byte) error {
		mu.Lock()
		defer mu.Unlock()
		_, err := w.Write(lines)
		return err
	}
	out := make([]*lineWriter, n)
	for i := range out {
		out[i] = &lineWriter{emit: emit}
	}
	return out
}
