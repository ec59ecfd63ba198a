package main

// envelope.go: the JSON-RPC 2.0 envelope of one request line, checked in a
// single pass (PROTOCOL §3). encoding/json alone cannot do this: it matches
// keys without regard to case, keeps the last of duplicate keys, and its
// Token API costs more than the rest of a ping together.

import (
	"encoding/json"
	"unicode/utf8"
)

// request is a decoded envelope.
type request struct {
	id     json.RawMessage // nil for a notification
	method string
	params json.RawMessage // nil, or an object
}

// response is the envelope written back.
type response struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Result  any             `json:"result,omitempty"`
	Error   *rpcError       `json:"error,omitempty"`
}

var nullID = json.RawMessage("null")

// maxDepth bounds nesting in a request: real requests nest two or three
// levels, and the scanner recurses.
const maxDepth = 64

// member is one top-level member of the request object.
type member struct {
	key string
	raw []byte
}

// jsonScanner validates JSON text. It records the first duplicate key at
// any depth, and the top-level object's members.
type jsonScanner struct {
	b       []byte
	i       int
	dup     string // first duplicate key found
	deep    bool   // nesting went past maxDepth
	members []member
}

// parseRequest checks one line against PROTOCOL §3. On error it returns the
// request so far when its id could be read, so the answer can carry it.
func parseRequest(line []byte) (*request, error) {
	if !utf8.Valid(line) {
		return nil, errorf(kindParse, "the line is not valid UTF-8")
	}
	s := &jsonScanner{b: line}
	s.ws()
	first := byte(0)
	if s.i < len(s.b) {
		first = s.b[s.i]
	}
	if !s.value(0) {
		if s.deep {
			return nil, errorf(kindInvalidRequest, "the request nests deeper than %d levels", maxDepth)
		}
		return nil, errorf(kindParse, "the line is not JSON (at byte %d)", s.i+1)
	}
	s.ws()
	if s.i != len(s.b) {
		return nil, errorf(kindParse, "unexpected data after the JSON object at byte %d", s.i+1)
	}
	switch first {
	case '{':
	case '[':
		return nil, errorf(kindInvalidRequest, "batches are not supported: send one request object per line")
	default:
		return nil, errorf(kindInvalidRequest, "a request must be a JSON object")
	}
	req := &request{}
	// The id first, so every later error can carry it.
	for _, m := range s.members {
		if m.key == "id" {
			if c := m.raw[0]; c != '"' && c != '-' && (c < '0' || c > '9') {
				return nil, errorf(kindInvalidRequest, "id must be a string or a number")
			}
			req.id = m.raw
		}
	}
	if s.dup != "" {
		return req, errorf(kindInvalidRequest, "duplicate key %q", s.dup)
	}
	hasMethod := false
	for _, m := range s.members {
		switch m.key {
		case "id":
		case "jsonrpc":
			var v string
			if json.Unmarshal(m.raw, &v) != nil || v != "2.0" {
				return req, errorf(kindInvalidRequest, `jsonrpc must be "2.0"`)
			}
		case "method":
			if m.raw[0] != '"' || json.Unmarshal(m.raw, &req.method) != nil {
				return req, errorf(kindInvalidRequest, "method must be a string")
			}
			hasMethod = true
		case "params":
			if m.raw[0] != '{' {
				return req, errorf(kindInvalidParams, "params must be an object")
			}
			req.params = m.raw
		default:
			return req, errorf(kindInvalidRequest, "unknown member %q in the request (members are jsonrpc, id, method, params)", m.key)
		}
	}
	if !hasMethod {
		return req, errorf(kindInvalidRequest, "the request has no method")
	}
	return req, nil
}

func (s *jsonScanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\r', '\n':
			s.i++
		default:
			return
		}
	}
}

// value scans one JSON value at depth, reporting whether it is valid.
func (s *jsonScanner) value(depth int) bool {
	if s.i >= len(s.b) {
		return false
	}
	switch c := s.b[s.i]; {
	case c == '{':
		return s.object(depth + 1)
	case c == '[':
		return s.array(depth + 1)
	case c == '"':
		_, ok := s.str()
		return ok
	case c == '-' || c >= '0' && c <= '9':
		return s.number()
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	}
	return false
}

func (s *jsonScanner) object(depth int) bool {
	if depth > maxDepth {
		s.deep = true
		return false
	}
	s.i++ // '{'
	var keys []string
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == '}' {
		s.i++
		return true
	}
	for {
		s.ws()
		if s.i >= len(s.b) || s.b[s.i] != '"' {
			return false
		}
		key, ok := s.str()
		if !ok {
			return false
		}
		if s.dup == "" {
			for _, k := range keys {
				if k == key {
					s.dup = key
				}
			}
			keys = append(keys, key)
		}
		s.ws()
		if s.i >= len(s.b) || s.b[s.i] != ':' {
			return false
		}
		s.i++
		s.ws()
		start := s.i
		if !s.value(depth) {
			return false
		}
		if depth == 1 {
			s.members = append(s.members, member{key, s.b[start:s.i]})
		}
		s.ws()
		if s.i >= len(s.b) {
			return false
		}
		switch s.b[s.i] {
		case ',':
			s.i++
		case '}':
			s.i++
			return true
		default:
			return false
		}
	}
}

func (s *jsonScanner) array(depth int) bool {
	if depth > maxDepth {
		s.deep = true
		return false
	}
	s.i++ // '['
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == ']' {
		s.i++
		return true
	}
	for {
		s.ws()
		if !s.value(depth) {
			return false
		}
		s.ws()
		if s.i >= len(s.b) {
			return false
		}
		switch s.b[s.i] {
		case ',':
			s.i++
		case ']':
			s.i++
			return true
		default:
			return false
		}
	}
}

// str scans a string and returns its decoded value (decoding only when it
// has escapes, which keys rarely do).
func (s *jsonScanner) str() (string, bool) {
	start := s.i
	s.i++ // '"'
	escaped := false
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			s.i++
			raw := s.b[start:s.i]
			if !escaped {
				return string(raw[1 : len(raw)-1]), true
			}
			var v string
			if json.Unmarshal(raw, &v) != nil {
				return "", false
			}
			return v, true
		case c < 0x20:
			return "", false
		case c == '\\':
			escaped = true
			s.i++
			if s.i >= len(s.b) {
				return "", false
			}
			switch s.b[s.i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i++
			case 'u':
				if s.i+4 >= len(s.b) {
					return "", false
				}
				for _, h := range s.b[s.i+1 : s.i+5] {
					if !(h >= '0' && h <= '9' || h >= 'a' && h <= 'f' || h >= 'A' && h <= 'F') {
						return "", false
					}
				}
				s.i += 5
			default:
				return "", false
			}
		default:
			s.i++
		}
	}
	return "", false
}

// number scans -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *jsonScanner) number() bool {
	if s.b[s.i] == '-' {
		s.i++
	}
	if s.i >= len(s.b) {
		return false
	}
	if s.b[s.i] == '0' {
		s.i++
	} else if !s.digits() {
		return false
	}
	if s.i < len(s.b) && s.b[s.i] == '.' {
		s.i++
		if !s.digits() {
			return false
		}
	}
	if s.i < len(s.b) && (s.b[s.i] == 'e' || s.b[s.i] == 'E') {
		s.i++
		if s.i < len(s.b) && (s.b[s.i] == '+' || s.b[s.i] == '-') {
			s.i++
		}
		if !s.digits() {
			return false
		}
	}
	return true
}

// digits scans one or more decimal digits.
func (s *jsonScanner) digits() bool {
	start := s.i
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
	}
	return s.i > start
}

func (s *jsonScanner) literal(word string) bool {
	if len(s.b)-s.i < len(word) || string(s.b[s.i:s.i+len(word)]) != word {
		return false
	}
	s.i += len(word)
	return true
}
