package main

// main_test.go: the test harness (a real agent over real TLS on 127.0.0.1:0
// with identities made in the test) and the CLI's tests; last, in a section
// of its own, the client commands' -json listings and job control.

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestMain runs the tests, then removes the agent binary that
// buildTentacle built for them.
func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

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
	t          testing.TB
	cfg        *config
	srv        *server
	addr       string
	home       string
	thumbprint string // the agent's
	clientHome string
	client     *identity   // trusted as "test-client"
	logs       *syncBuffer // the agent's log, unless logw is set
	logw       io.Writer
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
func startAgent(t testing.TB, opts ...func(*config)) *testAgent {
	t.Helper()
	return startAgentLogging(t, nil, opts...)
}

// startShAgent is startAgent and a connection to it, for a test that runs
// shell scripts: skipped where there is no sh.
func startShAgent(t testing.TB, opts ...func(*config)) (*testAgent, *clientConn) {
	t.Helper()
	needSh(t)
	a := startAgent(t, opts...)
	return a, a.dial(t)
}

// startAgentLogging is startAgent with the agent's log going to logw
// (nil: to a.logs).
func startAgentLogging(t testing.TB, logw io.Writer, opts ...func(*config)) *testAgent {
	t.Helper()
	return startAgentAt(t, t.TempDir(), logw, opts...)
}

// startAgentAt is startAgentLogging on a given home (a tmpfs, say).
func startAgentAt(t testing.TB, home string, logw io.Writer, opts ...func(*config)) *testAgent {
	t.Helper()
	a := &testAgent{t: t, home: home, logw: logw}
	a.client, a.clientHome = trustedClient(t, home, "test-client")
	a.cfg = testConfig(t, a.home)
	for _, o := range opts {
		o(a.cfg)
	}
	a.start()
	t.Cleanup(a.stop)
	return a
}

// trustedClient makes a client identity in a fresh client home and writes
// it, as name, into the trust list of home (replacing what was there).
func trustedClient(t testing.TB, home, name string) (client *identity, clientHome string) {
	t.Helper()
	clientHome = t.TempDir()
	client = newIdentityIn(t, clientHome)
	writeTrust(t, home, client.thumbprint+" "+name+"\n")
	return client, clientHome
}

// newIdentityIn makes an identity in dir, named as in a home.
func newIdentityIn(t testing.TB, dir string) *identity {
	t.Helper()
	id, err := newIdentity(filepath.Join(dir, "tentacle.key"), filepath.Join(dir, "tentacle.crt"))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// acceptEach accepts on ln until it is closed at the test's end and hands
// each connection to handle, in the accept loop.
func acceptEach(t testing.TB, ln net.Listener, handle func(c net.Conn)) {
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			handle(c)
		}
	}()
}

// serveEach serves each connection ln accepts with serve, on a goroutine of
// its own, closing it after.
func serveEach(t testing.TB, ln net.Listener, serve func(c net.Conn)) {
	acceptEach(t, ln, func(c net.Conn) {
		go func() {
			defer c.Close()
			serve(c)
		}()
	})
}

// relayEach dials target for each connection ln accepts and hands the pair
// to relay, in the accept loop: relay starts its own goroutines and closes
// both when done.
func relayEach(t testing.TB, ln net.Listener, target string, relay func(in, out net.Conn)) {
	acceptEach(t, ln, func(in net.Conn) {
		out, err := net.Dial("tcp", target)
		if err != nil {
			in.Close()
			return
		}
		relay(in, out)
	})
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
	var w io.Writer = a.logs
	if a.logw != nil {
		w = a.logw
	}
	go func() {
		a.done <- runAgentContext(ctx, a.cfg, w, func(s *server, addr net.Addr) {
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

// waitInFlight waits until a request is being handled on one of the
// agent's connections: a long poll has reached the agent.
func waitInFlight(t testing.TB, a *testAgent) {
	t.Helper()
	waitFor(t, "a request in flight", 5*time.Second, func() bool {
		a.srv.mu.Lock()
		defer a.srv.mu.Unlock()
		for cn := range a.srv.conns {
			cn.mu.Lock()
			busy := cn.method != "" // in its method, not merely read
			cn.mu.Unlock()
			if busy {
				return true
			}
		}
		return false
	})
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

func TestCLIUsage(t *testing.T) {
	home := t.TempDir()
	for _, tt := range []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"no command", nil, 2, "", "Usage:"},
		{"unknown command", []string{"frobnicate"}, 2, "", `unknown command "frobnicate"`},
		{"help", []string{"help"}, 0, "Commands:", ""},
		{"help run", []string{"help", "run"}, 0, "tentacle run [-home DIR]", ""},
		{"help unknown", []string{"help", "nope"}, 2, "", "unknown command"},
		{"-h on a subcommand", []string{"call", "-h"}, 0, "", "Example:"},
		{"two dashes", []string{"show-thumbprint", "--home", home}, 0, "", "created identity"},
		{"unknown flag", []string{"run", "-nope"}, 2, "", "flag provided but not defined: -nope"},
		{"mistyped command", []string{"exce"}, 2, "", `unknown command "exce" (did you mean "exec"?)`},
		{"mistyped help", []string{"help", "deplyo"}, 2, "", `(did you mean "deploy"?)`},
		{"mistyped subcommand", []string{"trust", "ad", tpA}, 2, "", `tentacle trust: unknown subcommand "ad" (did you mean "add"?): want add, remove, list`},
		{"no subcommand", []string{"trust"}, 2, "", "tentacle trust add [-home DIR]"},
		{"mistyped flag", []string{"exec", "-pinn", "x", "a", "--", "true"}, 2, "", "-pinn (did you mean -pin?)"},
		{"flag prefix", []string{"exec", "-iso", "full", "a", "--", "true"}, 2, "", "(did you mean -isolation?)"},
		{"extra argument", []string{"run", "now"}, 2, "", "wrong number of arguments"},
		{"bad log format", []string{"run", "-home", home, "-log-format", "xml"}, 2, "", "-log-format must be text or json"},
		{"cert without key", []string{"run", "-home", home, "-cert", "x.pem"}, 2, "", "-cert and -key go together"},
		{"call without pin", []string{"call", "-home", home, "127.0.0.1:1", "ping"}, 1, "", "no pin: pass -pin THUMBPRINT"},
		{"call with bad params", []string{"call", "-home", home, "-pin", tpA, "127.0.0.1:1", "ping", "{nope"}, 2, "", "is not JSON"},
		{"call flag after args", []string{"call", "127.0.0.1:1", "ping", "-pin", tpA}, 2, "", `flag "-pin" after the arguments`},
		{"version", []string{"version"}, 0, "tentacle ", ""},
		{"new-certificate refuses to overwrite", []string{"new-certificate", "-home", home}, 1, "", "add -force to replace it"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, code := runCLI(tt.args...)
			if code != tt.code || !strings.Contains(stdout, tt.stdout) || !strings.Contains(stderr, tt.stderr) {
				t.Fatalf("code %d (want %d)\nstdout %q (want %q)\nstderr %q (want %q)", code, tt.code, stdout, tt.stdout, stderr, tt.stderr)
			}
		})
	}
	before, _, _ := runCLI("show-thumbprint", "-home", home)
	out, _, code := runCLI("new-certificate", "-home", home, "-force")
	if code != 0 || out == before || len(strings.TrimSpace(out)) != 64 {
		t.Fatalf("new-certificate -force: code %d, thumbprint %q (was %q)", code, out, before)
	}
	t.Setenv("TENTACLE_HOME", home)
	if again, _, _ := runCLI("show-thumbprint"); again != out {
		t.Fatalf("TENTACLE_HOME not used: %q vs %q", again, out)
	}
	// A bad TENTACLE_SHUTDOWN_GRACE is a usage error, unless -shutdown-grace
	// is given (the flag wins; -log-format xml stops run before it starts).
	t.Setenv("TENTACLE_SHUTDOWN_GRACE", "soon")
	if _, stderr, code := runCLI("run", "-log-format", "xml"); code != 2 || !strings.Contains(stderr, `TENTACLE_SHUTDOWN_GRACE="soon" is not a duration`) {
		t.Fatalf("bad TENTACLE_SHUTDOWN_GRACE: code %d, %q", code, stderr)
	}
	if _, stderr, code := runCLI("run", "-shutdown-grace", "5s", "-log-format", "xml"); code != 2 || strings.Contains(stderr, "TENTACLE_SHUTDOWN_GRACE") || !strings.Contains(stderr, "-log-format") {
		t.Fatalf("-shutdown-grace given: code %d, %q", code, stderr)
	}
}

// raceDetector is whether this test binary was built with -race: tests too
// slow under it skip. Read from the build settings, so that no build-tagged
// pair of files is needed for one constant.
var raceDetector = func() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}()

// TestDocMapNamesEveryFile: doc.go, the map of the code, names every
// non-test Go file and no file that is gone, so it stays true.
func TestDocMapNamesEveryFile(t *testing.T) {
	doc, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob("*.go")
	named := map[string]bool{}
	for _, f := range regexp.MustCompile(`\b[a-z][a-z_]*\.go\b`).FindAllString(string(doc), -1) {
		named[f] = true
	}
	for _, f := range files {
		if !strings.HasSuffix(f, "_test.go") && f != "doc.go" && !named[f] && !strings.HasPrefix(f, "deploy_archive_") {
			t.Errorf("doc.go does not name %s", f)
		}
		delete(named, f)
	}
	for f := range named {
		t.Errorf("doc.go names %s, which does not exist", f)
	}
}

// The client commands' own behaviour: -json listings and job control from
// the command line.

// TestJSONListings: jobs and releases print one JSON object a line with
// -json, the fields of job.list and deploy.list, for scripts.
func TestJSONListings(t *testing.T) {
	a, c := startShAgent(t)
	ticket := startJob(t, c, map[string]any{"script": "echo hi"})
	followJob(t, c, ticket)
	pkgFile := filepath.Join(t.TempDir(), "shop.tar.gz")
	os.WriteFile(pkgFile, scriptPkg(t, "1"), 0o644)
	if _, errOut, code := a.cli("deploy", a.addr, "shop", "1.0", pkgFile); code != 0 {
		t.Fatalf("deploy: %s", errOut)
	}
	tests := []struct {
		name string
		args []string
		want map[string]string // fields of the first line
	}{
		{"jobs", []string{"jobs", "-json", a.addr}, map[string]string{"ticket": ticket, "kind": "script", "state": "done", "outcome": "success"}},
		{"releases of an app", []string{"releases", "-json", a.addr, "shop"}, map[string]string{"release": "1.0", "version": "1.0", "outcome": "success"}},
		{"apps", []string{"releases", "-json", a.addr}, map[string]string{"app": "shop", "current": "1.0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := a.cli(tt.args[0], tt.args[1:]...)
			if code != 0 {
				t.Fatalf("code %d: %s", code, errOut)
			}
			first, _, _ := strings.Cut(out, "\n")
			var got map[string]any
			if err := json.Unmarshal([]byte(first), &got); err != nil {
				t.Fatalf("not a JSON line: %q (%v)", out, err)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Fatalf("%s = %v, want %q (line %s)", k, got[k], v, first)
				}
			}
		})
	}
}

// TestJobCancelAndCompleteCLI: a job can be cancelled and completed from
// the command line, without hand-written job.cancel JSON.
func TestJobCancelAndCompleteCLI(t *testing.T) {
	a, c := startShAgent(t)
	running := startJob(t, c, map[string]any{"script": "echo started; sleep 1000"})
	if _, errOut, code := a.cli("job", "-complete", a.addr, running); code != 1 || !strings.Contains(errOut, "conflict") {
		t.Fatalf("complete of a running job: code %d, %q", code, errOut)
	}
	if _, errOut, code := a.cli("job", "-cancel", a.addr, running); code != 0 || !strings.Contains(errOut, "cancelled job "+running) {
		t.Fatalf("cancel: code %d, %q", code, errOut)
	}
	st, _ := followJob(t, c, running)
	if outcomeOf(st) != outcomeCancelled {
		t.Fatalf("after job -cancel: outcome %s", outcomeOf(st))
	}
	out, errOut, code := a.cli("job", "-complete", a.addr, running)
	if code != 0 || !strings.Contains(out, "outcome:   cancelled") || !strings.Contains(out, "started") {
		t.Fatalf("complete: code %d\n%s\n%s", code, out, errOut)
	}
	if _, errOut, code := a.cli("job", a.addr, running); code != 1 || !strings.Contains(errOut, "not_found") {
		t.Fatalf("the completed job is still there: code %d, %q", code, errOut)
	}
	if _, errOut, code := a.cli("job", "-cancel", "-follow", a.addr, running); code != 2 || !strings.Contains(errOut, "one at a time") {
		t.Fatalf("two modes: code %d, %q", code, errOut)
	}
}
