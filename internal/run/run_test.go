package run

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

func TestGroupFirstErrorCancelsTheRestAndAllAreAwaited(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	var stopped atomic.Int32
	var g Group
	for range 3 {
		g.AddFunc("waiter", func(ctx context.Context) error {
			<-ctx.Done()
			time.Sleep(10 * time.Millisecond) // a slow stop must still be awaited
			stopped.Add(1)
			return ctx.Err()
		})
	}
	g.AddFunc("failing", func(context.Context) error { return boom })
	err := g.Run(context.Background())
	if !errors.Is(err, boom) || err.Error() != "failing: boom" {
		t.Fatalf("err = %v, want failing: boom", err)
	}
	if n := stopped.Load(); n != 3 {
		t.Fatalf("%d of 3 components had returned when Run did", n)
	}
}

func TestGroupParentCancelIsACleanStop(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	var g Group
	started := make(chan struct{})
	g.AddFunc("a", func(ctx context.Context) error {
		close(started)
		<-ctx.Done()
		return ctx.Err()
	})
	g.AddFunc("b", func(ctx context.Context) error {
		<-ctx.Done()
		return nil
	})
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	<-started
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
}

func TestGroupEarlyNilDoesNotStopOthers(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	var g Group
	finished := make(chan struct{})
	g.AddFunc("oneshot", func(context.Context) error { close(finished); return nil })
	stillRunning := make(chan struct{})
	g.AddFunc("long", func(ctx context.Context) error {
		<-finished
		select {
		case <-ctx.Done():
			return errors.New("cancelled by a component that finished")
		default:
		}
		close(stillRunning)
		<-ctx.Done()
		return nil
	})
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	select {
	case <-stillRunning:
	case err := <-done:
		t.Fatalf("Run returned %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestHTTPServerShutsDownAndCutsStreams(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	streaming := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "event\n")
		w.(http.Flusher).Flush()
		close(streaming)
		<-r.Context().Done() // an SSE follower: never ends by itself
	})
	mux.HandleFunc("/ok", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- HTTPServer(&http.Server{Handler: mux}, ln, 200*time.Millisecond).Run(ctx) }()
	url := "http://" + ln.Addr().String()
	resp, err := http.Get(url + "/ok")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "ok" {
		t.Fatalf("/ok = %q", b)
	}
	resp, err = http.Get(url + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	<-streaming
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("HTTPServer = %v, want nil after cutting the stream", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("HTTPServer did not return within 10s of its context ending")
	}
	if took := time.Since(start); took < 200*time.Millisecond {
		t.Errorf("returned after %v: the stream was not given the timeout", took)
	}
	if c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		c.Close()
		t.Error("listener still accepts after shutdown")
	}
}

func TestHTTPServerServeErrorIsReturned(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close() // Serve fails at once
	err = HTTPServer(&http.Server{}, ln, 0).Run(context.Background())
	if err == nil {
		t.Fatal("want the Serve error")
	}
}

func TestReady(t *testing.T) {
	t.Parallel()
	a, b := make(chan struct{}), make(chan struct{})
	var called atomic.Bool
	done := make(chan error, 1)
	go func() { done <- Ready(func() { called.Store(true) }, a, b).Run(context.Background()) }()
	close(a)
	if called.Load() {
		t.Fatal("ready before every signal")
	}
	close(b)
	if err := <-done; err != nil || !called.Load() {
		t.Fatalf("err %v, called %v", err, called.Load())
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	called.Store(false)
	if err := Ready(func() { called.Store(true) }, make(chan struct{})).Run(ctx); err != nil || called.Load() {
		t.Fatalf("after cancel: err %v, called %v", err, called.Load())
	}
}
