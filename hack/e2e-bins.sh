#!/usr/bin/env bash
# Builds kube-apiserver and etcd from the Go module proxy into a cache
# outside the work tree, once per version (a reused machine pays nothing).
# Prints the directory holding both binaries (KUBEBUILDER_ASSETS layout).
set -euo pipefail
cd "$(dirname "$0")"
K8S=v1.34.4
ETCD=v3.6.16
OUT=${KORDON_E2E_BIN:-$(go env GOPATH)/kordon-cache/e2e-bin/k8s-$K8S-etcd-$ETCD}
mkdir -p "$OUT"
build() { # dir binary ldflags
  local dir=$1 bin=$2 ldflags=$3
  if [ -x "$OUT/$bin" ]; then return; fi
  echo "building $bin into $OUT (one time; several minutes)" >&2
  (cd "$dir" && [ -f go.sum ] || (cd "$dir" && go mod tidy >&2))
  (cd "$dir" && nice -n 10 go build -p 1 -trimpath -ldflags "$ldflags" -o "$OUT/$bin.tmp" . >&2)
  mv "$OUT/$bin.tmp" "$OUT/$bin"
}
build etcd etcd "-s -w"
build kube-apiserver kube-apiserver "-s -w -X k8s.io/component-base/version.gitVersion=$K8S -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34 -X k8s.io/component-base/version.gitTreeState=clean"
echo "$OUT"
