package identity

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Store errors.
var (
	// ErrNotFound: no CA state has been stored yet.
	ErrNotFound = errors.New("identity: no CA state stored")
	// ErrExists: Create lost a race; another replica created the state.
	ErrExists = errors.New("identity: CA state already exists")
	// ErrConflict: Update was based on a stale version.
	ErrConflict = errors.New("identity: CA state changed concurrently")
)

// State is what a Store persists: the trust domain and its authorities
// (the active one has a zero RetireAfter and is not Prepared).
type State struct {
	TrustDomain string            `json:"trustDomain"`
	Authorities []StoredAuthority `json:"authorities"`
}

// StoredAuthority is one CA key pair. CertPEM holds the CA certificate
// followed by its upstream chain, if any.
type StoredAuthority struct {
	CertPEM     string    `json:"certPEM"`
	KeyPEM      string    `json:"keyPEM"`
	RetireAfter time.Time `json:"retireAfter,omitempty"`
	// Prepared marks the next authority: in the bundle, not yet signing.
	// It also carries RetireAfter (its NotAfter) so that older kordon
	// versions, which sign with the authority whose RetireAfter is zero,
	// never sign with it.
	Prepared bool `json:"prepared,omitempty"`
}

// Store persists CA state with optimistic concurrency, so several
// controller replicas share one root: Create is create-if-absent and
// Update is compare-and-swap on the version Load returned. A Kubernetes
// Secret store maps these to create (AlreadyExists) and update with a
// resourceVersion.
type Store interface {
	Load(ctx context.Context) (*State, string, error)
	Create(ctx context.Context, st *State) error
	Update(ctx context.Context, st *State, version string) (string, error)
}

// FileStore keeps the state in one JSON file (mode 0600), for dev mode and
// single-node installs. Create uses O_EXCL so concurrent processes cannot
// both create a root; Update writes a temporary file and renames it.
type FileStore struct {
	Path string
}

var _ Store = (*FileStore)(nil)

// Load reads the state; the version is the SHA-256 of the file's bytes.
func (f *FileStore) Load(context.Context) (*State, string, error) {
	b, err := os.ReadFile(f.Path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, "", ErrNotFound
	}
	if err != nil {
		return nil, "", err
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, "", fmt.Errorf("identity: %s: %w", f.Path, err)
	}
	return &st, contentVersion(b), nil
}

// Why a content hash, not the modification time and size: two writes
// within the file system's timestamp granularity that leave the same size
// (an activation only changes RetireAfter values) would keep the version,
// so Update would not see the conflict and Reload would skip the change.
func (f *FileStore) version() (string, error) {
	b, err := os.ReadFile(f.Path)
	if err != nil {
		return "", err
	}
	return contentVersion(b), nil
}

func contentVersion(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Create writes the state only if none exists.
func (f *FileStore) Create(_ context.Context, st *State) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(f.Path), 0o700); err != nil {
		return err
	}
	// Write elsewhere first, then link into place: link fails if the
	// target exists (exclusive create), and readers never see a partial file.
	tmp, err := writeTemp(f.Path, b)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, f.Path); err != nil {
		if errors.Is(err, os.ErrExist) {
			return ErrExists
		}
		return err
	}
	return nil
}

// Update replaces the state if it still has the given version.
func (f *FileStore) Update(_ context.Context, st *State, version string) (string, error) {
	cur, err := f.version()
	if err != nil {
		return "", err
	}
	if cur != version {
		return "", ErrConflict
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return "", err
	}
	tmp, err := writeTemp(f.Path, b)
	if err != nil {
		return "", err
	}
	if err := os.Rename(tmp, f.Path); err != nil {
		os.Remove(tmp)
		return "", err
	}
	return f.version()
}

// writeTemp writes data to a 0600 temporary file beside path, synced.
func writeTemp(path string, data []byte) (string, error) {
	t, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return "", err
	}
	if err := t.Chmod(0o600); err != nil {
		t.Close()
		os.Remove(t.Name())
		return "", err
	}
	if _, err := t.Write(data); err != nil {
		t.Close()
		os.Remove(t.Name())
		return "", err
	}
	if err := t.Sync(); err != nil {
		t.Close()
		os.Remove(t.Name())
		return "", err
	}
	if err := t.Close(); err != nil {
		os.Remove(t.Name())
		return "", err
	}
	return t.Name(), nil
}

// WriteFileAtomic writes data to path with the given mode via a
// temporary file and rename, so readers (grpc-go's file watcher) never
// see a partial file.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := writeTemp(path, data)
	if err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}
