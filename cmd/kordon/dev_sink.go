package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/spf13/cobra"
)

// newDevSinkCmd runs a TCP sink: the "outside" servers of make demo-egress
// (an attacker's host, a partner API). It accepts connections, reads until
// the peer closes and prints how much each sent.
func newDevSinkCmd() *cobra.Command {
	var listens []string
	cmd := &cobra.Command{
		Use:   "sink --listen IP:PORT [--listen ...]",
		Short: "Accept TCP connections, count the bytes each sends, print one line per connection",
		Long: `A stand-in for servers outside the cluster in make demo-egress: it listens on
each --listen address, reads every connection to its end, answers "ok" and
prints "received N bytes from IP:PORT on ADDR". It runs until interrupted.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(listens) == 0 {
				return errors.New("--listen is required")
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runSink(ctx, listens, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringArrayVar(&listens, "listen", nil, "TCP address to accept on (repeatable)")
	return cmd
}

func runSink(ctx context.Context, listens []string, out io.Writer) error {
	var mu sync.Mutex
	var wg sync.WaitGroup
	var lns []net.Listener
	conns := map[net.Conn]struct{}{}
	for _, a := range listens {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return err
		}
		lns = append(lns, ln)
		fmt.Fprintf(out, "sink listening on %s\n", ln.Addr())
	}
	for _, ln := range lns {
		wg.Add(1)
		go func(ln net.Listener) {
			defer wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				conns[c] = struct{}{}
				mu.Unlock()
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer func() {
						c.Close()
						mu.Lock()
						delete(conns, c)
						mu.Unlock()
					}()
					n, _ := io.Copy(io.Discard, c)
					_, _ = io.WriteString(c, "ok\n")
					mu.Lock()
					fmt.Fprintf(out, "received %d bytes from %s on %s\n", n, c.RemoteAddr(), ln.Addr())
					mu.Unlock()
				}()
			}
		}(ln)
	}
	<-ctx.Done()
	for _, ln := range lns {
		ln.Close()
	}
	mu.Lock()
	for c := range conns {
		c.Close()
	}
	mu.Unlock()
	wg.Wait()
	return nil
}
