package main

// envelope.go: the JSON-RPC 2.0 envelope of one request line, checked in a
// single pass (PROTOCOL §3). encoding/json alone cannot do this: it matches
// keys without regard to case, keeps the last of duplicate keys, and its
// Token API costs more than the rest of a ping together.

import (
	"bytes"
	"encoding/json"
	"unicode/utf16"
	"unicode/utf8"
)

// request is a decoded envelope.
type request struct {
	id     json.RawMessage // nil for a notification (or an id that is not a string or number)
	method string
	params json.RawMessage // nil, or an object
	// moreParams are the other params members of a line that repeats it
	// (refused), which must agree on a body for it to be found.
	moreParams []json.RawMessage
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
// levels. The scanner keeps its own stack, so deeper text is still checked
// to its end: invalid is parse_error, valid but deep invalid_request.
const maxDepth = 64

// member is one member of the object scanned.
type member struct {
	key string
	raw []byte
}

// jsonScanner validates JSON text. It records the first duplicate key at
// any depth, and the members of the outermost object.
type jsonScanner struct {
	b       []byte
	i       int
	dup     *string // first duplicate key found
	deep    bool    // nesting went past maxDepth
	members []member
	open    []byte   // the objects ('{') and arrays ('[') open at i, a byte each
	keys    []keySet // the keys seen at each open level, down to maxDepth
	key     string   // the outermost object's member being scanned, from start
	start   int
	inline  [8]byte
}

// parseRequest checks one line against PROTOCOL §3. On error it returns the
// request so far when the line is an object (its id when that could be
// read, and its params), so the answer can carry the id and a declared body
// can still be skipped.
func parseRequest(line []byte) (*request, error) {
	s := &jsonScanner{b: line}
	s.open = s.inline[:0]
	s.ws()
	first := byte(0)
	if s.i < len(s.b) {
		first = s.b[s.i]
	}
	// Invalid UTF-8 is a parse error, found after the structure so that an
	// object's id and params can still be read (its body skipped).
	valid := utf8.Valid(line)
	if !s.value() {
		if !valid {
			return nil, errorf(kindParse, "the line is not valid UTF-8")
		}
		return nil, errorf(kindParse, "the line is not JSON (at byte %d)", s.i+1)
	}
	s.ws()
	if s.i != len(s.b) {
		return nil, errorf(kindParse, "unexpected data after the JSON object at byte %d", s.i+1)
	}
	if !valid && (first != '{' || s.deep) {
		return nil, errorf(kindParse, "the line is not valid UTF-8")
	}
	if s.deep {
		return nil, errorf(kindInvalidRequest, "the request nests deeper than %d levels", maxDepth)
	}
	switch first {
	case '{':
	case '[':
		return nil, errorf(kindInvalidRequest, "batches are not supported: send one request object per line")
	default:
		return nil, errorf(kindInvalidRequest, "a request must be a JSON object")
	}
	// What later errors need first: the id, the method, and the params (for
	// a body that follows the line even when the line is refused).
	req := &request{}
	var idErr, methodErr, paramsErr *rpcError
	hasMethod := false
	for _, m := range s.members {
		switch m.key {
		case "id":
			if c := m.raw[0]; c != '"' && c != '-' && (c < '0' || c > '9') {
				idErr = errorf(kindInvalidRequest, "id must be a string or a number")
			} else {
				req.id = m.raw
			}
		case "method":
			hasMethod = true
			if m.raw[0] != '"' {
				methodErr = errorf(kindInvalidRequest, "method must be a string")
			} else {
				req.method = unquote(m.raw[1:len(m.raw)-1], false)
			}
		case "params":
			switch {
			case req.params != nil || paramsErr != nil:
				req.moreParams = append(req.moreParams, m.raw)
			case m.raw[0] != '{':
				paramsErr = errorf(kindInvalidParams, "params must be an object")
			default:
				req.params = m.raw
			}
		}
	}
	if !valid {
		return req, errorf(kindParse, "the line is not valid UTF-8")
	}
	if idErr != nil {
		req.id = nil
		return req, idErr
	}
	if s.dup != nil {
		return req, errorf(kindInvalidRequest, "duplicate key %q", clip(*s.dup, maxLogString))
	}
	for _, m := range s.members {
		switch m.key {
		case "id", "method", "params":
		case "jsonrpc":
			if string(m.raw) != `"2.0"` && (m.raw[0] != '"' || unquote(m.raw[1:len(m.raw)-1], false) != "2.0") {
				return req, errorf(kindInvalidRequest, `jsonrpc must be "2.0"`)
			}
		default:
			return req, errorf(kindInvalidRequest, "unknown member %q in the request (members are jsonrpc, id, method, params)", clip(m.key, maxLogString))
		}
	}
	switch {
	case methodErr != nil:
		return req, methodErr
	case !hasMethod:
		return req, errorf(kindInvalidRequest, "the request has no method")
	case paramsErr != nil:
		return req, paramsErr
	}
	return req, nil
}

// ws skips JSON white space: space, tab, CR and LF, nothing else (no form
// feed, no Unicode spaces).
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

// value scans one JSON value, reporting whether it is valid. Objects and
// arrays are tracked in s.open rather than by recursion, so no nesting can
// exhaust the goroutine's stack, and a deep line costs a byte a level.
func (s *jsonScanner) value() bool {
	base := len(s.open)
	for {
		// A value starts at s.i.
		if s.i >= len(s.b) {
			return false
		}
		switch c := s.b[s.i]; {
		case c == '{' || c == '[':
			s.i++
			s.push(c)
			s.ws()
			if s.i < len(s.b) && s.b[s.i] == c+2 { // '}' and ']' are 2 past '{' and '['
				s.i++
				s.open = s.open[:len(s.open)-1]
				break
			}
			if c == '{' && !s.member() {
				return false
			}
			continue
		case c == '"':
			if _, ok := s.str(false); !ok {
				return false
			}
		case c == '-' || c >= '0' && c <= '9':
			if !s.number() {
				return false
			}
		case c == 't':
			if !s.literal("true") {
				return false
			}
		case c == 'f':
			if !s.literal("false") {
				return false
			}
		case c == 'n':
			if !s.literal("null") {
				return false
			}
		default:
			return false
		}
		// A value ended at s.i: close what it ends, then expect the next.
		for {
			n := len(s.open)
			if n == base {
				return true
			}
			if n == 1 && s.open[0] == '{' {
				s.members = append(s.members, member{s.key, s.b[s.start:s.i]})
			}
			s.ws()
			if s.i >= len(s.b) {
				return false
			}
			c := s.b[s.i]
			s.i++
			if c == ',' {
				s.ws()
				if s.open[n-1] == '{' && !s.member() {
					return false
				}
				break
			}
			if c != s.open[n-1]+2 {
				return false
			}
			s.open = s.open[:n-1]
		}
	}
}

// push opens an object or array.
func (s *jsonScanner) push(c byte) {
	s.open = append(s.open, c)
	if n := len(s.open); n > maxDepth {
		s.deep = true
	} else {
		s.keys = append(s.keys[:n-1], keySet{})
	}
}

// member scans `"key" :` in the innermost object and the white space after
// it, noting a duplicate key.
func (s *jsonScanner) member() bool {
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		return false
	}
	n := len(s.open)
	record := n == 1 || n <= maxDepth && s.dup == nil
	key, ok := s.str(record)
	if !ok {
		return false
	}
	if record && s.keys[n-1].add(key) && s.dup == nil {
		s.dup = &key
	}
	s.ws()
	if s.i >= len(s.b) || s.b[s.i] != ':' {
		return false
	}
	s.i++
	s.ws()
	if n == 1 {
		s.key, s.start = key, s.i
	}
	return true
}

// keySet finds a repeated key of one object in linear time: the first few
// keys are compared in a list, more go in a map.
type keySet struct {
	list []string
	set  map[string]struct{}
}

// add adds k and reports whether it was there already.
func (ks *keySet) add(k string) bool {
	if ks.set != nil {
		n := len(ks.set)
		ks.set[k] = struct{}{} // one map operation: the length tells
		return len(ks.set) == n
	}
	for _, x := range ks.list {
		if x == k {
			return true
		}
	}
	ks.list = append(ks.list, k)
	if len(ks.list) > 16 {
		ks.set = make(map[string]struct{}, 2*len(ks.list))
		for _, x := range ks.list {
			ks.set[x] = struct{}{}
		}
		ks.list = nil
	}
	return false
}

// str scans a string; with decode, it returns its value too.
func (s *jsonScanner) str(decode bool) (string, bool) {
	start := s.i
	s.i++ // '"'
	escaped := false
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			s.i++
			if !decode {
				return "", true
			}
			raw := s.b[start+1 : s.i-1]
			if !escaped {
				return string(raw), true
			}
			return unquote(raw, true), true
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
					if hexVal(h) < 0 {
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

func hexVal(h byte) rune {
	switch {
	case h >= '0' && h <= '9':
		return rune(h - '0')
	case h >= 'a' && h <= 'f':
		return rune(h - 'a' + 10)
	case h >= 'A' && h <= 'F':
		return rune(h - 'A' + 10)
	}
	return -1
}

// unquote decodes the escapes of a scanned string (without its quotes). A
// lone surrogate (\ud800 not followed by its pair) becomes U+FFFD, as
// encoding/json has it, or with wtf8 (for keys) its own three bytes
// (WTF-8), which are never valid UTF-8: two different lone surrogates stay
// different keys, and none equals a real character.
func unquote(raw []byte, wtf8 bool) string {
	if bytes.IndexByte(raw, '\\') < 0 {
		return string(raw)
	}
	out := make([]byte, 0, len(raw))
	for i := 0; i < len(raw); {
		c := raw[i]
		if c != '\\' {
			out = append(out, c)
			i++
			continue
		}
		e := raw[i+1]
		i += 2
		switch e {
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r := hex4(raw[i:])
			i += 4
			if utf16.IsSurrogate(r) {
				if r < 0xdc00 && i+6 <= len(raw) && raw[i] == '\\' && raw[i+1] == 'u' {
					if r2 := hex4(raw[i+2:]); r2 >= 0xdc00 && r2 <= 0xdfff {
						out = utf8.AppendRune(out, utf16.DecodeRune(r, r2))
						i += 6
						continue
					}
				}
				if wtf8 {
					out = append(out, 0xe0|byte(r>>12), 0x80|byte(r>>6)&0x3f, 0x80|byte(r)&0x3f)
					continue
				}
				r = utf8.RuneError
			}
			out = utf8.AppendRune(out, r)
		default: // '"', '\\', '/'
			out = append(out, e)
		}
	}
	return string(out)
}

// hex4 is the value of four hex digits (already checked).
func hex4(b []byte) rune {
	return hexVal(b[0])<<12 | hexVal(b[1])<<8 | hexVal(b[2])<<4 | hexVal(b[3])
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
