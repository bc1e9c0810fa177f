// Package browser drives a real headless Chromium (Debian's chromium,
// hack/install-deps.sh installs it) from Go tests with chromedp: the web
// console's tests in cmd/kordon (dev mode) and e2e (the controller).
package browser

import (
	"context"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/kordon-dev/kordon/internal/testtool"
)

// Start starts a headless Chromium of its own (temporary profile), with
// extra options after the defaults, and returns a tab context; the
// browser is stopped, and its process checked gone, at cleanup. Without
// chromium installed the test is skipped (testtool.Need).
func Start(t *testing.T, extra ...chromedp.ExecAllocatorOption) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(testtool.Need(t, "chromium", "chromium", "chromium-browser")),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1360, 900),
		chromedp.Flag("headless", "new"),
		chromedp.Flag("lang", "en-US"),
		chromedp.Flag("font-render-hinting", "none"),
	)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox)
	}
	opts = append(opts, extra...)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx)
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		cancelTab()
		cancelAlloc()
		t.Fatal(err)
	}
	pid := chromedp.FromContext(ctx).Browser.Process().Pid
	t.Cleanup(func() {
		cctx, c := context.WithTimeout(context.Background(), 10*time.Second)
		defer c()
		_ = chromedp.Cancel(ctx) // closes the browser over the protocol
		cancelTab()
		cancelAlloc() // waits for the process
		for syscall.Kill(pid, 0) == nil {
			if cctx.Err() != nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				t.Errorf("chromium pid %d still running after cancel: killed", pid)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	return ctx
}

// Do runs browser steps with a deadline.
func Do(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := chromedp.Do(rctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// Get runs one browser action with a deadline and returns its value.
func Get[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	v, err := chromedp.Run(rctx, a)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

// Text is the visible text of the element sel selects.
func Text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	return Get(t, ctx, "text of "+sel, chromedp.Text(chromedp.CSS(sel)))
}

// WaitText waits (10s at most) until the element's text contains want.
func WaitText(t *testing.T, ctx context.Context, sel, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := Text(t, ctx, sel)
		if strings.Contains(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: text %q, want it to contain %q", sel, got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
