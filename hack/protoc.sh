#!/usr/bin/env bash
# Generates the Go code of the project's .proto files with protoc (Debian's
# protobuf-compiler) and protoc-gen-go (google.golang.org/protobuf), pinned
# as a tool in go.mod. The gRPC binding is issuancepb/service.go (by hand).
# Usage: hack/protoc.sh [OUTDIR]   (default: the repository; the staleness
# test passes a temporary folder and compares).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
command -v protoc >/dev/null || { echo "protoc not found: run hack/install-deps.sh (Debian protobuf-compiler)" >&2; exit 1; }
bin="$(mktemp -d)"
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go
mkdir -p "$out"
for proto in identity/issuancepb/issuance.proto; do
  protoc -I . -I /usr/include \
    --plugin=protoc-gen-go="$bin/protoc-gen-go" \
    --go_out="$out" --go_opt=paths=source_relative \
    "$proto"
done
