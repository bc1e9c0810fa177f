package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/kordon-dev/kordon/internal/demo/meshdemo"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	"google.golang.org/grpc/status"
	grpcxds "google.golang.org/grpc/xds"
)

// bootstrapEnv is where grpc-go reads its xDS bootstrap (see kordon xds
// bootstrap).
const bootstrapEnv = "GRPC_XDS_BOOTSTRAP_CONFIG"

func requireBootstrap() error {
	if os.Getenv(bootstrapEnv) == "" && os.Getenv("GRPC_XDS_BOOTSTRAP") == "" {
		return errors.New(bootstrapEnv + " is not set: run with " + bootstrapEnv + "=\"$(kordon xds bootstrap ...)\"")
	}
	return nil
}

// newDevGRPCServeCmd serves the demo Payments service as a proxyless gRPC
// xDS server: its listener, mTLS and RBAC all come from kordon's xDS.
func newDevGRPCServeCmd() *cobra.Command {
	var listen string
	cmd := &cobra.Command{
		Use:    "grpc-serve --listen IP:PORT",
		Short:  "Serve the demo Payments gRPC service as a proxyless xDS server (bootstrap from " + bootstrapEnv + ")",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireBootstrap(); err != nil {
				return err
			}
			creds, err := xdscreds.NewServerCredentials(xdscreds.ServerOptions{FallbackCreds: insecure.NewCredentials()})
			if err != nil {
				return err
			}
			gs, err := grpcxds.NewGRPCServer(grpc.Creds(creds))
			if err != nil {
				return err
			}
			meshdemo.Register(gs)
			lis, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			go func() {
				<-ctx.Done()
				gs.GracefulStop()
			}()
			fmt.Fprintf(cmd.OutOrStdout(), "serving %s on %s (proxyless xDS: listener, mTLS and RBAC from kordon)\n", meshdemo.ServiceName, lis.Addr())
			return gs.Serve(lis)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:8082", "address to serve on (must be the workload's address and a service port)")
	return cmd
}

// newDevGRPCCallCmd calls the demo Payments service through xDS until the
// outcome is the expected one (xDS warm-up takes a moment) or time is up.
func newDevGRPCCallCmd() *cobra.Command {
	var (
		target, expect, order string
		timeout               time.Duration
	)
	cmd := &cobra.Command{
		Use:    "grpc-call --target NAME.NAMESPACE:PORT [--expect OK|PermissionDenied]",
		Short:  "Call the demo Payments service through proxyless xDS (bootstrap from " + bootstrapEnv + ")",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireBootstrap(); err != nil {
				return err
			}
			creds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
			if err != nil {
				return err
			}
			cc, err := grpc.NewClient("xds:///"+target, grpc.WithTransportCredentials(creds))
			if err != nil {
				return err
			}
			defer cc.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			var got string
			var last error
			for {
				callCtx, c := context.WithTimeout(ctx, 2*time.Second)
				out, err := meshdemo.Charge(callCtx, cc, order)
				c()
				got, last = status.Code(err).String(), err
				if got == expect {
					w := cmd.OutOrStdout()
					if err != nil {
						fmt.Fprintf(w, "%s %s: %s\n", meshdemo.MethodCharge, got, status.Convert(err).Message())
					} else {
						fmt.Fprintf(w, "%s OK: %s %s (server saw caller %s)\n", meshdemo.MethodCharge,
							out.GetFields()["result"].GetStringValue(), out.GetFields()["order"].GetStringValue(), out.GetFields()["caller"].GetStringValue())
					}
					return nil
				}
				// Wait for xDS to deliver the policy before the next try,
				// unless time is up.
				t := time.NewTimer(100 * time.Millisecond)
				select {
				case <-ctx.Done():
					t.Stop()
					return fmt.Errorf("%s: got %s, want %s: %v", meshdemo.MethodCharge, got, expect, last)
				case <-t.C:
				}
			}
		},
	}
	cmd.Flags().StringVar(&target, "target", "payments.shop:8082", "service to call (xds:///TARGET)")
	cmd.Flags().StringVar(&expect, "expect", codes.OK.String(), "outcome to wait for: OK or a gRPC code name such as PermissionDenied")
	cmd.Flags().StringVar(&order, "order", "order-1001", "order id sent in the request")
	cmd.Flags().DurationVar(&timeout, "timeout", 20*time.Second, "give up after this long")
	return cmd
}
