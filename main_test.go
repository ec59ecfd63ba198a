package main

// main_test.go: the test harness (a real agent over real TLS on 127.0.0.1:0
// with identities made in the test) and the CLI's tests.

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for the agent's logger and a test.
type syncBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testAgent is an agent running in the test process.
type testAgent struct {
	t          *testing.T
	cfg        *config
	srv        *server
	addr       string
	home       string
	thumbprint string // the agent's
	clientHome string
	client     *identity // trusted as "test-client"
	logs       *syncBuffer
	cancel     context.CancelFunc
	done       chan error
}

// testConfig is run's defaults for home, listening on a free loopback port.
func testConfig(t testing.TB, home string) *config {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	cfg := runFlags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	cfg.Home = home
	cfg.Listen = "127.0.0.1:0"
	cfg.ShutdownGrace = 5 * time.Second
	cfg.KillGrace = 2 * time.Second
	cfg.DiskReserve = 0
	if err := cfg.check(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// startAgent starts an agent in a fresh home that trusts a fresh client
// identity; opts adjust its config first. It is stopped at the test's end.
func startAgent(t *testing.T, opts ...func(*config)) *testAgent {
	t.Helper()
	a := &testAgent{t: t, home: t.TempDir(), clientHome: t.TempDir()}
	var err error
	a.client, err = newIdentity(filepath.Join(a.clientHome, "tentacle.key"), filepath.Join(a.clientHome, "tentacle.crt"))
	if err != nil {
		t.Fatal(err)
	}
	writeTrust(t, a.home, a.client.thumbprint+" test-client\n")
	a.cfg = testConfig(t, a.home)
	for _, o := range opts {
		o(a.cfg)
	}
	a.start()
	t.Cleanup(a.stop)
	return a
}

// writeTrust replaces the trust file of home.
func writeTrust(t testing.TB, home, content string) {
	t.Helper()
	if err := writeFileAtomic(homeTrustPath(home), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// start runs the agent and waits until it listens.
func (a *testAgent) start() {
	a.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel, a.done, a.logs = cancel, make(chan error, 1), &syncBuffer{}
	ready := make(chan struct{})
	go func() {
		a.done <- runAgentContext(ctx, a.cfg, a.logs, func(s *server, addr net.Addr) {
			a.srv, a.addr, a.thumbprint = s, addr.String(), s.id.thumbprint
			close(ready)
		})
	}()
	select {
	case <-ready:
	case err := <-a.done:
		a.t.Fatalf("agent did not start: %v\n%s", err, a.logs)
	case <-time.After(10 * time.Second):
		a.t.Fatalf("agent did not start within 10s\n%s", a.logs)
	}
}

// stop shuts the agent down gracefully and waits for it (idempotent).
func (a *testAgent) stop() {
	if a.cancel == nil {
		return
	}
	a.cancel()
	a.cancel = nil
	select {
	case err := <-a.done:
		if err != nil {
			a.t.Errorf("agent stopped with %v", err)
		}
	case <-time.After(30 * time.Second):
		a.t.Errorf("agent did not stop within 30s")
	}
}

// restart stops the agent and starts it again on the same home (and a new
// port).
func (a *testAgent) restart() {
	a.t.Helper()
	a.stop()
	a.cfg.Listen = "127.0.0.1:0"
	a.start()
}

// dial connects as the trusted test client.
func (a *testAgent) dial(t testing.TB) *clientConn {
	t.Helper()
	c, err := dialAgent(a.addr, a.client, a.thumbprint, "", 10*time.Second, nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// cli runs "tentacle CMD -home <client home> -pin <agent> ARGS..." through
// run, as a user would.
func (a *testAgent) cli(cmd string, args ...string) (stdout, stderr string, code int) {
	full := append([]string{cmd, "-home", a.clientHome, "-pin", a.thumbprint}, args...)
	return runCLI(full...)
}

// runCLI runs the CLI with args and returns what it printed and its code.
func runCLI(args ...string) (stdout, stderr string, code int) {
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return o.String(), e.String(), code
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// rpcKind returns the protocol kind of err, or "" for nil, or err's text.
func rpcKind(err error) string {
	if err == nil {
		return ""
	}
	if re, ok := err.(*rpcError); ok {
		return re.Kind()
	}
	return err.Error()
}

func TestPingOverTLS(t *testing.T) {
	a := startAgent(t)
	c := a.dial(t)
	var r map[string]bool
	if err := c.call("ping", nil, &r); err != nil || !r["pong"] {
		t.Fatalf("ping = %v, %v", r, err)
	}
	out, errOut, code := a.cli("call", a.addr, "ping")
	if code != 0 || strings.TrimSpace(out) != "{\n  \"pong\": true\n}" {
		t.Fatalf("tentacle call ping: code %d, stdout %q, stderr %q", code, out, errOut)
	}
}

// keep imports used while the suite grows.
var _ = fmt.Sprint
var _ = io.EOF
var _ = os.Getenv
