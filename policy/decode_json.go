package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"path/filepath"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// isJSON reports whether data is to be read as JSON: the file says so, or
// data is a JSON object or array (as the API server's objects are). YAML
// flow style such as {a: b} is not valid JSON and stays YAML.
func isJSON(file string, data []byte) bool {
	if strings.EqualFold(filepath.Ext(file), ".json") {
		return true
	}
	t := bytes.TrimSpace(data)
	return len(t) > 0 && (t[0] == '{' || t[0] == '[') && json.Valid(t)
}

// jsonDocuments parses the JSON values of data into yaml.Node trees with
// the positions of their tokens, so JSON goes through the same strict
// walk as YAML: duplicate keys, exact-case field names and types are
// checked there. It does not hand JSON to yaml.v3, which rejects valid
// JSON (UTF-16 surrogate escapes) and has no notion of a JSON file.
func jsonDocuments(file string, data []byte) ([]*yaml.Node, error) {
	p := &jsonParser{file: file, data: data, dec: json.NewDecoder(bytes.NewReader(data))}
	p.dec.UseNumber()
	var out []*yaml.Node
	for {
		start := p.next()
		tok, err := p.dec.Token()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, ErrorList{p.syntaxError(err)}
		}
		n, err := p.value(tok, start)
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF // inside a value
		}
		if err != nil {
			return nil, ErrorList{p.syntaxError(err)}
		}
		if n.Tag != "!!null" {
			out = append(out, n)
		}
	}
}

type jsonParser struct {
	file string
	data []byte
	dec  *json.Decoder
}

// next returns the offset where the next token starts: after the
// decoder's offset, past white space and the separators Token skips.
func (p *jsonParser) next() int {
	off := int(p.dec.InputOffset())
	for off < len(p.data) {
		switch p.data[off] {
		case ' ', '\t', '\r', '\n', ',', ':':
			off++
			continue
		}
		break
	}
	return off
}

func (p *jsonParser) node(kind yaml.Kind, tag, value string, off int) *yaml.Node {
	pos := offsetPosition(p.file, p.data, off)
	return &yaml.Node{Kind: kind, Tag: tag, Value: value, Line: pos.Line, Column: pos.Column}
}

// value builds the node of the value that starts with tok at offset off.
func (p *jsonParser) value(tok json.Token, off int) (*yaml.Node, error) {
	switch t := tok.(type) {
	case json.Delim:
		n := p.node(yaml.MappingNode, "!!map", "", off)
		if t == '[' {
			n = p.node(yaml.SequenceNode, "!!seq", "", off)
		}
		for p.dec.More() {
			start := p.next()
			tok, err := p.dec.Token()
			if err != nil {
				return nil, err
			}
			c, err := p.value(tok, start)
			if err != nil {
				return nil, err
			}
			n.Content = append(n.Content, c)
		}
		if _, err := p.dec.Token(); err != nil { // the closing delimiter
			return nil, err
		}
		return n, nil
	case string:
		n := p.node(yaml.ScalarNode, "!!str", t, off)
		n.Style = yaml.DoubleQuotedStyle
		return n, nil
	case json.Number:
		tag := "!!float"
		if _, err := strconv.ParseInt(t.String(), 10, 64); err == nil {
			tag = "!!int"
		} else if _, err := strconv.ParseUint(t.String(), 10, 64); err == nil {
			tag = "!!int"
		}
		return p.node(yaml.ScalarNode, tag, t.String(), off), nil
	case bool:
		return p.node(yaml.ScalarNode, "!!bool", strconv.FormatBool(t), off), nil
	case nil:
		return p.node(yaml.ScalarNode, "!!null", "null", off), nil
	}
	return nil, errors.New("unexpected token")
}

// syntaxError positions a JSON syntax error.
func (p *jsonParser) syntaxError(err error) *FieldError {
	pos := endOf(p.file, p.data)
	var se *json.SyntaxError
	if errors.As(err, &se) {
		pos = offsetPosition(p.file, p.data, int(se.Offset))
	}
	msg := err.Error()
	if errors.Is(err, io.ErrUnexpectedEOF) {
		msg = "unexpected end of input"
	}
	return &FieldError{Pos: pos, Msg: "invalid JSON: " + msg}
}
