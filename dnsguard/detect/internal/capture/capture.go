// Package capture reads the recorded tunnel captures in the detector's
// test data (testdata/capture-*.jsonl.gz): one JSON object per query,
// with its offset in seconds from the capture's start. It serves the
// tests of detect and detect/replay.
package capture

import (
	"bufio"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// Record is one captured query.
type Record struct {
	T     float64 `json:"t"` // seconds since the capture started
	QName string  `json:"qname"`
	QType string  `json:"qtype"`
	RCode string  `json:"rcode"`
}

// Capture is one capture file's queries, named by the file.
type Capture struct {
	Name    string
	Records []Record
}

// Load reads every capture file matching glob, in the glob's order.
func Load(glob string) ([]Capture, error) {
	files, err := filepath.Glob(glob)
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("capture: no file matches %s", glob)
	}
	var out []Capture
	for _, f := range files {
		c, err := loadFile(f)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

func loadFile(f string) (Capture, error) {
	c := Capture{Name: filepath.Base(f)}
	fh, err := os.Open(f)
	if err != nil {
		return c, err
	}
	defer fh.Close()
	zr, err := gzip.NewReader(fh)
	if err != nil {
		return c, fmt.Errorf("capture: %s: %w", f, err)
	}
	defer zr.Close()
	sc := bufio.NewScanner(zr)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for line := 1; sc.Scan(); line++ {
		var r Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return c, fmt.Errorf("capture: %s:%d: %w", f, line, err)
		}
		c.Records = append(c.Records, r)
	}
	return c, sc.Err()
}
