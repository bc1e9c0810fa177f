package policy

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// Set is a validated collection of policies, in a deterministic order
// (namespace, then name).
type Set struct {
	Authorization []*AuthorizationPolicy
	Egress        []*EgressPolicy
	// RequestAuthentication are Istio's JWT validation policies. No
	// kordon data plane validates JWTs yet: they are accepted, and the
	// compiler notes them (see CompileOptions.DynamicMetadata).
	RequestAuthentication []*RequestAuthentication
	// Warnings are positioned findings that do not reject a policy (a
	// path that does not start with '/').
	Warnings ErrorList
	// Skipped lists the files found in a directory argument that hold no
	// policy document (the dev folder's workloads.yaml, a Deployment) and
	// were left out, each with the reason; files named as arguments are
	// never skipped.
	Skipped []SkippedFile
}

// SkippedFile is a file LoadPaths left out of a directory walk.
type SkippedFile struct {
	Path   string
	Reason string
}

// Len is the number of policies in the set.
func (s *Set) Len() int { return len(s.Authorization) + len(s.Egress) + len(s.RequestAuthentication) }

func (s *Set) sort() {
	sort.SliceStable(s.Authorization, func(i, j int) bool {
		a, b := s.Authorization[i].Metadata, s.Authorization[j].Metadata
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
	sort.SliceStable(s.RequestAuthentication, func(i, j int) bool {
		a, b := s.RequestAuthentication[i].Metadata, s.RequestAuthentication[j].Metadata
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
	sort.SliceStable(s.Egress, func(i, j int) bool {
		a, b := s.Egress[i].Metadata, s.Egress[j].Metadata
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
}

// LoadOptions control how documents are read.
type LoadOptions struct {
	// DefaultNamespace is used for documents without metadata.namespace.
	// Empty means "default", as kubectl.
	DefaultNamespace string
	// SkipUnknownKinds ignores documents of other kinds (for example the
	// workloads of a dev folder or a Namespace in the same file) instead of
	// reporting them.
	SkipUnknownKinds bool
}

// IsPolicyFile reports whether a path looks like a YAML policy file.
func IsPolicyFile(path string) bool {
	ext := strings.ToLower(filepath.Ext(path))
	return ext == ".yaml" || ext == ".yml" || ext == ".json"
}

// LoadPaths reads every YAML file named by paths (files, or directories
// walked recursively for *.yaml, *.yml and *.json) and returns the
// validated set. Any error rejects everything: no partial set is returned.
func LoadPaths(opts LoadOptions, paths ...string) (*Set, error) {
	var files []string
	walked := map[string]bool{} // found in a directory, not named
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
		if !st.IsDir() {
			files = append(files, p)
			continue
		}
		err = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			name := d.Name()
			if path != p && (strings.HasPrefix(name, ".") || strings.HasSuffix(name, "~")) {
				if d.IsDir() {
					return filepath.SkipDir // .git, editor state
				}
				return nil
			}
			if !d.IsDir() && IsPolicyFile(path) {
				files = append(files, path)
				walked[path] = true
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
	}
	sort.Strings(files)
	set := &Set{}
	var errs ErrorList
	var other []error
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			other = append(other, fmt.Errorf("policy: %w", err))
			continue
		}
		if walked[f] {
			if reason := notPolicyFile(f, data); reason != "" {
				set.Skipped = append(set.Skipped, SkippedFile{Path: f, Reason: reason})
				continue
			}
		}
		s, err := Parse(f, data, opts)
		if err != nil {
			if l := AsErrorList(err); l != nil {
				errs = append(errs, l...)
				continue
			}
			other = append(other, err)
			continue
		}
		set.Authorization = append(set.Authorization, s.Authorization...)
		set.Egress = append(set.Egress, s.Egress...)
		set.RequestAuthentication = append(set.RequestAuthentication, s.RequestAuthentication...)
		set.Warnings = append(set.Warnings, s.Warnings...)
	}
	if len(other) > 0 {
		return nil, errors.Join(append(other, nilIfEmpty(errs))...)
	}
	if len(errs) > 0 {
		return nil, errs
	}
	if dup := set.duplicates(); len(dup) > 0 {
		return nil, dup
	}
	set.sort()
	return set, nil
}

// notPolicyFile says why data, a file found in a directory, holds no
// policy document ("" when it holds one, or may: then it is parsed
// strictly). A file is a policy file when any document names a policy
// kind or a policy API group, or is an object without kind that has a
// spec (a policy that lost its kind must be reported, not skipped); a
// file that is not valid YAML is reported too.
func notPolicyFile(file string, data []byte) string {
	var first string
	policyDoc := false
	docs, err := Documents(file, data)
	for _, root := range docs {
		var why string
		switch root.Kind {
		case yaml.MappingNode:
			var apiVersion, kind string
			hasSpec := false
			for i := 0; i+1 < len(root.Content); i += 2 {
				switch root.Content[i].Value {
				case "apiVersion":
					apiVersion = root.Content[i+1].Value
				case "kind":
					kind = root.Content[i+1].Value
				case "spec":
					hasSpec = true
				}
			}
			group, _, _ := strings.Cut(apiVersion, "/")
			switch {
			case kind == KindAuthorizationPolicy || kind == KindEgressPolicy || kind == KindRequestAuthentication,
				group == "security.kordon.dev" || group == "security.istio.io",
				kind == "" && hasSpec:
				policyDoc = true
			case kind == "":
				why = "an object without apiVersion and kind"
			default:
				why = fmt.Sprintf("kind %s", kind)
				if apiVersion != "" {
					why = fmt.Sprintf("kind %s (%s)", kind, apiVersion)
				}
			}
		case yaml.SequenceNode:
			why = "a list"
			switch strings.TrimSuffix(strings.TrimSuffix(filepath.Base(file), ".yaml"), ".yml") {
			case "workloads", "services":
				why = "a list (kordon dev's " + filepath.Base(file) + ")"
			}
		default:
			why = kindName(root)
		}
		if first == "" {
			first = why
		}
	}
	switch {
	case err != nil || policyDoc:
		return ""
	case first == "":
		return "no documents"
	}
	return "not a policy file: " + first
}

func nilIfEmpty(l ErrorList) error {
	if len(l) == 0 {
		return nil
	}
	return l
}

// duplicates reports two objects of the same kind with the same
// namespace/name, which would silently shadow each other.
func (s *Set) duplicates() ErrorList {
	var errs ErrorList
	seen := map[string]*Positions{}
	check := func(kind string, m ObjectMeta, pos *Positions) {
		key := kind + "/" + m.Namespace + "/" + m.Name
		if first, ok := seen[key]; ok {
			errs = append(errs, pos.Errorf("metadata.name", "duplicate %s %s/%s (first defined at %s)", kind, m.Namespace, m.Name, first.Of("metadata.name")))
			return
		}
		seen[key] = pos
	}
	for _, p := range s.Authorization {
		check(KindAuthorizationPolicy, p.Metadata, p.Pos)
	}
	for _, p := range s.RequestAuthentication {
		check(KindRequestAuthentication, p.Metadata, p.Pos)
	}
	for _, p := range s.Egress {
		check(KindEgressPolicy, p.Metadata, p.Pos)
	}
	errs.sortErrors()
	return errs
}

// Parse decodes and validates every document in one file's content. The
// whole file is rejected if any document is invalid.
func Parse(file string, data []byte, opts LoadOptions) (*Set, error) {
	if opts.DefaultNamespace == "" {
		opts.DefaultNamespace = "default"
	}
	set := &Set{}
	var errs ErrorList
	docs, err := Documents(file, data)
	if err != nil {
		return nil, err
	}
	for _, root := range docs {
		if err := parseDocument(file, root, opts, set); err != nil {
			errs = append(errs, AsErrorList(err)...)
		}
	}
	if len(errs) > 0 {
		errs.sortErrors()
		return nil, errs
	}
	return set, nil
}

// parseDocument decodes one document, dispatching on apiVersion and kind.
func parseDocument(file string, root *yaml.Node, opts LoadOptions, set *Set) error {
	var tm TypeMeta
	var apiNode, kindNode *yaml.Node = root, root
	if root.Kind != yaml.MappingNode {
		return ErrorList{{Pos: Position{File: file, Line: root.Line, Column: root.Column}, Msg: "expected a Kubernetes object (a mapping with apiVersion and kind), got " + kindName(root)}}
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		switch root.Content[i].Value {
		case "apiVersion":
			apiNode = root.Content[i+1]
			tm.APIVersion = apiNode.Value
		case "kind":
			kindNode = root.Content[i+1]
			tm.Kind = kindNode.Value
		}
	}
	pos := func(n *yaml.Node) Position { return Position{File: file, Line: n.Line, Column: n.Column} }
	// decode decodes the document into obj, fills the default namespace
	// and validates it.
	decode := func(obj any, pos **Positions, meta *ObjectMeta, validate func() ErrorList) error {
		p, err := DecodeNode(file, root, obj)
		*pos = p
		if err != nil {
			return err
		}
		if meta.Namespace == "" {
			meta.Namespace = opts.DefaultNamespace
		}
		if errs := validate(); len(errs) > 0 {
			return errs
		}
		return nil
	}
	istioVersions := func(kind string) error {
		switch tm.APIVersion {
		case GroupVersion, IstioV1, IstioV1beta1:
			return nil
		}
		return ErrorList{{Pos: pos(apiNode), Field: "apiVersion", Msg: fmt.Sprintf("unsupported apiVersion %q for %s (want %s, %s or %s)", tm.APIVersion, kind, GroupVersion, IstioV1, IstioV1beta1)}}
	}
	switch tm.Kind {
	case KindAuthorizationPolicy:
		if err := istioVersions(tm.Kind); err != nil {
			return err
		}
		p := &AuthorizationPolicy{}
		if err := decode(p, &p.Pos, &p.Metadata, func() ErrorList { return validateAuthorizationPolicy(p) }); err != nil {
			return err
		}
		set.Authorization = append(set.Authorization, p)
		set.Warnings = append(set.Warnings, PathWarnings(p)...)
	case KindRequestAuthentication:
		if err := istioVersions(tm.Kind); err != nil {
			return err
		}
		p := &RequestAuthentication{}
		if err := decode(p, &p.Pos, &p.Metadata, func() ErrorList { return validateRequestAuthentication(p) }); err != nil {
			return err
		}
		set.RequestAuthentication = append(set.RequestAuthentication, p)
	case KindEgressPolicy:
		if tm.APIVersion != GroupVersion {
			return ErrorList{{Pos: pos(apiNode), Field: "apiVersion", Msg: fmt.Sprintf("unsupported apiVersion %q for EgressPolicy (want %s)", tm.APIVersion, GroupVersion)}}
		}
		p := &EgressPolicy{}
		if err := decode(p, &p.Pos, &p.Metadata, func() ErrorList { return validateEgressPolicy(p) }); err != nil {
			return err
		}
		set.Egress = append(set.Egress, p)
	case "":
		return ErrorList{{Pos: pos(root), Field: "kind", Msg: "missing kind"}}
	default:
		if opts.SkipUnknownKinds {
			return nil
		}
		return ErrorList{{Pos: pos(kindNode), Field: "kind", Msg: fmt.Sprintf("unsupported kind %q (want %s, %s or %s)", tm.Kind, KindAuthorizationPolicy, KindRequestAuthentication, KindEgressPolicy)}}
	}
	return nil
}

// validateMeta checks the metadata every kind shares.
func validateMeta(m ObjectMeta, pos *Positions) ErrorList {
	var errs ErrorList
	if m.Name == "" {
		errs = append(errs, pos.Errorf("metadata.name", "required"))
	} else if msg := dns1123Subdomain(m.Name); msg != "" {
		errs = append(errs, pos.Errorf("metadata.name", "%s", msg))
	}
	if msg := dns1123Label(m.Namespace); msg != "" {
		errs = append(errs, pos.Errorf("metadata.namespace", "%s", msg))
	}
	return errs
}

// dns1123Label returns why s is not a valid DNS-1123 label ("" if valid).
func dns1123Label(s string) string {
	if len(s) == 0 || len(s) > 63 {
		return fmt.Sprintf("%q must be 1 to 63 characters", s)
	}
	for i, c := range s {
		alnum := (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
		if !alnum && !(c == '-' && i > 0 && i < len(s)-1) {
			return fmt.Sprintf("%q must consist of lower case alphanumeric characters or '-', and start and end with an alphanumeric character", s)
		}
	}
	return ""
}

// dns1123Subdomain returns why s is not a valid DNS-1123 subdomain.
func dns1123Subdomain(s string) string {
	if len(s) > 253 {
		return fmt.Sprintf("%q must be no more than 253 characters", s)
	}
	for _, l := range strings.Split(s, ".") {
		if msg := dns1123Label(l); msg != "" {
			return fmt.Sprintf("%q must be a lower case RFC 1123 subdomain", s)
		}
	}
	return ""
}
