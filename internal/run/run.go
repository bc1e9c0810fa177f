// Package run is the lifecycle of kordon's long-running commands: a
// Group of components, each a Run(ctx) error, started together, the first
// error cancelling the rest and every one awaited before Run returns
// (controller-runtime's Runnable and manager, SPIRE's
// server.New(c).Run(ctx)).
package run

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"
)

// Component is a long-running part of a process. Run blocks until ctx
// ends or the component fails; it returns nil when it stopped because ctx
// ended. A component that returns nil early has simply finished (a
// one-shot start-up task): the others go on.
type Component interface {
	Run(ctx context.Context) error
}

// Func adapts a function to Component.
type Func func(ctx context.Context) error

// Run calls f.
func (f Func) Run(ctx context.Context) error { return f(ctx) }

// Group runs components together. The zero Group is empty and ready to
// use; Add components, then call Run once.
type Group struct {
	parts []part
}

type part struct {
	name string
	c    Component
}

// Add appends c under name, which prefixes its error.
func (g *Group) Add(name string, c Component) {
	g.parts = append(g.parts, part{name: name, c: c})
}

// AddFunc is Add(name, Func(f)).
func (g *Group) AddFunc(name string, f func(ctx context.Context) error) {
	g.Add(name, Func(f))
}

// Len is how many components were added.
func (g *Group) Len() int { return len(g.parts) }

// Run starts every component on its own goroutine and blocks until all
// have returned. The first error (or the end of ctx) cancels the context
// of all the others. Run returns that first error, prefixed with the
// component's name, or nil when the group stopped because ctx ended; a
// context.Canceled returned by a component after the group's context was
// cancelled is the component stopping as asked, not an error.
func (g *Group) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for _, p := range g.parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := p.c.Run(ctx)
			if err == nil || (ctx.Err() != nil && errors.Is(err, context.Canceled)) {
				return
			}
			once.Do(func() {
				first = fmt.Errorf("%s: %w", p.name, err)
				cancel()
			})
		}()
	}
	wg.Wait()
	return first
}

// DefaultShutdownTimeout is how long HTTPServer waits for requests in
// flight when its context ends.
const DefaultShutdownTimeout = 10 * time.Second

// HTTPServer serves srv on ln until ctx ends, then shuts it down: new
// connections are refused at once, requests in flight get timeout (0:
// DefaultShutdownTimeout) to finish, and the connections still open after
// that (long-lived streams such as the alert feed's SSE) are closed.
func HTTPServer(srv *http.Server, ln net.Listener, timeout time.Duration) Component {
	if timeout <= 0 {
		timeout = DefaultShutdownTimeout
	}
	return Func(func(ctx context.Context) error {
		errc := make(chan error, 1)
		go func() { errc <- srv.Serve(ln) }()
		select {
		case err := <-errc:
			// Serve failed on its own (it returns ErrServerClosed only
			// after Shutdown or Close, which nothing else calls).
			return err
		case <-ctx.Done():
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
		defer cancel()
		err := srv.Shutdown(sctx)
		if errors.Is(err, context.DeadlineExceeded) {
			// Streams that outlived the timeout: cut them.
			err = srv.Close()
		}
		if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
			err = serr
		}
		return err
	})
}

// Ready returns a component that waits for every channel in ready to be
// closed, then calls then (marking a process ready, printing its
// addresses) and returns nil; it returns nil without calling then if ctx
// ends first.
func Ready(then func(), ready ...<-chan struct{}) Component {
	return Func(func(ctx context.Context) error {
		for _, c := range ready {
			select {
			case <-c:
			case <-ctx.Done():
				return nil
			}
		}
		then()
		return nil
	})
}
