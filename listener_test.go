package main

// listener_test.go: TLS, trust decisions on the wire, the command loop's
// framing rules, limits and shutdown.

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

// newTestIdentity makes an identity in a fresh folder.
func newTestIdentity(t testing.TB) *identity {
	t.Helper()
	dir := t.TempDir()
	id, err := newIdentity(filepath.Join(dir, "tentacle.key"), filepath.Join(dir, "tentacle.crt"))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// rawTLS opens a TLS connection presenting id (nil: no certificate), with
// conf adjusted by mod, and returns the handshake's error.
func rawTLS(a *testAgent, id *identity, mod func(*tls.Config)) (*tls.Conn, error) {
	conf := &tls.Config{InsecureSkipVerify: true}
	if id != nil {
		conf.Certificates = []tls.Certificate{id.cert}
	}
	if mod != nil {
		mod(conf)
	}
	d := &net.Dialer{Timeout: 5 * time.Second}
	nc, err := d.Dial("tcp", a.addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(nc, conf)
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		tc.Close()
		return nil, err
	}
	// In TLS 1.3 the client finishes its handshake before the server has
	// checked the client's certificate: a refusal shows on the first read.
	return tc, nil
}

// exchange sends raw lines and reads n answer lines; a closed connection
// ends the answers early.
func exchange(t testing.TB, tc *tls.Conn, send string, n int) []string {
	t.Helper()
	if _, err := io.WriteString(tc, send); err != nil {
		return nil
	}
	br := bufio.NewReader(tc)
	var out []string
	for range n {
		line, err := br.ReadString('\n')
		if err != nil {
			break
		}
		out = append(out, strings.TrimSuffix(line, "\n"))
	}
	return out
}

// pingWorks reports whether id can ping the agent, and the error if not.
func pingWorks(a *testAgent, id *identity, mod func(*tls.Config)) error {
	tc, err := rawTLS(a, id, mod)
	if err != nil {
		return err
	}
	defer tc.Close()
	if _, err := io.WriteString(tc, `{"id":1,"method":"ping"}`+"\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(tc).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.Contains(line, `"pong":true`) {
		return fmt.Errorf("unexpected answer %q", line)
	}
	return nil
}

func TestTrustDecisions(t *testing.T) {
	other := newTestIdentity(t)
	expired := newTestIdentity(t)
	future := newTestIdentity(t)
	wrongSource := newTestIdentity(t)
	rightSource := newTestIdentity(t)
	a := startAgent(t)
	writeTrust(t, a.home, strings.Join([]string{
		a.client.thumbprint + " test-client",
		expired.thumbprint + " expires=2001-01-01 old server",
		future.thumbprint + " expires=2999-12-31 future server",
		wrongSource.thumbprint + " from=10.0.0.0/8,192.168.0.0/16 far away",
		rightSource.thumbprint + " from=127.0.0.0/8 local",
	}, "\n")+"\n")
	tests := []struct {
		name  string
		id    *identity
		works bool
	}{
		{"trusted", a.client, true},
		{"untrusted", other, false},
		{"no certificate", nil, false},
		{"expired entry", expired, false},
		{"entry expiring later", future, true},
		{"wrong source", wrongSource, false},
		{"right source", rightSource, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := pingWorks(a, tt.id, nil)
			if (err == nil) != tt.works {
				t.Fatalf("ping works = %v (%v), want %v", err == nil, err, tt.works)
			}
		})
	}
	logs := a.logs.String()
	for _, want := range []string{
		"rejected client", other.thumbprint, "tentacle trust add -home " + a.home + " " + other.thumbprint,
		"expired on 2001-01-01", "does not admit address 127.0.0.1",
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("agent log lacks %q", want)
		}
	}
}

func TestTLSVersionsAndSuites(t *testing.T) {
	a := startAgent(t)
	t.Run("TLS 1.2 with AEAD works", func(t *testing.T) {
		err := pingWorks(a, a.client, func(c *tls.Config) { c.MaxVersion = tls.VersionTLS12 })
		if err != nil {
			t.Fatal(err)
		}
	})
	t.Run("TLS 1.3 is preferred", func(t *testing.T) {
		tc, err := rawTLS(a, a.client, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tc.Close()
		if v := tc.ConnectionState().Version; v != tls.VersionTLS13 {
			t.Fatalf("version %s, want TLS 1.3", tls.VersionName(v))
		}
	})
	for _, protos := range [][]string{{"tentacle/1"}, {"h2"}, {"h2", "tentacle/1"}, nil} {
		t.Run(fmt.Sprintf("ALPN %v", protos), func(t *testing.T) {
			tc, err := rawTLS(a, a.client, func(c *tls.Config) { c.NextProtos = protos })
			if err != nil {
				t.Fatal(err)
			}
			defer tc.Close()
			if got := exchange(t, tc, `{"id":1,"method":"ping"}`+"\n", 1); len(got) != 1 || !strings.Contains(got[0], "pong") {
				t.Fatalf("ping with ALPN %v: %q", protos, got)
			}
			want := ""
			if slices.Contains(protos, "tentacle/1") {
				want = "tentacle/1"
			}
			if p := tc.ConnectionState().NegotiatedProtocol; p != want {
				t.Fatalf("negotiated %q, want %q", p, want)
			}
		})
	}
	refused := []struct {
		name string
		mod  func(*tls.Config)
	}{
		{"TLS 1.1", func(c *tls.Config) { c.MinVersion, c.MaxVersion = tls.VersionTLS10, tls.VersionTLS11 }},
		{"CBC suites only", func(c *tls.Config) {
			c.MaxVersion = tls.VersionTLS12
			c.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA}
		}},
	}
	for _, tt := range refused {
		t.Run(tt.name+" is refused", func(t *testing.T) {
			if err := pingWorks(a, a.client, tt.mod); err == nil {
				t.Fatal("handshake succeeded")
			}
		})
	}
}

func TestAllowGroups(t *testing.T) {
	a := startAgent(t)
	writeTrust(t, a.home, a.client.thumbprint+" allow=deploy narrowed\n")
	c := a.dial(t)
	if err := c.call("ping", nil, nil); err != nil {
		t.Fatalf("read is always granted, ping: %v", err)
	}
	// A method of another group: register a test-only one? No: use the real
	// groups through a method that exists in every build: none of "script"
	// or "file" may exist yet, so check the rule on the entry directly too.
	e, err := parseTrustLine(a.client.thumbprint + " allow=deploy narrowed")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		groups []string
		want   bool
	}{
		{[]string{"read"}, true}, {[]string{"deploy"}, true}, {[]string{"script"}, false},
		{[]string{"file"}, false}, {[]string{"script", "deploy"}, true},
	} {
		if got := e.allows(tt.groups); got != tt.want {
			t.Errorf("allows(%v) = %v, want %v", tt.groups, got, tt.want)
		}
	}
	for name, m := range protocolMethods() {
		if !e.allows(m.groups) {
			err := c.call(name, map[string]any{}, nil)
			if rpcKind(err) != kindForbidden {
				t.Errorf("%s from an allow=deploy entry: %v, want forbidden", name, err)
			}
			if m.body {
				// forbidden with a body: the connection must stay in step
				c = a.dial(t)
			}
		}
	}
	if err := c.call("ping", nil, nil); err != nil {
		t.Fatalf("agent stopped serving: %v", err)
	}
}

func TestHotReloadAndRevocation(t *testing.T) {
	a := startAgent(t)
	newcomer := newTestIdentity(t)
	if pingWorks(a, newcomer, nil) == nil {
		t.Fatal("untrusted newcomer got in")
	}
	// Add by rewriting the file in place (what an editor does).
	if err := os.WriteFile(homeTrustPath(a.home), []byte(a.client.thumbprint+" test-client\n"+newcomer.thumbprint+" newcomer\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := pingWorks(a, newcomer, nil); err != nil {
		t.Fatalf("newcomer not admitted after an in-place edit: %v", err)
	}

	// Revocation on an open connection: the next request is refused with
	// its own id, then the connection closes.
	c := a.dial(t)
	if err := c.call("ping", nil, nil); err != nil {
		t.Fatal(err)
	}
	writeTrust(t, a.home, newcomer.thumbprint+" newcomer\n")
	if _, _, code := runCLI("trust", "remove", "-home", a.home, "newcomer"); code != 0 {
		t.Fatal("trust remove failed")
	}
	err := c.call("ping", nil, nil)
	if rpcKind(err) != kindRevoked {
		t.Fatalf("request after revocation: %v, want revoked", err)
	}
	if err := c.call("ping", nil, nil); err == nil {
		t.Fatal("connection still open after revocation")
	}

	// Kubernetes ConfigMap style: the file is a symlink into a data folder
	// that is swapped by renaming a new symlink over the old one.
	home := a.home
	os.Remove(homeTrustPath(home))
	for i, content := range []string{a.client.thumbprint + " v1\n", newcomer.thumbprint + " v2\n"} {
		data := filepath.Join(home, fmt.Sprintf("..data_%d", i))
		os.Mkdir(data, 0o755)
		if err := os.WriteFile(filepath.Join(data, "trusted_servers"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(home, "..data_tmp")
		os.Remove(tmp)
		if err := os.Symlink(filepath.Base(data), tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(home, "..data")); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if err := os.Symlink(filepath.Join("..data", "trusted_servers"), homeTrustPath(home)); err != nil {
				t.Fatal(err)
			}
			if err := pingWorks(a, a.client, nil); err != nil {
				t.Fatalf("client trusted by symlinked file v1: %v", err)
			}
		}
	}
	if pingWorks(a, a.client, nil) == nil {
		t.Fatal("client still trusted after the symlink swap removed it")
	}
	if err := pingWorks(a, newcomer, nil); err != nil {
		t.Fatalf("newcomer not trusted after the symlink swap: %v", err)
	}
}

func TestSessionResumptionIsReverified(t *testing.T) {
	a := startAgent(t)
	cache := tls.NewLRUClientSessionCache(4)
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		mod := func(c *tls.Config) { c.ClientSessionCache = cache; c.MaxVersion = v }
		writeTrust(t, a.home, a.client.thumbprint+" test-client\n")
		if err := pingWorks(a, a.client, mod); err != nil {
			t.Fatal(err)
		}
		tc, err := rawTLS(a, a.client, mod)
		if err != nil {
			t.Fatal(err)
		}
		exchange(t, tc, `{"id":1,"method":"ping"}`+"\n", 1)
		if !tc.ConnectionState().DidResume {
			t.Fatalf("%s: the second connection did not resume; the test proves nothing", tls.VersionName(v))
		}
		tc.Close()
		writeTrust(t, a.home, "# nobody\n")
		if err := pingWorks(a, a.client, mod); err == nil {
			t.Fatalf("%s: a resumed session of a removed client got in", tls.VersionName(v))
		}
	}
}

// TestFramingRules: PROTOCOL §3 line by line; each line is followed by a
// ping on the same connection, which must be answered next.
func TestFramingRules(t *testing.T) {
	a := startAgent(t)
	tests := []struct {
		name, line string
		want       string // substring of the answer; "" means no answer
	}{
		{"plain request", `{"id":1,"method":"ping"}`, `{"jsonrpc":"2.0","id":1,"result":{"pong":true}}`},
		{"full envelope", `{"jsonrpc":"2.0","id":"a","method":"ping","params":{}}`, `"id":"a","result":{"pong":true}`},
		{"crlf tolerated", "{\"id\":2,\"method\":\"ping\"}\r", `"id":2,"result"`},
		{"white space after", `{"id":3,"method":"ping"}    `, `"id":3,"result"`},
		{"not JSON", `{"id":4,"method":`, `"id":null,"error":{"code":-32700`},
		{"invalid UTF-8", "{\"id\":5,\"method\":\"p\xffing\"}", `"code":-32700`},
		{"trailing data", `{"id":6,"method":"ping"} x`, `"code":-32700`},
		{"two objects", `{"id":7,"method":"ping"}{"id":8,"method":"ping"}`, `"code":-32700`},
		{"batch", `[{"id":9,"method":"ping"}]`, `"id":null,"error":{"code":-32600,"message":"batches are not supported`},
		{"not an object", `42`, `"code":-32600`},
		{"wrong jsonrpc", `{"jsonrpc":"1.0","id":10,"method":"ping"}`, `"id":10,"error":{"code":-32600`},
		{"unknown member", `{"id":11,"method":"ping","extra":1}`, `unknown member \"extra\"`},
		{"case-variant key", `{"ID":12,"method":"ping"}`, `unknown member \"ID\"`},
		{"duplicate key", `{"id":13,"method":"ping","method":"info"}`, `duplicate key \"method\"`},
		{"nested duplicate key", `{"id":14,"method":"ping","params":{"a":{"b":1,"b":2}}}`, `duplicate key \"b\"`},
		{"params not an object", `{"id":15,"method":"ping","params":[1]}`, `"id":15,"error":{"code":-32602`},
		{"unknown param", `{"id":16,"method":"ping","params":{"Zap":1}}`, `unknown field \"Zap\"`},
		{"unknown method", `{"id":17,"method":"pong"}`, `"id":17,"error":{"code":-32601`},
		{"method not a string", `{"id":18,"method":7}`, `"id":18,"error":{"code":-32600`},
		{"no method", `{"id":19}`, `"id":19,"error":{"code":-32600`},
		{"id null", `{"id":null,"method":"ping"}`, `"code":-32600`},
		{"id object", `{"id":{},"method":"ping"}`, `"code":-32600`},
		{"notification", `{"method":"ping"}`, ""},
		{"notification of unknown method", `{"method":"nope"}`, ""},
		{"deep nesting", `{"id":20,"method":"ping","params":{"a":` + strings.Repeat("[", 200) + strings.Repeat("]", 200) + `}}`, `"code":-32600`},
		// Every refused envelope is answered, whatever its members' order
		// (issue 13 #11).
		{"mistyped ID after method", `{"method":"ping","ID":1}`, `unknown member \"ID\"`},
		{"mistyped ID before method", `{"ID":1,"method":"ping"}`, `unknown member \"ID\"`},
		{"bad jsonrpc after method", `{"method":"ping","jsonrpc":"1.0","id":2}`, `"id":2,"error":{"code":-32600`},
		{"bad jsonrpc after method, no id", `{"method":"ping","jsonrpc":"1.0"}`, `"id":null,"error":{"code":-32600`},
		{"unknown member after method", `{"method":"ping","extra":true,"id":3}`, `"id":3,"error":{"code":-32600,"message":"unknown member \"extra\"`},
		{"duplicate key after method", `{"method":"ping","method":"ping"}`, `duplicate key \"method\"`},
		{"params not an object after method", `{"method":"ping","params":7}`, `"id":null,"error":{"code":-32602`},
		// JSON's white space, depth and keys (issue 13 #12).
		{"spaces and tabs are blank", " \t ", ""},
		{"form feed is not blank", "\f", `"code":-32700`},
		{"vertical tab is not blank", "\v", `"code":-32700`},
		{"no-break space is not blank", "\u00a0", `"code":-32700`},
		{"em space is not blank", "\u2003", `"code":-32700`},
		{"form feed around a request", "\f" + `{"id":1,"method":"ping"}`, `"code":-32700`},
		{"next line is not white space", `{"id":1,"method":"ping"}` + "\u0085", `"code":-32700`},
		{"deep and invalid", `{"id":2,"method":"ping","params":{"a":` + strings.Repeat("[", 200) + `}}`, `"id":null,"error":{"code":-32700`},
		{"deep and cut short", strings.Repeat(`{"a":`, 100000), `"code":-32700`},
		{"deep and valid", `{"id":3,"method":"ping","params":{"a":` + strings.Repeat("[", 200) + strings.Repeat("]", 200) + `}}`, `"code":-32600,"message":"the request nests deeper`},
		{"two lone surrogates are two keys", `{"id":4,"method":"ping","params":{"\ud800":1,"\udc00":2}}`, `"id":4,"error":{"code":-32602,"message":"unknown field`},
		{"one lone surrogate twice is a duplicate", `{"id":5,"method":"ping","params":{"\ud800":1,"\uD800":2}}`, `duplicate key`},
		{"an escaped pair is its character", `{"id":6,"method":"ping","params":{"\ud83d\ude00":1,"😀":2}}`, `duplicate key`},
		{"a lone surrogate is not U+FFFD", `{"id":7,"method":"ping","params":{"\udfff":1,"\ufffd":2}}`, `unknown field`},
		{"escaped and plain key are one key", `{"id":8,"method":"ping","\u0070arams":{},"params":{}}`, `duplicate key \"params\"`},
	}
	tc, err := rawTLS(a, a.client, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	br := bufio.NewReader(tc)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Each case is followed by a ping on the same connection: the
			// agent keeps serving, and a case with no answer shows as the
			// ping's answer coming first.
			fmt.Fprintf(tc, "%s\n\n{\"id\":\"after\",\"method\":\"ping\"}\n", tt.line)
			var got []string
			for {
				tc.SetReadDeadline(time.Now().Add(5 * time.Second))
				line, err := br.ReadString('\n')
				if err != nil {
					t.Fatalf("connection broke: %v (answers so far %q)", err, got)
				}
				got = append(got, strings.TrimSpace(line))
				if strings.Contains(line, `"id":"after"`) {
					break
				}
			}
			if tt.want == "" {
				if len(got) != 1 {
					t.Fatalf("notification was answered: %q", got)
				}
				return
			}
			if len(got) != 2 || !strings.Contains(got[0], tt.want) {
				t.Fatalf("answers %q, want first to contain %q", got, tt.want)
			}
			var r map[string]json.RawMessage
			if err := json.Unmarshal([]byte(got[0]), &r); err != nil || string(r["jsonrpc"]) != `"2.0"` {
				t.Fatalf("answer %q is not a JSON-RPC 2.0 response", got[0])
			}
		})
	}
}

func TestPipelinedRequestsAnsweredInOrder(t *testing.T) {
	a := startAgent(t)
	tc, err := rawTLS(a, a.client, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	const n = 500
	var b strings.Builder
	for i := range n {
		method := "ping"
		if i%7 == 0 {
			method = "info"
		}
		fmt.Fprintf(&b, `{"id":%d,"method":%q}`+"\n", i, method)
	}
	go io.WriteString(tc, b.String())
	br := bufio.NewReader(tc)
	for i := range n {
		var r struct {
			ID int `json:"id"`
		}
		line, err := br.ReadBytes('\n')
		if err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		if err := json.Unmarshal(line, &r); err != nil || r.ID != i {
			t.Fatalf("answer %d has id %d (%v)", i, r.ID, err)
		}
	}
}

func TestLineCap(t *testing.T) {
	a := startAgent(t, func(c *config) { c.Limits.MaxLine = 64 << 10 })
	tc, err := rawTLS(a, a.client, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	// 64 MiB without a newline: the agent must answer too_large and close
	// long before reading it all, holding at most about the cap.
	done := make(chan error, 1)
	go func() {
		chunk := []byte(`{"id":1,"method":"ping","params":{"x":"` + strings.Repeat("a", 1<<20))
		var err error
		for i := 0; i < 64 && err == nil; i++ {
			_, err = tc.Write(chunk)
			chunk = []byte(strings.Repeat("a", 1<<20))
		}
		done <- err
	}()
	tc.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(tc).ReadString('\n')
	if err != nil || !strings.Contains(line, `"id":null,"error":{"code":1004`) || !strings.Contains(line, "too_large") {
		t.Fatalf("answer %q, %v; want too_large", line, err)
	}
	if werr := <-done; werr == nil {
		t.Fatal("the agent read all 64 MiB instead of closing")
	}
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 8<<20 {
		t.Fatalf("heap grew by %d bytes for a 64 KiB cap", grew)
	}
	if err := pingWorks(a, a.client, nil); err != nil {
		t.Fatalf("agent stopped serving: %v", err)
	}
	// Exactly at the cap is fine.
	c := a.dial(t)
	pad := strings.Repeat("b", 64<<10-len(`{"id":1,"method":"ping","jsonrpc":"2.0","params":{"x":""}}`))
	err = c.call("ping", map[string]string{"x": pad}, nil)
	if rpcKind(err) != kindInvalidParams { // read whole, then refused for the unknown field
		t.Fatalf("line at the cap: %v", err)
	}
}

// TestPerSourceHandshakeLimit: idle sockets from one address take its
// source's share of handshakes and of waiting places, no more: the excess
// is closed at once, and a trusted client from another source is served
// within its handshake, not after the flood's 30 s.
func TestPerSourceHandshakeLimit(t *testing.T) {
	a := startAgent(t, func(c *config) {
		c.Limits.MaxStartupsPerSource = 4
		c.Limits.HandshakeTimeout = 30 * time.Second
		c.Limits.HelloTimeout = 30 * time.Second
	})
	flooder := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.2.0.1")}, Timeout: 5 * time.Second}
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 40 {
		nc, err := flooder.Dial("tcp", a.addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, nc)
	}
	// 4 in their handshake, 16 (4 × 4) waiting their turn, 20 closed.
	waitFor(t, "the flood to take its source's share", 10*time.Second, func() bool {
		a.srv.admit.mu.Lock()
		defer a.srv.admit.mu.Unlock()
		return a.srv.admit.pending == 4 && a.srv.admit.waiting == 16
	})
	closed := 0
	for _, nc := range conns {
		nc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := nc.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
			closed++
		}
	}
	if closed != 20 {
		t.Fatalf("%d flood sockets closed at once, want 20", closed)
	}
	start := time.Now()
	if err := pingWorks(a, a.client, nil); err != nil {
		t.Fatalf("trusted client locked out by the flood: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("ping during the flood took %v", d)
	}
	if !strings.Contains(a.logs.String(), dropSourceFull) {
		t.Fatalf("the drops are not logged:\n%s", a.logs)
	}
}

func TestPlainClientClosedPromptly(t *testing.T) {
	a := startAgent(t)
	for _, greeting := range []string{"GET / HTTP/1.1\r\nHost: x\r\n\r\n", `{"id":1,"method":"ping"}` + "\n"} {
		nc, err := net.Dial("tcp", a.addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(nc, greeting)
		nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		start := time.Now()
		data, _ := io.ReadAll(nc)
		nc.Close()
		if time.Since(start) > 3*time.Second {
			t.Fatalf("plain client %q held open for %v", greeting, time.Since(start))
		}
		if strings.Contains(string(data), "pong") || strings.Contains(string(data), "HTTP/") {
			t.Fatalf("plain client %q got an answer: %q", greeting, data)
		}
	}
	if err := pingWorks(a, a.client, nil); err != nil {
		t.Fatal(err)
	}
}

func TestClientAbortsOnPinMismatch(t *testing.T) {
	a := startAgent(t)
	wrong := newTestIdentity(t).thumbprint
	_, stderr, code := runCLI("call", "-home", a.clientHome, "-pin", wrong, a.addr, "ping")
	if code != 1 || !strings.Contains(stderr, "has thumbprint "+a.thumbprint) || !strings.Contains(stderr, "not the pinned "+wrong) {
		t.Fatalf("code %d, stderr %q", code, stderr)
	}
	if strings.Contains(a.logs.String(), "msg=request") {
		t.Fatal("a request reached the agent despite the pin mismatch")
	}
	// The pin is accepted in any case, with colons and a sha256: prefix.
	var b strings.Builder
	for i := 0; i < len(a.thumbprint); i += 2 {
		if i > 0 {
			b.WriteByte(':')
		}
		b.WriteString(strings.ToLower(a.thumbprint[i : i+2]))
	}
	if out, stderr, code := runCLI("call", "-home", a.clientHome, "-pin", "sha256:"+b.String(), a.addr, "ping"); code != 0 {
		t.Fatalf("colon pin: code %d %q %q", code, out, stderr)
	}
}

// connectProxy is a minimal HTTP CONNECT proxy for the test; it counts the
// tunnels it made.
func connectProxy(t *testing.T) (addr string, tunnels func() int) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var mu sync.Mutex
	n := 0
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				req, err := br.ReadString('\n')
				if err != nil {
					return
				}
				for {
					h, err := br.ReadString('\n')
					if err != nil {
						return
					}
					if h == "\r\n" {
						break
					}
				}
				f := strings.Fields(req)
				if len(f) < 2 || f[0] != "CONNECT" {
					io.WriteString(c, "HTTP/1.1 405 Method Not Allowed\r\n\r\n")
					return
				}
				up, err := net.Dial("tcp", f[1])
				if err != nil {
					io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
					return
				}
				defer up.Close()
				mu.Lock()
				n++
				mu.Unlock()
				io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
				go io.Copy(up, br)
				io.Copy(c, up)
			}()
		}
	}()
	return ln.Addr().String(), func() int { mu.Lock(); defer mu.Unlock(); return n }
}

func TestClientThroughConnectProxy(t *testing.T) {
	a := startAgent(t)
	proxy, tunnels := connectProxy(t)
	out, stderr, code := a.cli("call", "-proxy", "http://"+proxy, a.addr, "ping")
	if code != 0 || !strings.Contains(out, `"pong": true`) {
		t.Fatalf("code %d, stdout %q, stderr %q", code, out, stderr)
	}
	if tunnels() != 1 {
		t.Fatalf("proxy made %d tunnels, want 1", tunnels())
	}
	_, stderr, code = a.cli("call", "-proxy", "http://"+proxy, "127.0.0.1:1", "ping")
	if code != 1 || !strings.Contains(stderr, "refused CONNECT") || !strings.Contains(stderr, "502") {
		t.Fatalf("unreachable agent through proxy: code %d, stderr %q", code, stderr)
	}
}

func TestGracefulShutdown(t *testing.T) {
	a := startAgent(t)
	idle := a.dial(t)
	if err := idle.call("ping", nil, nil); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	a.stop()
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("shutdown with an idle connection took %v", d)
	}
	if err := idle.call("ping", nil, nil); err == nil {
		t.Fatal("idle connection still served after shutdown")
	}
	if _, err := net.DialTimeout("tcp", a.addr, time.Second); err == nil {
		t.Fatal("agent still accepts connections after shutdown")
	}
	if !strings.Contains(a.logs.String(), "msg=stopped") {
		t.Fatalf("no stop line in the log:\n%s", a.logs)
	}
}

func TestOpenSSLClient(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("openssl is not installed; .ci/run installs it")
		}
		t.Skip("openssl not installed")
	}
	a := startAgent(t)
	for _, version := range []string{"-tls1_3", "-tls1_2"} {
		t.Run(version, func(t *testing.T) {
			cmd := exec.Command(openssl, "s_client", "-quiet", version,
				"-connect", a.addr, "-cert", filepath.Join(a.clientHome, "tentacle.crt"), "-key", filepath.Join(a.clientHome, "tentacle.key"))
			stdin, _ := cmd.StdinPipe()
			stdout, _ := cmd.StdoutPipe()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Wait()
			defer cmd.Process.Kill()
			timer := time.AfterFunc(20*time.Second, func() { cmd.Process.Kill() })
			defer timer.Stop()
			io.WriteString(stdin, `{"id":1,"method":"ping"}`+"\n")
			line, err := bufio.NewReader(stdout).ReadString('\n')
			stdin.Close()
			if strings.TrimSpace(line) != `{"jsonrpc":"2.0","id":1,"result":{"pong":true}}` {
				t.Fatalf("openssl s_client got %q (%v)", line, err)
			}
		})
	}
}

// FuzzRequestLine compares parseRequest with encoding/json where the two
// should agree: what is JSON (invalid UTF-8 aside, which §3 refuses and
// encoding/json replaces), what a duplicate key is (encoding/json turns
// lone surrogates into U+FFFD, so it sees more duplicates, never fewer),
// and, for an accepted line, its id, method and params.
func FuzzRequestLine(f *testing.F) {
	for _, s := range []string{
		`{"id":1,"method":"ping"}`, `{"jsonrpc":"2.0","id":"x","method":"info","params":{}}`,
		`{"method":"ping"}`, `[1]`, `{"id":1,"id":2}`, `{"id":1,"method":"a","params":{"a":[{"b":1,"b":2}]}}`,
		"{\"id\":1,\"method\":\"\xff\"}", `{"id":1,"method":"ping"} x`, `{"ID":1}`, `{"id":-1.5e3,"method":"x","params":null}`,
		`{"id":1,"method":"ping","params":{"\ud800":1,"\udc00":2}}`, `{"id":1,"method":"\ud800"}`, "\f", "\u00a0",
		`{"method":"ping","ID":1}`, `{"a":` + strings.Repeat("[", 70) + `}`, `{"a":{"b":1},"a":2}`, `{"\u0061":1,"a":2}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		req, err := parseRequest(line)
		var re *rpcError
		if err != nil && !errors.As(err, &re) || re != nil && (re.Kind() == "" || re.Code == 0) {
			t.Fatalf("error %v is not a protocol error", err)
		}
		isParseError := re != nil && re.Kind() == kindParse
		valid := utf8.Valid(line) && json.Valid(line)
		if valid == isParseError && !(isParseError == false && nestingDepth(line) > 10000) { // encoding/json stops at 10,000 levels
			t.Fatalf("json.Valid = %v but parseRequest says %v for %q", valid, err, line)
		}
		if !valid || line[firstNonSpace(line)] != '{' || strings.Contains(fmt.Sprint(err), "nests deeper") {
			return
		}
		ours := re != nil && strings.HasPrefix(re.Message, "duplicate key")
		ref, refKey := jsonDuplicate(line)
		if ours && !ref || ref && !ours && !strings.ContainsRune(refKey, utf8.RuneError) {
			t.Fatalf("duplicate key: parseRequest %v, encoding/json %v (%q), for %q", err, ref, refKey, line)
		}
		if err != nil {
			if req != nil && req.id != nil && !json.Valid(req.id) {
				t.Fatalf("error carries an invalid id %q", req.id)
			}
			return
		}
		var env struct {
			ID     json.RawMessage `json:"id"`
			Method string          `json:"method"`
			Params json.RawMessage `json:"params"`
		}
		if json.Unmarshal(line, &env) != nil || env.Method != req.method || string(env.ID) != string(req.id) || string(env.Params) != string(req.params) {
			t.Fatalf("encoding/json reads %+v, parseRequest %+v, from %q", env, req, line)
		}
		if req.params != nil && req.params[0] != '{' {
			t.Fatalf("accepted params %q", req.params)
		}
		if req.id != nil && req.id[0] != '"' && req.id[0] != '-' && (req.id[0] < '0' || req.id[0] > '9') {
			t.Fatalf("accepted id %q", req.id)
		}
	})
}

func firstNonSpace(b []byte) int {
	return len(b) - len(bytes.TrimLeft(b, " \t\r\n"))
}

// nestingDepth is the deepest nesting of objects and arrays in JSON text,
// strings skipped.
func nestingDepth(b []byte) int {
	depth, deepest, inString := 0, 0, false
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case inString && c == '\\':
			i++
		case c == '"':
			inString = !inString
		case inString:
		case c == '{' || c == '[':
			depth++
			deepest = max(deepest, depth)
		case c == '}' || c == ']':
			depth--
		}
	}
	return deepest
}

// jsonDuplicate finds a repeated key in any object of valid JSON text with
// encoding/json's tokenizer, returning it.
func jsonDuplicate(line []byte) (bool, string) {
	dec := json.NewDecoder(bytes.NewReader(line))
	type open struct {
		object    bool
		keys      map[string]bool
		expectKey bool
	}
	var stack []*open
	for {
		tok, err := dec.Token()
		if err != nil {
			return false, ""
		}
		var top *open
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.object && top.expectKey {
			if k, ok := tok.(string); ok {
				if top.keys[k] {
					return true, k
				}
				top.keys[k] = true
				top.expectKey = false
				continue
			}
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &open{object: true, keys: map[string]bool{}, expectKey: true})
			continue
		case json.Delim('['):
			stack = append(stack, &open{})
			continue
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
		if len(stack) > 0 && stack[len(stack)-1].object {
			stack[len(stack)-1].expectKey = true // a value ended: a key comes next
		}
	}
}

// FuzzReadLine: readLine returns the lines bytes.Split finds, with a final
// "\r" cut, and stops at the cap; long lines (gathered in pooled blocks past
// the reader's buffer) come back whole.
func FuzzReadLine(f *testing.F) {
	f.Add([]byte("abc\r\ndef\n"), 4)
	f.Add([]byte(strings.Repeat("x", 100)+"\n"), 16)
	f.Add([]byte(strings.Repeat("y", 600<<10)+"\r\nz"), 1<<20)
	f.Fuzz(func(t *testing.T, data []byte, max int) {
		if max < 1 || max > 2<<20 {
			return
		}
		want := bytes.Split(data, []byte("\n"))
		if len(want[len(want)-1]) == 0 {
			want = want[:len(want)-1] // no line after the last "\n"
		}
		br := bufio.NewReaderSize(bytes.NewReader(data), 16)
		for i := 0; ; i++ {
			line, err := readLine(br, max)
			if len(line) > max {
				t.Fatalf("line of %d bytes over cap %d", len(line), max)
			}
			if err == errLineTooLong {
				return
			}
			if i >= len(want) {
				if len(line) > 0 || err != io.EOF {
					t.Fatalf("line %d %q, %v after the last line", i, line, err)
				}
				return
			}
			w := bytes.TrimSuffix(want[i], []byte("\r"))
			if err == errLineTooLongWhole {
				if len(w) <= max {
					t.Fatalf("line %d of %d bytes refused as over %d", i, len(w), max)
				}
				continue
			}
			if !bytes.Equal(line, w) {
				t.Fatalf("line %d is %d bytes %.40q, want %d bytes %.40q", i, len(line), line, len(w), w)
			}
			if err != nil {
				if err != io.EOF || i != len(want)-1 {
					t.Fatalf("line %d: %v", i, err)
				}
				return
			}
		}
	})
}

func TestInfo(t *testing.T) {
	a := startAgent(t, func(c *config) { c.LogFormat = "json" })
	c := a.dial(t)
	var info struct {
		Name       string            `json:"name"`
		Protocol   int               `json:"protocol"`
		Methods    []string          `json:"methods"`
		OS         string            `json:"os"`
		Home       string            `json:"home"`
		Thumbprint string            `json:"thumbprint"`
		Client     map[string]string `json:"client"`
		Shells     []string          `json:"shells"`
		Limits     map[string]any    `json:"limits"`
	}
	if err := c.call("info", map[string]any{}, &info); err != nil {
		t.Fatal(err)
	}
	// A read-only request logs at debug when it succeeds: this one fails.
	if err := c.call("job.status", map[string]any{"ticket": "none"}, nil); rpcKind(err) != kindNotFound {
		t.Fatal(err)
	}
	if info.Name != "tentacle" || info.Protocol != 1 || info.OS != runtime.GOOS || info.Home != a.home ||
		info.Thumbprint != a.thumbprint || info.Client["thumbprint"] != a.client.thumbprint || info.Client["name"] != "test-client" ||
		len(info.Shells) == 0 || info.Limits["max_line"] != float64(1<<20) {
		t.Fatalf("info = %+v", info)
	}
	for _, m := range []string{"info", "ping"} {
		if !slices.Contains(info.Methods, m) {
			t.Errorf("methods %v lack %s", info.Methods, m)
		}
	}
	// -log-format json: every line is a JSON object; the request line names
	// the peer.
	waitFor(t, "the request log line", 5*time.Second, func() bool { return strings.Contains(a.logs.String(), `"method":"job.status"`) })
	for _, l := range strings.Split(strings.TrimSpace(a.logs.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q is not JSON", l)
		}
		if m["msg"] == "request" && (m["thumbprint"] != a.client.thumbprint || m["name"] != "test-client" || m["outcome"] != "not_found") {
			t.Fatalf("request log line %q", l)
		}
	}
}

func TestShutdownAnswersRequestInFlight(t *testing.T) {
	a := startAgent(t)
	c := a.dial(t)
	var started struct {
		Ticket string `json:"ticket"`
	}
	if err := c.call("script.start", map[string]any{"script": "sleep 0.5"}, &started); err != nil {
		t.Fatal(err)
	}
	// A long poll is in flight when the agent is told to stop: it is
	// answered (not cut off), and the job is waited for within the grace.
	if err := c.send("job.status", map[string]any{"ticket": started.Ticket, "wait_ms": 30000, "after": 1 << 40}, nil, 0); err != nil {
		t.Fatal(err)
	}
	waitInFlight(t, a)
	stopped := make(chan struct{})
	go func() { a.stop(); close(stopped) }()
	var st struct {
		State string `json:"state"`
	}
	if err := c.receive(&st); err != nil {
		t.Fatalf("in-flight request cut off by shutdown: %v", err)
	}
	select {
	case <-stopped:
	case <-time.After(20 * time.Second):
		t.Fatal("agent did not stop")
	}
	a.start()
	c = a.dial(t)
	var done struct {
		Outcome string `json:"outcome"`
	}
	if err := c.call("job.status", map[string]any{"ticket": started.Ticket}, &done); err != nil || done.Outcome != "success" {
		t.Fatalf("job running at shutdown: %+v, %v; want it waited for and successful", done, err)
	}
}

// TestShutdownWakesIdleConnectionAtOnce: shutdown that lands after a
// connection has been marked idle but before its next read still ends that
// connection at once, not after the idle timeout (nor the whole grace).
func TestShutdownWakesIdleConnectionAtOnce(t *testing.T) {
	a := startAgent(t, func(c *config) { c.ShutdownGrace = 30 * time.Second; c.Limits.IdleTimeout = 10 * time.Minute })
	idles := 0 // one connection: the hook runs on its goroutine only
	a.srv.testHookIdle = func() {
		if idles++; idles == 2 { // idle again after the ping was answered
			a.srv.beginShutdown() // in the window between idle and the read
		}
	}
	c := a.dial(t)
	if err := c.call("ping", nil, nil); err != nil {
		t.Fatal(err)
	}
	// The agent marks the connection idle after the answer, runs the hook
	// (shutdown begins), then reads: it must see the shutdown and close.
	c.tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("idle connection still open 5s after shutdown began: %v", err)
	}
	start := time.Now()
	a.stop()
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("shutdown with an idle connection took %s", d)
	}
}

// TestHandlerPanicIsInternal: a request handler that panics is answered
// with internal, and the agent goes on serving: the same connection, new
// ones, and a job that was running meanwhile.
func TestHandlerPanicIsInternal(t *testing.T) {
	a := startAgent(t, withMethod("test.panic", method{groups: []string{"read"}, fn: func(*call) (any, error) {
		panic("handler bug")
	}}))
	c := a.dial(t)
	var started struct {
		Ticket string `json:"ticket"`
	}
	if err := c.call("script.start", map[string]any{"script": "sleep 0.3; echo survived"}, &started); err != nil {
		t.Fatal(err)
	}
	err := c.call("test.panic", nil, nil)
	if rpcKind(err) != kindInternal {
		t.Fatalf("panicking handler: %v, want internal", err)
	}
	if err := c.call("ping", nil, nil); err != nil {
		t.Fatalf("same connection after the panic: %v", err)
	}
	if err := a.dial(t).call("ping", nil, nil); err != nil {
		t.Fatalf("new connection after the panic: %v", err)
	}
	var st struct {
		Outcome string            `json:"outcome"`
		Logs    []json.RawMessage `json:"logs"`
	}
	if err := c.call("job.status", map[string]any{"ticket": started.Ticket, "wait_ms": 10000, "after": 1 << 40}, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the job to finish", 10*time.Second, func() bool {
		return c.call("job.status", map[string]any{"ticket": started.Ticket}, &st) == nil && st.Outcome != ""
	})
	if st.Outcome != "success" || !strings.Contains(fmt.Sprint(string(bytes.Join(rawLines(st.Logs), nil))), "survived") {
		t.Fatalf("job running across the panic: outcome %q, logs %s", st.Outcome, rawLines(st.Logs))
	}
	if !strings.Contains(a.logs.String(), "request handler panicked") || !strings.Contains(a.logs.String(), "handler bug") {
		t.Fatalf("the panic is not in the agent's log:\n%s", a.logs)
	}
}

// rawLines turns raw JSON values into byte slices, for messages.
func rawLines(rs []json.RawMessage) [][]byte {
	out := make([][]byte, len(rs))
	for i, r := range rs {
		out[i] = r
	}
	return out
}

// TestUntrustedClientToldWhy: a client the agent does not trust is told so
// by every command, with its thumbprint and the command that trusts it,
// not only "remote error: tls: bad certificate" (under TLS 1.3 the refusal
// arrives after the client's handshake has returned).
func TestUntrustedClientToldWhy(t *testing.T) {
	a := startAgent(t)
	strangerHome := t.TempDir()
	stranger, err := newIdentity(filepath.Join(strangerHome, "tentacle.key"), filepath.Join(strangerHome, "tentacle.crt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"call", a.addr, "ping"},
		{"exec", a.addr, "--", "true"},
		{"jobs", a.addr},
		{"releases", a.addr},
	} {
		t.Run(args[0], func(t *testing.T) {
			full := append([]string{args[0], "-home", strangerHome, "-pin", a.thumbprint}, args[1:]...)
			_, errOut, code := runCLI(full...)
			if code == 0 || !strings.Contains(errOut, "does not trust this client") || !strings.Contains(errOut, stranger.thumbprint) ||
				!strings.Contains(errOut, "tentacle trust add "+stranger.thumbprint) || strings.Contains(errOut, "remote error") {
				t.Fatalf("%v: code %d, stderr %q", args, code, errOut)
			}
		})
	}
	if err := a.dial(t).call("ping", nil, nil); err != nil {
		t.Fatalf("the agent stopped serving its trusted client: %v", err)
	}
}
