package main

import (
	"fmt"
	"io"
	"log/slog"

	"github.com/spf13/pflag"
)

// One flag name for one thing across subcommands: the same address, log
// or output has the same flag everywhere (--dns-listen, --http-listen for
// a command's whole HTTP API, --metrics-listen for /metrics /healthz
// /readyz only, --query-log, --log-level, --log-format). Names used before are kept as
// deprecated aliases so that no script breaks.

// deprecatedAlias registers old as another name of the flag name (same
// value), hidden from help and warned about when used.
func deprecatedAlias(fl *pflag.FlagSet, old, name string) {
	f := fl.Lookup(name)
	if f == nil {
		panic("deprecatedAlias: no flag --" + name)
	}
	fl.Var(f.Value, old, f.Usage)
	_ = fl.MarkDeprecated(old, "use --"+name)
}

// logFlags are --log-level and --log-format, for every long-running
// command.
type logFlags struct {
	level, format string
}

func (l *logFlags) register(fl *pflag.FlagSet) { registerLogFlags(fl, &l.level, &l.format) }

// registerLogFlags adds --log-level and --log-format bound to level and
// format.
func registerLogFlags(fl *pflag.FlagSet, level, format *string) {
	fl.StringVar(level, "log-level", "info", "log level: debug, info, warn, error")
	fl.StringVar(format, "log-format", "json", "log format: json (one object a line, for log collectors) or text")
}

// logger builds the logger the flags ask for, writing to w.
func (l *logFlags) logger(w io.Writer) (*slog.Logger, error) {
	return newLogger(w, l.level, l.format)
}

// newLogger builds a slog logger: level debug, info, warn or error; format
// json or text.
func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	lv := new(slog.LevelVar)
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "", "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format: want json or text, got %q", format)
}
