// Package devconfig loads the folder `kordon dev` runs from: a
// workloads.yaml (the workload registry of dev mode), an optional
// services.yaml (named sets of workloads on a port, for xDS) and any number
// of policy YAML files (AuthorizationPolicy, EgressPolicy), and watches it for
// changes. A folder that fails to load is reported with file:line:col and
// the last good snapshot stays in force.
package devconfig

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/policy"
	"github.com/kordon-dev/kordon/xds"
)

// WorkloadsFile is the name of the workloads file at the top of a dev folder
// (workloads.yml is accepted too).
const WorkloadsFile = "workloads.yaml"

// Snapshot is one successfully loaded state of a dev folder. It is
// immutable once returned.
type Snapshot struct {
	// Dir is the folder as given.
	Dir string
	// Workloads come from workloads.yaml, sorted by namespace/name.
	Workloads []*workload.Workload
	// Services come from the optional services.yaml.
	Services []xds.Service
	// Policies are every AuthorizationPolicy and EgressPolicy of the other
	// files, validated as a whole.
	Policies *policy.Set
	// Files are the files read, relative to Dir, sorted.
	Files []string
	// Digest is a SHA-256 over the files' names and contents: two
	// snapshots with the same digest hold the same configuration.
	Digest string
	// LoadedAt is when the snapshot was loaded.
	LoadedAt time.Time
}

// ShortDigest is the first 12 hex digits of Digest, for log lines.
func (s *Snapshot) ShortDigest() string { return s.Digest[:12] }

// Load reads dir once. Any error rejects the whole folder: a snapshot is
// never half applied.
func Load(dir string) (*Snapshot, error) {
	files, err := list(dir)
	if err != nil {
		return nil, err
	}
	digest, err := digestFiles(dir, files)
	if err != nil {
		return nil, err
	}
	return load(dir, files, digest, time.Now())
}

// load parses the listed files of dir.
func load(dir string, files []string, digest string, now time.Time) (*Snapshot, error) {
	snap := &Snapshot{Dir: dir, Files: files, Digest: digest, LoadedAt: now}
	var policyPaths []string
	var errs []error
	for _, f := range files {
		path := filepath.Join(dir, f)
		if isWorkloadsFile(f) {
			ws, err := LoadWorkloads(path)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			snap.Workloads = append(snap.Workloads, ws...)
			continue
		}
		if isServicesFile(f) {
			svcs, err := loadServices(path)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			snap.Services = append(snap.Services, svcs...)
			continue
		}
		policyPaths = append(policyPaths, path)
	}
	if len(policyPaths) > 0 {
		set, err := policy.LoadPaths(policy.LoadOptions{}, policyPaths...)
		if err != nil {
			errs = append(errs, err)
		}
		snap.Policies = set
	} else {
		snap.Policies = &policy.Set{}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	sort.Slice(snap.Workloads, func(i, j int) bool { return snap.Workloads[i].Key() < snap.Workloads[j].Key() })
	return snap, nil
}

func isServicesFile(rel string) bool {
	return rel == ServicesFile || rel == "services.yml"
}

func isWorkloadsFile(rel string) bool {
	return rel == WorkloadsFile || rel == "workloads.yml"
}

// list returns the YAML and JSON files below dir, relative to it and
// sorted. Hidden files and folders and editor backups are skipped.
func list(dir string) ([]string, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("devconfig: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("devconfig: %s is not a directory", dir)
	}
	var files []string
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if path != dir && (strings.HasPrefix(name, ".") || strings.HasSuffix(name, "~")) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() || !policy.IsPolicyFile(path) {
			return nil
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		files = append(files, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("devconfig: %w", err)
	}
	sort.Strings(files)
	return files, nil
}

// digestFiles hashes the names and contents of files.
func digestFiles(dir string, files []string) (string, error) {
	h := sha256.New()
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return "", fmt.Errorf("devconfig: %w", err)
		}
		fmt.Fprintf(h, "%s\x00%d\x00", f, len(data))
		h.Write(data)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// fileStat is what a poll compares before hashing.
type fileStat struct {
	name  string
	size  int64
	mtime time.Time
}

// fingerprint stats the files below dir.
func fingerprint(dir string) ([]string, []fileStat, error) {
	files, err := list(dir)
	if err != nil {
		return nil, nil, err
	}
	out := make([]fileStat, 0, len(files))
	for _, f := range files {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			return nil, nil, fmt.Errorf("devconfig: %w", err)
		}
		out = append(out, fileStat{name: f, size: st.Size(), mtime: st.ModTime()})
	}
	return files, out, nil
}

func sameStats(a, b []fileStat) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].name != b[i].name || a[i].size != b[i].size || !a[i].mtime.Equal(b[i].mtime) {
			return false
		}
	}
	return true
}
