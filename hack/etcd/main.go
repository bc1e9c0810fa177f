// Command etcd wraps the upstream etcd server for kordon's e2e tests. It
// is its own module so that ./... in the main module never builds it.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
