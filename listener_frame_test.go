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

// trustedTLS opens a raw TLS connection as the trusted test client, closed
// at the test's end.
func trustedTLS(t testing.TB, a *testAgent) *tls.Conn {
	t.Helper()
	tc, err := rawTLS(a, a.client, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	return tc
}

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

// answersToAfter reads answer lines until the answer to the request with
// id "after", the connection's end, or wait without one.
func answersToAfter(tc *tls.Conn, br *bufio.Reader, wait time.Duration) []string {
	var got []string
	for {
		l := readAnswers(tc, br, 1, wait)
		got = append(got, l...)
		if len(l) == 0 || strings.Contains(l[0], `"id":"after"`) {
			return got
		}
	}
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
			tc := trustedTLS(t, a)
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

// TestRefusedLineBodySkipped: a line refused before its method and params
// are known good has the body its params declare skipped, so that body
// bytes are never read as requests (issue 11 #6). Each body here is a
// request of its own: were it read as one, its answer ("smuggled") would
// show.
func TestRefusedLineBodySkipped(t *testing.T) {
	a := startAgent(t)
	smuggled := `{"id":"smuggled","method":"ping"}` + "\n"
	body := fmt.Sprintf(`"size":%d`, len(smuggled))
	tests := []struct {
		name, line string
		want       string // in the first answer; "" for none (a notification)
		closes     bool   // the agent answers, then closes
	}{
		{"unknown method (version skew)", `{"id":1,"method":"file.append","params":{"path":"x",` + body + `}}`, `"id":1,"error":{"code":-32601`, false},
		{"unknown method, notification", `{"method":"file.append","params":{` + body + `}}`, "", false},
		{"unknown member", `{"id":2,"method":"file.upload","params":{"path":"x",` + body + `},"extra":1}`, `unknown member \"extra\"`, false},
		{"duplicate key", `{"id":3,"method":"file.upload","params":{"path":"x","path":"y",` + body + `}}`, `duplicate key \"path\"`, false},
		{"bad jsonrpc", `{"jsonrpc":"1.0","id":4,"method":"file.upload","params":{` + body + `}}`, `"id":4,"error":{"code":-32600`, false},
		{"bad id", `{"id":{},"method":"file.upload","params":{` + body + `}}`, `id must be a string or a number`, false},
		{"no method", `{"id":5,"params":{` + body + `}}`, `"id":5,"error":{"code":-32600`, false},
		{"invalid UTF-8 in a string", "{\"id\":6,\"method\":\"file.upload\",\"params\":{\"path\":\"caf\xe9\"," + body + "}}", `"code":-32700`, false},
		{"known method, unknown param", `{"id":7,"method":"file.upload","params":{"nope":1,` + body + `}}`, `unknown field \"nope\"`, false},
		{"body method, params not an object", `{"id":8,"method":"file.upload","params":[1]}`, `"id":8,"error":{"code":-32602`, true},
		{"size given twice", `{"id":9,"method":"nope","params":{"size":1,"size":50}}`, `duplicate key \"size\"`, true},
		{"params given twice, sizes differ", `{"id":10,"method":"nope","params":{"size":1},"params":{"size":50}}`, `duplicate key \"params\"`, true},
		{"params given twice, sizes agree", `{"id":14,"method":"nope","params":{` + body + `},"params":{` + body + `}}`, `duplicate key \"params\"`, false},
		{"size not an integer", `{"id":11,"method":"nope","params":{"size":"34"}}`, `"id":11,"error"`, true},
		{"size negative", `{"id":12,"method":"nope","params":{"size":-34}}`, `"id":12,"error"`, true},
		{"size over 16 MiB", `{"id":13,"method":"nope","params":{"size":16777217}}`, `"id":13,"error":{"code":-32601`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tc := trustedTLS(t, a)
			go fmt.Fprintf(tc, "%s\n%s{\"id\":\"after\",\"method\":\"ping\"}\n", tt.line, smuggled)
			got := answersToAfter(tc, bufio.NewReader(tc), 5*time.Second)
			for _, l := range got {
				if strings.Contains(l, "smuggled") {
					t.Fatalf("the body was read as a request: answers %q", got)
				}
			}
			want := 2
			if tt.want == "" || tt.closes {
				want = 1
			}
			if len(got) != want {
				t.Fatalf("answers %q, want %d", got, want)
			}
			if tt.want != "" && !strings.Contains(got[0], tt.want) {
				t.Fatalf("first answer %q, want it to contain %s", got[0], tt.want)
			}
			if !tt.closes && !strings.Contains(got[len(got)-1], `"id":"after","result"`) {
				t.Fatalf("the ping after the body was not answered: %q", got)
			}
		})
	}
	if err := pingWorks(a, a.client, nil); err != nil {
		t.Fatalf("agent stopped serving: %v", err)
	}
}

// manyKeysLine is a valid request line of about 1 MiB whose params hold
// n distinct keys.
func manyKeysLine(n int) []byte {
	var b strings.Builder
	b.WriteString(`{"id":1,"method":"ping","params":{`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"%d":0`, i)
	}
	b.WriteString("}}")
	return []byte(b.String())
}

// TestManyKeysCheckedInLinearTime: the duplicate-key check of a 1 MiB line
// with 88,000 distinct keys takes milliseconds, not the 20–60 CPU-seconds
// of a quadratic check (issue 13 #10); over the wire the line is answered
// (invalid_params, naming one of its fields) as quickly.
func TestManyKeysCheckedInLinearTime(t *testing.T) {
	line := manyKeysLine(88000)
	if len(line) > 1<<20 {
		t.Fatalf("line of %d bytes is over the default cap", len(line))
	}
	start := time.Now()
	_, err := parseRequest(line)
	if d := time.Since(start); err != nil || d > 2*time.Second {
		t.Fatalf("parseRequest: %v in %v", err, d)
	}
	a := startAgent(t)
	c := a.dial(t)
	start = time.Now()
	c.tc.Write(append(line, '\n'))
	err = c.receive(nil)
	if d := time.Since(start); rpcKind(err) != kindInvalidParams || d > 5*time.Second {
		t.Fatalf("the line over the wire: %v after %v", err, d)
	}
}

// BenchmarkManyKeys: the envelope check of the 88,000-key line beside
// encoding/json reading the same line (json.Valid, and a decode of params
// into a map, which is what a method does next).
func BenchmarkManyKeys(b *testing.B) {
	line := manyKeysLine(88000)
	b.Run("parseRequest", func(b *testing.B) {
		b.SetBytes(int64(len(line)))
		for b.Loop() {
			if _, err := parseRequest(line); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("json.Valid", func(b *testing.B) {
		b.SetBytes(int64(len(line)))
		for b.Loop() {
			if !json.Valid(line) {
				b.Fatal("invalid")
			}
		}
	})
	b.Run("json.Unmarshal-map", func(b *testing.B) {
		b.SetBytes(int64(len(line)))
		for b.Loop() {
			var m map[string]json.RawMessage
			if err := json.Unmarshal(line, &m); err != nil {
				b.Fatal(err)
			}
		}
	})
}
