package policy

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// decodeTarget exercises every shape Decode supports: json and yaml
// tags, an embedded struct, an inline field, an embedded pointer, maps,
// slices, pointers, numbers of several sizes, a TextUnmarshaler and free
// form content.
type decodeTarget struct {
	decodeEmbedded
	Inline   decodeInline           `yaml:",inline"`
	Name     string                 `json:"name"`
	Selector map[string]string      `json:"selector,omitempty"`
	Port     uint16                 `yaml:"port"`
	Weight   int8                   `json:"weight"`
	Ratio    float64                `json:"ratio"`
	On       *bool                  `json:"on"`
	Addr     netip.Addr             `json:"addr"`
	Items    []decodeItem           `json:"items"`
	ByName   map[string]*decodeItem `json:"byName"`
	Free     any                    `json:"free"`
	Skipped  string                 `json:"-"`
	Untagged string
	*DecodePtr
}

type decodeEmbedded struct {
	Kind string `json:"kind"`
}

type decodeInline struct {
	Zone string `yaml:"zone"`
}

// DecodePtr is embedded by pointer (exported: reflect can allocate it).
type DecodePtr struct {
	Extra string `json:"extra"`
}

type decodeItem struct {
	Host  string   `json:"host"`
	Ports []string `json:"ports"`
}

// TestDecodeAccepts: the same document in YAML and in JSON decodes to the
// same value, every shape filled.
func TestDecodeAccepts(t *testing.T) {
	t.Parallel()
	on := true
	want := decodeTarget{
		decodeEmbedded: decodeEmbedded{Kind: "K"}, Inline: decodeInline{Zone: "z"},
		Name: "n", Selector: map[string]string{"app": "a"}, Port: 443, Weight: -3, Ratio: 0.5, On: &on,
		Addr: netip.MustParseAddr("10.0.0.1"), Items: []decodeItem{{Host: "h", Ports: []string{"80", "http"}}},
		ByName: map[string]*decodeItem{"x": {Host: "y"}}, Free: map[string]any{"a": []any{1, "b"}},
		Untagged: "u", DecodePtr: &DecodePtr{Extra: "e"},
	}
	for _, tc := range []struct{ name, file, in string }{
		{name: "yaml", file: "t.yaml", in: "kind: K\nzone: z\nname: n\nselector: {app: a}\nport: 443\nweight: -3\nratio: 0.5\non: true\naddr: 10.0.0.1\n" +
			"items:\n- host: h\n  ports: [80, http]\nbyName: {x: {host: y}}\nfree: {a: [1, b]}\nUntagged: u\nextra: e\n"},
		{name: "json", file: "t.json", in: `{"kind": "K", "zone": "z", "name": "n", "selector": {"app": "a"}, "port": 443, "weight": -3, "ratio": 0.5, "on": true,
	"addr": "10.0.0.1", "items": [{"host": "h", "ports": ["80", "http"]}], "byName": {"x": {"host": "y"}}, "free": {"a": [1, "b"]}, "Untagged": "u", "extra": "e"}`},
		{name: "json detected without extension", file: "kind/ns/name", in: `{"kind":"K","zone":"z","name":"n","selector":{"app":"a"},"port":443,"weight":-3,"ratio":0.5,"on":true,` +
			`"addr":"10.0.0.1","items":[{"host":"h","ports":["80","http"]}],"byName":{"x":{"host":"y"}},"free":{"a":[1,"b"]},"Untagged":"u","extra":"e"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var got decodeTarget
			pos, err := Decode(tc.file, []byte(tc.in), &got)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("got %+v\nwant %+v", got, want)
			}
			if p := pos.Of("items[0].ports[1]"); p.Line == 0 || p.File != tc.file {
				t.Fatalf("no position for items[0].ports[1]: %v", p)
			}
		})
	}
}

// TestDecodeErrors: every kind of bad input, in YAML and in JSON, with
// the exact messages users see. The golden file
// testdata/decode-errors.golden is rewritten with -update.
func TestDecodeErrors(t *testing.T) {
	t.Parallel()
	cases := []struct{ name, file, in string }{
		{name: "unknown field with suggestion", file: "t.yaml", in: "name: n\nselctor: {a: b}\n"},
		{name: "unknown field in other case", file: "t.yaml", in: "Selector: {a: b}\n"},
		{name: "unknown field without suggestion", file: "t.yaml", in: "name: n\ncompletely: x\n"},
		{name: "unknown field deep", file: "t.yaml", in: "items:\n- host: h\n  prots: [1]\n"},
		{name: "unknown field in a map value", file: "t.yaml", in: "byName:\n  a: {hots: x}\n"},
		{name: "skipped field is unknown", file: "t.yaml", in: "Skipped: x\n"},
		{name: "duplicate field", file: "t.yaml", in: "name: a\nport: 1\nname: b\n"},
		{name: "duplicate map key", file: "t.yaml", in: "selector:\n  app: a\n  app: b\n"},
		{name: "duplicate inline field", file: "t.yaml", in: "zone: a\nzone: b\n"},
		{name: "wrong type string for list", file: "t.yaml", in: "items: x\n"},
		{name: "wrong type list for string", file: "t.yaml", in: "name: [a]\n"},
		{name: "wrong type object for list element", file: "t.yaml", in: "items:\n- host: h\n  ports: [{a: b}]\n"},
		{name: "not an integer", file: "t.yaml", in: "port: https\n"},
		{name: "integer out of range", file: "t.yaml", in: "port: 70000\nweight: 200\n"},
		{name: "negative unsigned", file: "t.yaml", in: "port: -1\n"},
		{name: "float for integer", file: "t.yaml", in: "port: 1.5\n"},
		{name: "not a boolean", file: "t.yaml", in: "on: maybe\n"},
		{name: "not a number", file: "t.yaml", in: "ratio: lots\n"},
		{name: "text unmarshaler rejects", file: "t.yaml", in: "addr: 10.0.0.300\n"},
		{name: "alias", file: "t.yaml", in: "name: &x a\nUntagged: *x\n"},
		{name: "not an object", file: "t.yaml", in: "- a\n"},
		{name: "two documents", file: "t.yaml", in: "name: a\n---\nname: b\n"},
		{name: "yaml syntax", file: "t.yaml", in: "name: a\n  port: [\n"},
		{name: "yaml unclosed quote", file: "t.yaml", in: "name: \"a\n"},
		{name: "several errors sorted", file: "t.yaml", in: "port: x\nitems: 1\nnam: a\n"},
		{name: "json key case is exact", file: "t.json", in: "{\n  \"Selector\": {\"a\": \"b\"}\n}\n"},
		{name: "json duplicate key", file: "t.json", in: "{\n  \"name\": \"a\",\n  \"name\": \"b\"\n}\n"},
		{name: "json duplicate nested key", file: "t.json", in: `{"selector": {"app": "a", "app": "b"}}`},
		{name: "json wrong type", file: "t.json", in: "{\"items\": [\n  {\"host\": 5, \"ports\": \"80\"}\n]}\n"},
		{name: "json unknown field", file: "t.json", in: "{\"name\": \"n\",\n \"selectr\": {}}\n"},
		{name: "json syntax error", file: "t.json", in: "{\"name\": \"n\",\n \"port\": }\n"},
		{name: "json truncated", file: "t.json", in: "{\"name\": \"n\""},
		{name: "json two values", file: "t.json", in: "{\"name\": \"a\"}\n{\"name\": \"b\"}\n"},
		{name: "json surrogate escape is fine, unknown field is not", file: "t.json", in: "{\"name\": \"\\ud83d\\ude00\", \"nme\": 1}"},
	}
	var out bytes.Buffer
	for _, tc := range cases {
		var v decodeTarget
		_, err := Decode(tc.file, []byte(tc.in), &v)
		fmt.Fprintf(&out, "== %s (%s)\n%s\n", tc.name, tc.file, indent(tc.in))
		if err == nil {
			t.Errorf("%s: no error", tc.name)
			continue
		}
		if AsErrorList(err) == nil {
			t.Errorf("%s: error without a position: %v", tc.name, err)
		}
		fmt.Fprintf(&out, "-- error\n%s\n\n", err)
	}
	golden := filepath.Join("testdata", "decode-errors.golden")
	if *update {
		if err := os.WriteFile(golden, out.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update)", err)
	}
	if got := out.String(); got != string(want) {
		t.Errorf("decode errors differ from %s (go test -update rewrites it):\n%s", golden, lineDiff(string(want), got))
	}
}

func indent(s string) string {
	return "   | " + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n   | ")
}

// lineDiff lists the first lines that differ.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := 0; i < max(len(w), len(g)) && b.Len() < 2000; i++ {
		var a, c string
		if i < len(w) {
			a = w[i]
		}
		if i < len(g) {
			c = g[i]
		}
		if a != c {
			fmt.Fprintf(&b, "line %d:\n  want %q\n  got  %q\n", i+1, a, c)
		}
	}
	return b.String()
}

// FuzzDecode: arbitrary YAML or JSON never panics the decoder; every
// error carries a position inside the input; what decodes from JSON
// decodes the same from the YAML rendering of the same nodes.
func FuzzDecode(f *testing.F) {
	f.Add([]byte("kind: K\nzone: z\nname: n\nselector: {app: a}\nport: 443\nitems:\n- host: h\n  ports: [80]\n"), false)
	f.Add([]byte(`{"name": "n", "name": "m", "Selector": {}, "port": 70000, "addr": "::1", "free": [1, {"a": null}]}`), true)
	f.Add([]byte("- &a [*a]"), false)
	f.Add([]byte("{\"a\": \"\\ud83d\"}"), true)
	f.Fuzz(func(t *testing.T, data []byte, asJSON bool) {
		file := "f.yaml"
		if asJSON {
			file = "f.json"
		}
		var v decodeTarget
		_, err := Decode(file, data, &v)
		if err == nil {
			return
		}
		l := AsErrorList(err)
		if l == nil {
			t.Fatalf("error without positions: %v", err)
		}
		// YAML breaks lines at \r too, and libyaml at NEL, LS and PS.
		lines := 1
		for _, sep := range []string{"\n", "\r", "\u0085", "\u2028", "\u2029"} {
			lines += bytes.Count(data, []byte(sep))
		}
		for _, e := range l {
			if e.Pos.File != file || e.Pos.Line < 1 || e.Pos.Line > lines || e.Pos.Column < 1 {
				t.Fatalf("position %v outside the input (%d lines): %v", e.Pos, lines, e)
			}
		}
	})
}
