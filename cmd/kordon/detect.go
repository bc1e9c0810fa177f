package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/kordon-dev/kordon/dnsguard/detect"
	"github.com/kordon-dev/kordon/dnsguard/detect/replay"
	"github.com/spf13/cobra"
)

func newDetectCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "detect",
		Short: "Run the exfiltration detector offline",
	}
	cmd.AddCommand(newDetectReplayCmd())
	return cmd
}

func newDetectReplayCmd() *cobra.Command {
	var output, sensitivity string
	var cooldown time.Duration
	cmd := &cobra.Command{
		Use:   "replay FILE... [-o table|json] [--sensitivity Low|Medium|High]",
		Short: "Replay query logs or dnstap files through the detector and print the alerts the resolver would have raised",
		Long: `Replays recorded DNS traffic through the live resolver's detector, using the
records' own timestamps: kordon query logs (JSON lines) and dnstap files (Frame
Streams), told apart by their first bytes, either gzip-compressed; "-" reads
standard input. Files are read in the order given and the detector's state
carries across them. Alerts are deduplicated as the feed does (--cooldown). A
record that cannot be read is reported as FILE:LINE (dnstap: FILE: frame N) on
standard error and skipped; the rest of the file is read. The exit status is 1
when a file cannot be read at all.`,
		Example: `  kordon detect replay /var/log/kordon/queries-*.jsonl
  kordon detect replay --sensitivity High -o json unbound.dnstap | jq .`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, files []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("unsupported output format %q (json or table)", output)
			}
			var sens detect.Sensitivity
			for _, s := range []detect.Sensitivity{detect.Low, detect.Medium, detect.High} {
				if strings.EqualFold(sensitivity, string(s)) {
					sens = s
				}
			}
			if sens == "" {
				return fmt.Errorf("--sensitivity %q: one of Low, Medium, High", sensitivity)
			}
			if cooldown == 0 {
				cooldown = -1 // the flag's 0 means no deduplication
			}
			out, errOut := cmd.OutOrStdout(), cmd.ErrOrStderr()
			rp := replay.New(replay.Config{Sensitivity: sens, Cooldown: cooldown})
			var alerts []alert.Alert
			enc := json.NewEncoder(out) // one object per line, as the feed's stream
			emit := func(a alert.Alert) error {
				if output == "json" {
					return enc.Encode(a)
				}
				alerts = append(alerts, a)
				return nil
			}
			var total replay.Stats
			failed := 0
			for _, f := range files {
				st, err := replayFile(rp, f, cmd.InOrStdin(), emit)
				for _, e := range st.Errors {
					fmt.Fprintln(errOut, "kordon: detect replay:", e)
				}
				if st.Skipped > len(st.Errors) {
					fmt.Fprintf(errOut, "kordon: detect replay: %s: %d more bad records not shown\n", f, st.Skipped-len(st.Errors))
				}
				if err != nil {
					fmt.Fprintln(errOut, "kordon: detect replay:", err)
					failed++
				}
				fmt.Fprintf(errOut, "%s: %s, %d records, %d skipped, %d alerts\n", f, st.Format, st.Records, st.Skipped, st.Alerts)
				total.Records += st.Records
				total.Skipped += st.Skipped
				total.Alerts += st.Alerts
			}
			if len(files) > 1 {
				fmt.Fprintf(errOut, "total: %d files, %d records, %d skipped, %d alerts\n", len(files), total.Records, total.Skipped, total.Alerts)
			}
			if output == "table" {
				if err := printAlertTable(out, alerts); err != nil {
					return err
				}
			}
			if failed > 0 {
				return exitError{code: 1}
			}
			return nil
		},
	}
	addOutputFlag(cmd, &output, "table", "json")
	cmd.Flags().StringVar(&sensitivity, "sensitivity", string(detect.Medium), "detector sensitivity: Low, Medium or High")
	cmd.Flags().DurationVar(&cooldown, "cooldown", 10*time.Minute, "suppress repeats per workload, domain and kind within this time, as the alert feed does (0: print every finding)")
	return cmd
}

func replayFile(rp *replay.Replayer, name string, stdin io.Reader, emit replay.Emit) (replay.Stats, error) {
	if name == "-" {
		return rp.Read("-", stdin, emit)
	}
	f, err := os.Open(name)
	if err != nil {
		return replay.Stats{}, err
	}
	defer f.Close()
	return rp.Read(name, f, emit)
}

func printAlertTable(w io.Writer, alerts []alert.Alert) error {
	if len(alerts) == 0 {
		_, err := fmt.Fprintln(w, "No alerts.")
		return err
	}
	tw := newTable(w)
	fmt.Fprintln(tw, "TIME\tSEVERITY\tKIND\tWORKLOAD\tDOMAIN\tSCORE\tMESSAGE")
	for _, a := range alerts {
		who := a.Workload()
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.2f\t%s\n", a.Time.UTC().Format(time.RFC3339), a.Severity, a.Kind, who, a.Domain, a.Score, a.Message)
	}
	return tw.Flush()
}
