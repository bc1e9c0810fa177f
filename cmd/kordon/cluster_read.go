package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/kordon-dev/kordon/internal/kube"
	"github.com/kordon-dev/kordon/policy"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/duration"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/clientcmd"
)

// Exit codes of the commands reading the cluster (kordon alerts without
// --server, kordon quarantine).
const (
	exitNotFound  = 3 // the named object does not exist
	exitForbidden = 4 // RBAC denied the request, or the credentials were rejected
)

// clusterFormats are the -o values of the commands reading the cluster.
var clusterFormats = []string{"table", "wide", "json", "yaml"}

// clusterReadFlags are kubectl's flags for reading kordon's cluster
// state: which kubeconfig, context and namespace, and how to print.
type clusterReadFlags struct {
	kubeconfig, context, namespace, output string
	allNamespaces, watch                   bool
}

// registerKubectl adds --context, -A and -w; --kubeconfig, -n and -o are
// registered by the caller (kordon alerts shares them with --server).
func (c *clusterReadFlags) registerKubectl(fl *pflag.FlagSet) {
	fl.StringVar(&c.context, "context", "", "kubeconfig context to use (default: its current-context)")
	c.registerListing(fl)
}

// registerConnection adds --kubeconfig, --context and -n.
func (c *clusterReadFlags) registerConnection(fl *pflag.FlagSet) {
	fl.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster)")
	fl.StringVarP(&c.namespace, "namespace", "n", "", "namespace (default: the kubeconfig context's)")
	fl.StringVar(&c.context, "context", "", "kubeconfig context to use (default: its current-context)")
}

// registerListing adds -A and -w.
func (c *clusterReadFlags) registerListing(fl *pflag.FlagSet) {
	fl.BoolVarP(&c.allNamespaces, "all-namespaces", "A", false, "every namespace (the NAMESPACE column is added)")
	fl.BoolVarP(&c.watch, "watch", "w", false, "after listing, watch for changes and print each new or updated object until interrupted")
}

// registerAll adds every flag (kordon quarantine).
func (c *clusterReadFlags) registerAll(cmd *cobra.Command) {
	c.registerConnection(cmd.Flags())
	c.registerListing(cmd.Flags())
	addOutputFlag(cmd, &c.output, clusterFormats...)
}

// open loads the kubeconfig and returns the client of kind and the
// namespace to read ("" with -A).
func (c *clusterReadFlags) open(resource schema.GroupVersionResource) (kube.StateClient, string, error) {
	if !slices.Contains(clusterFormats, c.output) {
		return kube.StateClient{}, "", fmt.Errorf("-o %q: want one of %s", c.output, strings.Join(clusterFormats, ", "))
	}
	if c.allNamespaces && c.namespace != "" {
		return kube.StateClient{}, "", errors.New("-A and -n are exclusive")
	}
	clients, ns, err := kube.LoadKubeconfig(kube.KubeconfigOptions{Path: c.kubeconfig, Search: kubeconfigSearch(), Context: c.context, Namespace: c.namespace})
	if err != nil {
		return kube.StateClient{}, "", err
	}
	if c.allNamespaces {
		ns = metav1.NamespaceAll
	}
	return kube.StateClient{Dynamic: clients.Dynamic, Resource: resource}, ns, nil
}

// kubeconfigSearch is kubectl's kubeconfig search: $KUBECONFIG's files,
// else ~/.kube/config.
func kubeconfigSearch() []string {
	if env := os.Getenv(clientcmd.RecommendedConfigPathEnvVar); env != "" {
		return filepath.SplitList(env)
	}
	return []string{clientcmd.RecommendedHomeFile}
}

// stateKind is how one cluster-state kind is printed: the columns of its
// CRD's additionalPrinterColumns (wide ones have priority 1).
type stateKind struct {
	resource schema.GroupVersionResource
	columns  []stateColumn
}

type stateColumn struct {
	name  string
	wide  bool
	value func(u *unstructured.Unstructured, now time.Time) string
}

// specColumn reads a column from the decoded spec of type S.
func specColumn[S any](name string, wide bool, get func(*S, time.Time) string) stateColumn {
	return stateColumn{name: name, wide: wide, value: func(u *unstructured.Unstructured, now time.Time) string {
		var s S
		if err := kube.DecodeSpec(u, &s); err != nil {
			return "<invalid>"
		}
		return get(&s, now)
	}}
}

func orNone(s string) string {
	if s == "" {
		return "<none>"
	}
	return s
}

// age renders a date column as kubectl does (5m, 3h12m, 2d).
func age(t, now time.Time) string {
	if t.IsZero() {
		return "<unknown>"
	}
	return duration.HumanDuration(now.Sub(t))
}

var ageColumn = stateColumn{name: "AGE", value: func(u *unstructured.Unstructured, now time.Time) string {
	return age(u.GetCreationTimestamp().Time, now)
}}

type alertSpec = policy.EgressAlertSpec
type quarantineSpec = policy.QuarantineSpec

var egressAlertKind = stateKind{resource: kube.EgressAlertGVR, columns: []stateColumn{
	specColumn("KIND", false, func(s *alertSpec, _ time.Time) string { return orNone(s.Kind) }),
	specColumn("SEVERITY", false, func(s *alertSpec, _ time.Time) string { return orNone(s.Severity) }),
	specColumn("POD", false, func(s *alertSpec, _ time.Time) string { return orNone(s.Pod) }),
	specColumn("DOMAIN", false, func(s *alertSpec, _ time.Time) string { return orNone(s.Domain) }),
	specColumn("COUNT", false, func(s *alertSpec, _ time.Time) string { return strconv.FormatInt(s.Count, 10) }),
	specColumn("LAST SEEN", false, func(s *alertSpec, now time.Time) string { return age(s.LastSeen, now) }),
	specColumn("ACTION", true, func(s *alertSpec, _ time.Time) string { return orNone(s.Action) }),
	specColumn("NODE", true, func(s *alertSpec, _ time.Time) string { return orNone(s.Node) }),
	ageColumn,
}}

var quarantineKind = stateKind{resource: kube.QuarantineGVR, columns: []stateColumn{
	specColumn("OWNER KIND", false, func(s *quarantineSpec, _ time.Time) string {
		if s.Owner == nil {
			return "<none>"
		}
		return orNone(s.Owner.Kind)
	}),
	specColumn("OWNER", false, func(s *quarantineSpec, _ time.Time) string {
		if s.Owner == nil {
			return "<none>"
		}
		return orNone(s.Owner.Name)
	}),
	specColumn("SERVICE ACCOUNT", false, func(s *quarantineSpec, _ time.Time) string { return orNone(s.ServiceAccount) }),
	specColumn("DOMAINS", false, func(s *quarantineSpec, _ time.Time) string { return orNone(strings.Join(s.Domains, ",")) }),
	specColumn("ADDRESSES", true, func(s *quarantineSpec, _ time.Time) string { return orNone(strings.Join(s.Addresses, ",")) }),
	specColumn("NODE", true, func(s *quarantineSpec, _ time.Time) string { return orNone(s.Node) }),
	specColumn("REASON", true, func(s *quarantineSpec, _ time.Time) string { return orNone(s.Reason) }),
	ageColumn,
}}

// statePrinter prints objects of one kind in one -o format: a table
// (header once, a row per object), or JSON/YAML documents.
type statePrinter struct {
	kind          stateKind
	format        string
	allNamespaces bool
	now           func() time.Time
	w             io.Writer
	tw            flushWriter
	headerDone    bool
	widths        []int // the widest cell of each column so far
}

type flushWriter interface {
	io.Writer
	Flush() error
}

func newStatePrinter(w io.Writer, kind stateKind, format string, allNamespaces bool, now func() time.Time) *statePrinter {
	return &statePrinter{kind: kind, format: format, allNamespaces: allNamespaces, now: now, w: w, tw: newTable(w)}
}

func (p *statePrinter) header() []string {
	var h []string
	if p.allNamespaces {
		h = append(h, "NAMESPACE")
	}
	h = append(h, "NAME")
	for _, c := range p.kind.columns {
		if !c.wide || p.format == "wide" {
			h = append(h, c.name)
		}
	}
	return h
}

func (p *statePrinter) row(u *unstructured.Unstructured) []string {
	now := p.now()
	var r []string
	if p.allNamespaces {
		r = append(r, u.GetNamespace())
	}
	r = append(r, u.GetName())
	for _, c := range p.kind.columns {
		if !c.wide || p.format == "wide" {
			r = append(r, c.value(u, now))
		}
	}
	return r
}

func (p *statePrinter) table() bool { return p.format == "table" || p.format == "wide" }

// shown is what json and yaml print of u: the object without
// metadata.managedFields, as kubectl prints it by default.
func shown(u *unstructured.Unstructured) map[string]any {
	if len(u.GetManagedFields()) == 0 {
		return u.Object
	}
	c := u.DeepCopy()
	c.SetManagedFields(nil)
	return c.Object
}

// list prints a whole list: kubectl's List object for json and yaml.
func (p *statePrinter) list(items []unstructured.Unstructured) error {
	if !p.table() {
		objs := make([]any, len(items))
		for i := range items {
			objs[i] = shown(&items[i])
		}
		return printStructured(p.w, p.format, map[string]any{"apiVersion": "v1", "kind": "List", "items": objs})
	}
	for i := range items {
		if err := p.object(&items[i]); err != nil {
			return err
		}
	}
	return p.tw.Flush()
}

// object prints one object: a row (the header before the first), or a
// JSON document, or a YAML document after "---" (while watching).
func (p *statePrinter) object(u *unstructured.Unstructured) error {
	if !p.table() {
		if p.format == "yaml" {
			if _, err := io.WriteString(p.w, "---\n"); err != nil {
				return err
			}
		}
		return printStructured(p.w, p.format, shown(u))
	}
	if !p.headerDone {
		p.headerDone = true
		if err := writeRow(p.tw, p.pad(p.header())...); err != nil {
			return err
		}
	}
	return writeRow(p.tw, p.pad(p.row(u))...)
}

// pad widens each cell but the last to the widest of its column so far,
// so that rows flushed one by one while watching line up with the
// header and the rows before them (within one flush the table aligns
// them anyway).
func (p *statePrinter) pad(cells []string) []string {
	for i, c := range cells {
		n := utf8.RuneCountInString(c)
		if i == len(p.widths) {
			p.widths = append(p.widths, 0)
		}
		p.widths[i] = max(p.widths[i], n)
		if i < len(cells)-1 && n < p.widths[i] {
			cells[i] = c + strings.Repeat(" ", p.widths[i]-n)
		}
	}
	return cells
}

// get lists kind (filtered by keep when not nil) and, with -w, prints
// each change after the list until the command is interrupted.
func (c *clusterReadFlags) get(cmd *cobra.Command, kind stateKind, keep func(*unstructured.Unstructured) bool) error {
	client, ns, err := c.open(kind.resource)
	if err != nil {
		return err
	}
	ctx, stop := clusterContext(cmd)
	defer stop()
	l, err := client.List(ctx, ns)
	if err != nil {
		return apiExit(cmd, err)
	}
	items := l.Items[:0]
	for _, u := range l.Items {
		if keep == nil || keep(&u) {
			items = append(items, u)
		}
	}
	slices.SortFunc(items, func(a, b unstructured.Unstructured) int {
		return strings.Compare(a.GetNamespace()+"/"+a.GetName(), b.GetNamespace()+"/"+b.GetName())
	})
	p := newStatePrinter(cmd.OutOrStdout(), kind, c.output, c.allNamespaces, time.Now)
	if !c.watch {
		if len(items) == 0 && p.table() {
			where := "any namespace"
			if ns != "" {
				where = fmt.Sprintf("namespace %q", ns)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "No %s found in %s.\n", kind.resource.Resource, where)
			return nil
		}
		return p.list(items)
	}
	for i := range items {
		if err := p.object(&items[i]); err != nil {
			return err
		}
	}
	if err := p.tw.Flush(); err != nil {
		return err
	}
	err = client.Watch(ctx, ns, l.GetResourceVersion(), func(_ watch.EventType, u *unstructured.Unstructured) error {
		if keep != nil && !keep(u) {
			return nil
		}
		if err := p.object(u); err != nil {
			return err
		}
		// Watching: each change is shown as it comes.
		return p.tw.Flush()
	})
	if err != nil {
		return apiExit(cmd, err)
	}
	return nil
}

// apiExit reports an error from the API server as kubectl does
// ("Error from server (Forbidden): ...") with a distinct exit code for
// NotFound and for Forbidden/Unauthorized; other errors are returned.
func apiExit(cmd *cobra.Command, err error) error {
	st, ok := kube.APIStatus(err)
	if !ok {
		return err
	}
	code := 1
	switch st.Reason {
	case metav1.StatusReasonNotFound:
		code = exitNotFound
	case metav1.StatusReasonForbidden, metav1.StatusReasonUnauthorized:
		code = exitForbidden
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "kordon: Error from server (%s): %s\n", st.Reason, st.Message)
	return exitError{code: code}
}

// clusterContext is the context a command reading the cluster runs in:
// interrupted by Ctrl-C or SIGTERM.
func clusterContext(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
}
