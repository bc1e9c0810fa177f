package issuancepb

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/kordon-dev/kordon/internal/testtool"
)

// protocVersion matches the header lines naming the protoc version, which
// differ between machines without the code differing.
var protocVersion = regexp.MustCompile(`(?m)^//\s+(- )?protoc\s+v?[0-9.]+\S*$`)

// TestGeneratedCodeIsCurrent regenerates the Go code of issuance.proto
// into a temporary folder (hack/protoc.sh, the make generate target) and
// fails when the committed files differ: edit the .proto, run make
// generate, commit both.
func TestGeneratedCodeIsCurrent(t *testing.T) {
	testtool.Need(t, "protoc (Debian's protobuf-compiler)", "protoc")
	if testing.Short() {
		t.Skip("builds protoc-gen-go")
	}
	out := t.TempDir()
	cmd := exec.Command("bash", "hack/protoc.sh", out)
	cmd.Dir = "../.."
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("hack/protoc.sh: %v\n%s", err, b)
	}
	for _, f := range []string{"issuance.pb.go"} {
		want, err := os.ReadFile(filepath.Join(out, "identity", "issuancepb", f))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(protocVersion.ReplaceAll(got, nil), protocVersion.ReplaceAll(want, nil)) {
			t.Errorf("%s is stale: run make generate and commit it", f)
		}
	}
}
