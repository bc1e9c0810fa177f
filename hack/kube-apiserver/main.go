// Command kube-apiserver is a thin wrapper around the upstream
// kube-apiserver, built from the Go module proxy for kordon's e2e tests
// (kind and Docker are not available where they run). It is its own module
// so that ./... in the main module never builds it.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
