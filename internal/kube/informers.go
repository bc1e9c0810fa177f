package kube

import (
	"context"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/cache"
)

// tombstone unwraps an informer's delete notification: after a missed
// watch event it carries the last known object in a
// DeletedFinalStateUnknown.
func tombstone(o any) any {
	if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
		return t.Obj
	}
	return o
}

// unstructuredHandler calls set for each added or updated object and del
// for each deleted one, of a dynamic informer.
func unstructuredHandler(set, del func(*unstructured.Unstructured)) cache.ResourceEventHandlerFuncs {
	call := func(fn func(*unstructured.Unstructured), o any) {
		if u, ok := tombstone(o).(*unstructured.Unstructured); ok {
			fn(u)
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { call(set, o) },
		UpdateFunc: func(_, o any) { call(set, o) },
		DeleteFunc: func(o any) { call(del, o) },
	}
}

// poke wakes a kicked loop without blocking (kick has room for one).
func poke(kick chan struct{}) {
	select {
	case kick <- struct{}{}:
	default:
	}
}

// serveKicks calls fn, closes synced (when not nil), then calls fn after
// each kick until ctx ends.
func serveKicks(ctx context.Context, kick <-chan struct{}, synced chan<- struct{}, fn func()) {
	fn()
	if synced != nil {
		close(synced)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-kick:
			fn()
		}
	}
}
