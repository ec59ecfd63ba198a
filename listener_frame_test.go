package main

// listener_frame_test.go: the command loop's framing: answers are never
// held back, every refused line is answered, declared bodies are skipped,
// and the JSON rules of PROTOCOL §3 (blank lines, depth, duplicate keys).

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"
)

// readAnswers reads answer lines from br until n have come, the connection
// ends, or wait passes without one.
func readAnswers(tc *tls.Conn, br *bufio.Reader, n int, wait time.Duration) []string {
	var got []string
	for len(got) < n {
		tc.SetReadDeadline(time.Now().Add(wait))
		line, err := br.ReadString('\n')
		if err != nil {
			break
		}
		got = append(got, strings.TrimSpace(line))
	}
	tc.SetReadDeadline(time.Time{})
	return got
}

// TestAnswerNotHeldBack: an answer leaves at once although what follows its
// line (a blank line, half of the next request) is already buffered, and
// when the client then half-closes (issue 13 #9).
func TestAnswerNotHeldBack(t *testing.T) {
	a := startAgent(t)
	tests := []struct {
		name      string
		send      string
		halfClose bool
	}{
		{"blank line after", `{"id":1,"method":"ping"}` + "\n\n", false},
		{"spaces line after", `{"id":1,"method":"ping"}` + "\n  \r\n", false},
		{"half a request after", `{"id":1,"method":"ping"}` + "\n" + `{"id":2,"me`, false},
		{"blank line, then half-close", `{"id":1,"method":"ping"}` + "\n\n", true},
		{"notification after", `{"id":1,"method":"ping"}` + "\n" + `{"method":"ping"}` + "\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tc, err := rawTLS(a, a.client, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer tc.Close()
			if _, err := io.WriteString(tc, tt.send); err != nil { // one write
				t.Fatal(err)
			}
			if tt.halfClose {
				if err := tc.CloseWrite(); err != nil {
					t.Fatal(err)
				}
			}
			got := readAnswers(tc, bufio.NewReader(tc), 1, 5*time.Second)
			if len(got) != 1 || !strings.Contains(got[0], `"id":1,"result":{"pong":true}`) {
				t.Fatalf("answers within 5s: %q, want the ping's", got)
			}
		})
	}
}

// TestEveryRefusedEnvelopeAnswered: whatever the order of its members, a
// line refused at the envelope is answered, with its id when it could be
// read (issue 13 #11), and the connection goes on serving.
func TestEveryRefusedEnvelopeAnswered(t *testing.T) {
	a := startAgent(t)
	tests := []struct{ name, line, want string }{
		{"mistyped ID after method", `{"method":"ping","ID":1}`, `unknown member \"ID\"`},
		{"mistyped ID before method", `{"ID":1,"method":"ping"}`, `unknown member \"ID\"`},
		{"bad jsonrpc after method", `{"method":"ping","jsonrpc":"1.0","id":2}`, `"id":2,"error":{"code":-32600`},
		{"bad jsonrpc after method, no id", `{"method":"ping","jsonrpc":"1.0"}`, `"id":null,"error":{"code":-32600`},
		{"unknown member after method", `{"method":"ping","extra":true,"id":3}`, `"id":3,"error":{"code":-32600,"message":"unknown member \"extra\"`},
		{"duplicate key after method", `{"method":"ping","method":"ping"}`, `duplicate key \"method\"`},
		{"params not an object after method", `{"method":"ping","params":7}`, `"id":null,"error":{"code":-32602`},
	}
	tc, err := rawTLS(a, a.client, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	br := bufio.NewReader(tc)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fmt.Fprintf(tc, "%s\n{\"id\":\"after\",\"method\":\"ping\"}\n", tt.line)
			got := readAnswers(tc, br, 2, 5*time.Second)
			if len(got) != 2 || !strings.Contains(got[0], tt.want) || !strings.Contains(got[1], `"id":"after","result"`) {
				t.Fatalf("answers %q, want the refusal (%s) and then the ping's", got, tt.want)
			}
			var r map[string]json.RawMessage
			if err := json.Unmarshal([]byte(got[0]), &r); err != nil || r["error"] == nil {
				t.Fatalf("refusal %q is not a JSON-RPC error", got[0])
			}
		})
	}
}
