package main

// ops_test.go: operations: the audit trail, the health probe, the systemd
// unit, and the agent configured by environment alone (a container), run
// as a real built binary.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"
)

// withMethod is the agent option that serves one more method, beside the
// protocol's table, in that test's agent only.
func withMethod(name string, m method) func(*config) {
	return func(c *config) {
		if c.extraMethods == nil {
			c.extraMethods = map[string]method{}
		}
		c.extraMethods[name] = m
	}
}

// testChange is the test's mutating method, as the other subsystems
// declare theirs.
var testChange = withMethod("test.change", method{groups: []string{"script"}, mutates: true, fn: handleTestChange})

// changeParams are the params of the test's mutating method.
type changeParams struct {
	Path    string `json:"path"`
	Content string `json:"content"` // stands for what must never be audited
	Fail    string `json:"fail"`    // an error kind to fail with, or "plain"
	N       int    `json:"n"`
}

// handleTestChange is a mutating method as the other subsystems write
// them: it decodes, sets c.audit with the key parameters only, and fails
// when asked.
func handleTestChange(c *call) (any, error) {
	var p changeParams
	if err := decodeParams(c.params, &p); err != nil {
		return nil, err
	}
	c.audit = map[string]any{"path": p.Path, "n": p.N}
	switch p.Fail {
	case "":
		return map[string]any{"path": p.Path}, nil
	case "plain":
		return nil, errors.New("disk on fire")
	default:
		return nil, errorf(p.Fail, "refused %q as asked", p.Path)
	}
}

// readAuditLines reads every kept audit line, oldest first.
func readAuditLines(t *testing.T, home string) []auditEntry {
	t.Helper()
	raw, err := lastAuditLines((&config{Home: home}).auditPath(), 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []auditEntry
	for _, l := range raw {
		var e auditEntry
		dec := json.NewDecoder(bytes.NewReader(l))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&e); err != nil {
			t.Fatalf("audit line %q: %v", l, err)
		}
		out = append(out, e)
	}
	return out
}

func TestAuditTrail(t *testing.T) {
	readerHome := t.TempDir()
	reader, err := newIdentity(filepath.Join(readerHome, "tentacle.key"), filepath.Join(readerHome, "tentacle.crt"))
	if err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, testChange)
	writeTrust(t, a.home, a.client.thumbprint+" test-client\n"+reader.thumbprint+" allow=read reader\n")
	c := a.dial(t)

	steps := []struct {
		name    string
		method  string
		params  string
		kind    string // the error kind expected, "" for success
		audited bool
	}{
		{"ping is not audited", "ping", `{}`, "", false},
		{"info is not audited", "info", `{}`, "", false},
		{"unknown method is not audited", "test.nothing", `{}`, kindMethodNotFound, false},
		{"success", "test.change", `{"path":"/srv/a","content":"s3cret-bytes"}`, "", true},
		{"refusal with a kind", "test.change", `{"path":"/srv/b","fail":"not_found"}`, kindNotFound, true},
		{"bad params", "test.change", `{"path":"/srv/c","bogus":1}`, kindInvalidParams, true},
		{"internal error", "test.change", `{"path":"/srv/d","fail":"plain"}`, kindInternal, true},
	}
	var want []string // methods+outcome expected in the log
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			err := c.call(s.method, json.RawMessage(s.params), nil)
			if rpcKind(err) != s.kind {
				t.Fatalf("%s: got %v, want kind %q", s.method, err, s.kind)
			}
		})
		if s.audited {
			want = append(want, s.method+" "+cmpOr(s.kind, "ok"))
		}
	}
	// A refused call from a read-only entry is audited under its name.
	rc, err := dialAgent(a.addr, reader, a.thumbprint, "", 5*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if err := rc.call("test.change", map[string]any{"path": "/srv/e"}, nil); rpcKind(err) != kindForbidden {
		t.Fatalf("reader's test.change: %v, want forbidden", err)
	}
	want = append(want, "test.change forbidden")

	lines := readAuditLines(t, a.home)
	var got []string
	for _, e := range lines {
		got = append(got, e.Method+" "+e.Outcome)
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("audit log:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for i, e := range lines {
		ts, err := time.Parse(time.RFC3339, e.Time)
		if err != nil || ts.Location() != time.UTC || time.Since(ts) > time.Minute || ts.After(time.Now()) {
			t.Errorf("line %d: time %q is not a recent RFC 3339 UTC time (%v)", i, e.Time, err)
		}
		if e.DurationMS < 0 || e.DurationMS > 60000 {
			t.Errorf("line %d: duration_ms %v", i, e.DurationMS)
		}
		wantTP, wantName := a.client.thumbprint, "test-client"
		if i == len(lines)-1 {
			wantTP, wantName = reader.thumbprint, "reader"
		}
		if e.Thumbprint != wantTP || e.Name != wantName {
			t.Errorf("line %d: client %s %q, want %s %q", i, e.Thumbprint, e.Name, wantTP, wantName)
		}
		if host, _, err := net.SplitHostPort(e.Peer); err != nil || host != "127.0.0.1" {
			t.Errorf("line %d: peer %q", i, e.Peer)
		}
		if (e.Outcome == "ok") != (e.Error == "") {
			t.Errorf("line %d: outcome %q with error %q", i, e.Outcome, e.Error)
		}
	}
	if p := lines[0].Params; p["path"] != "/srv/a" || p["n"] != float64(0) || len(p) != 2 {
		t.Errorf("params of the success: %v", p)
	}
	if lines[1].Error != `refused "/srv/b" as asked` || lines[3].Error != "disk on fire" {
		t.Errorf("error messages: %q, %q", lines[1].Error, lines[3].Error)
	}
	if lines[2].Params != nil {
		t.Errorf("params decoded before failing are not known, yet logged: %v", lines[2].Params)
	}
	raw, _ := os.ReadFile(a.cfg.auditPath())
	if bytes.Contains(raw, []byte("s3cret-bytes")) {
		t.Errorf("audit log holds content that is not a key parameter:\n%s", raw)
	}
	if fi, err := os.Stat(a.cfg.auditPath()); err != nil || fi.Mode().Perm() != 0o600 && runtime.GOOS != "windows" {
		t.Errorf("audit.log mode: %v %v", fi.Mode(), err)
	}

	// tentacle audit prints the same lines, the last N of them.
	out, errOut, code := runCLI("audit", "-home", a.home, "-n", "2")
	fileLines := strings.Split(strings.TrimSuffix(string(raw), "\n"), "\n")
	if code != 0 || out != strings.Join(fileLines[len(fileLines)-2:], "\n")+"\n" {
		t.Fatalf("tentacle audit -n 2: code %d, stdout %q, stderr %q", code, out, errOut)
	}
	// The agent still serves.
	if err := c.call("ping", nil, nil); err != nil {
		t.Fatal(err)
	}
}

// cmpOr is cmp.Or for strings, spelled out for the table above.
func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func TestAuditRotationUnderLoad(t *testing.T) {
	const maxSize = 24 << 10
	a := startAgent(t, testChange, func(c *config) { c.AuditMaxSize = maxSize })
	const workers, each = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		cc := a.dial(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if err := cc.call("test.change", map[string]any{"path": fmt.Sprintf("/w%d", w), "n": w*1000 + i}, nil); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	files := auditFiles(a.cfg.auditPath())
	if len(files) < 3 || len(files) > auditKeep+1 {
		t.Fatalf("want at least 2 rotations and at most %d files, got %v", auditKeep+1, files)
	}
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil || fi.Size() > maxSize {
			t.Errorf("%s: %v bytes, over %d (%v)", f, fi.Size(), maxSize, err)
		}
	}
	seen := map[float64]int{}
	for _, e := range readAuditLines(t, a.home) {
		seen[e.Params["n"].(float64)]++
	}
	for w := range workers {
		for i := range each {
			if n := seen[float64(w*1000+i)]; n != 1 {
				t.Errorf("request %d/%d is in the audit log %d times", w, i, n)
			}
		}
	}
	if t.Failed() {
		return
	}
	// tentacle audit -n 0 prints everything kept, oldest file first.
	out, _, code := runCLI("audit", "-home", a.home, "-n", "0")
	var all []byte
	for i := len(files) - 1; i >= 0; i-- {
		b, _ := os.ReadFile(files[i])
		all = append(all, b...)
	}
	if code != 0 || out != string(all) {
		t.Fatalf("tentacle audit -n 0 (code %d) differs from the files", code)
	}
}

func TestAuditKeepsOnlyRecentFiles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	a, err := openAuditLog(path, 100)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		if err := a.write([]byte(fmt.Sprintf("%-59d\n", i))); err != nil { // 60 bytes: one a file
			t.Fatal(err)
		}
	}
	a.close()
	files := auditFiles(path)
	if len(files) != auditKeep+1 {
		t.Fatalf("files %v, want audit.log and %d rotated", files, auditKeep)
	}
	lines, err := lastAuditLines(path, 0)
	if err != nil || len(lines) != auditKeep+1 || strings.TrimSpace(string(lines[auditKeep])) != "39" || strings.TrimSpace(string(lines[0])) != fmt.Sprint(39-auditKeep) {
		t.Fatalf("kept lines %q, %v", lines, err)
	}
	// Reopening appends to what is there.
	a, err = openAuditLog(path, 100)
	if err != nil {
		t.Fatal(err)
	}
	a.write([]byte("x\n"))
	a.close()
	if b, _ := os.ReadFile(path); string(b) != fmt.Sprintf("%-59d\nx\n", 39) {
		t.Fatalf("after reopening: %q", b)
	}
}

func TestTailLines(t *testing.T) {
	long := strings.Repeat("y", 100<<10) // longer than a read block
	tests := []struct {
		name    string
		content string
		n       int
		want    []string
	}{
		{"empty", "", 5, nil},
		{"one line", "a\n", 5, []string{"a"}},
		{"no final newline", "a\nb", 5, []string{"a", "b"}},
		{"last two", "a\nb\nc\n", 2, []string{"b", "c"}},
		{"all with n=0", "a\nb\nc\n", 0, []string{"a", "b", "c"}},
		{"exactly n", "a\nb\n", 2, []string{"a", "b"}},
		{"lines longer than a block", "a\n" + long + "\nb\n" + long + "\n", 3, []string{long, "b", long}},
		{"a line across block ends", strings.Repeat("z", 70<<10) + "\nq\n", 0, []string{strings.Repeat("z", 70<<10), "q"}},
		{"empty lines count", "a\n\n\n", 2, []string{"", ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, l := range tailLines(strings.NewReader(tt.content), int64(len(tt.content)), tt.n) {
				got = append(got, string(l))
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) || len(got) != len(tt.want) {
				t.Fatalf("got %d lines, want %d: %.80q", len(got), len(tt.want), got)
			}
		})
	}
}

func TestAuditCommandErrors(t *testing.T) {
	emptyHome, agentHome := t.TempDir(), t.TempDir()
	writeFile(t, filepath.Join(agentHome, "audit.log"), nil) // as an agent leaves it before any change
	tests := []struct {
		name     string
		args     []string
		code     int
		inStderr string
	}{
		{"negative n", []string{"-home", emptyHome, "-n", "-1"}, 2, "-n must be 0"},
		{"stray argument", []string{"-home", emptyHome, "x"}, 2, "wrong number of arguments"},
		{"no such home", []string{"-home", filepath.Join(emptyHome, "nope")}, 1, "no agent home"},
		{"not an agent's home", []string{"-home", emptyHome}, 1, "no audit log in"},
		{"nothing audited yet", []string{"-home", agentHome}, 0, "no changing request has been made yet"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := runCLI(append([]string{"audit"}, tt.args...)...)
			if code != tt.code || out != "" || !strings.Contains(errOut, tt.inStderr) {
				t.Fatalf("code %d, stdout %q, stderr %q", code, out, errOut)
			}
		})
	}
}

func TestHealth(t *testing.T) {
	a := startAgent(t)
	_, port, _ := net.SplitHostPort(a.addr)
	otherHome := t.TempDir()
	if _, err := newIdentity(filepath.Join(otherHome, "tentacle.key"), filepath.Join(otherHome, "tentacle.crt")); err != nil {
		t.Fatal(err)
	}
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := free.Addr().String()
	free.Close()

	tests := []struct {
		name     string
		env      map[string]string
		args     []string
		code     int
		inStdout string
		inStderr string
	}{
		{"listen address as given", nil, []string{"-home", a.home, "-listen", a.addr}, 0, "ok", ""},
		{"unspecified host means loopback", nil, []string{"-home", a.home, "-listen", ":" + port}, 0, "ok", ""},
		{"0.0.0.0 means loopback", nil, []string{"-home", a.home, "-listen", "0.0.0.0:" + port}, 0, "ok", ""},
		{"from the environment alone", map[string]string{"TENTACLE_HOME": a.home, "TENTACLE_LISTEN": a.addr}, nil, 0, "ok", ""},
		{"flags beat the environment", map[string]string{"TENTACLE_HOME": otherHome, "TENTACLE_LISTEN": deadAddr}, []string{"-home", a.home, "-listen", a.addr}, 0, "ok", ""},
		{"nothing listening", nil, []string{"-home", a.home, "-listen", deadAddr}, 1, "", "does not answer"},
		{"another agent's home", nil, []string{"-home", otherHome, "-listen", a.addr}, 1, "", "not the pinned"},
		{"home without identity", nil, []string{"-home", t.TempDir(), "-listen", a.addr}, 1, "", "no agent identity"},
		{"port 0", nil, []string{"-home", a.home, "-listen", "127.0.0.1:0"}, 2, "", "port 0"},
		{"cert without key", nil, []string{"-home", a.home, "-listen", a.addr, "-cert", "x.pem"}, 2, "", "go together"},
		{"stray argument", nil, []string{"-home", a.home, "x"}, 2, "", "wrong number"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			out, errOut, code := runCLI(append([]string{"health"}, tt.args...)...)
			if code != tt.code || !strings.Contains(out, tt.inStdout) || !strings.Contains(errOut, tt.inStderr) {
				t.Fatalf("code %d (want %d), stdout %q, stderr %q", code, tt.code, out, errOut)
			}
			if code == 0 && out != "ok\n" {
				t.Fatalf("stdout %q, want \"ok\\n\"", out)
			}
		})
	}
	// The agent still serves its real clients, and the probes, every few
	// seconds under Docker or Kubernetes, do not fill its log.
	c := a.dial(t)
	if err := c.call("ping", nil, nil); err != nil {
		t.Fatal(err)
	}
	c.Close() // a ping logs at debug: the connection's line is the one at info
	waitFor(t, "the real client's connection in the log", 5*time.Second, func() bool {
		return strings.Contains(a.logs.String(), `name=test-client`)
	})
	if logs := a.logs.String(); strings.Contains(logs, "self (health probe)") {
		t.Fatalf("health probes logged at info:\n%s", logs)
	}
}

func TestHealthMountedIdentity(t *testing.T) {
	mount := t.TempDir()
	id, err := newIdentity(filepath.Join(mount, "tls.key"), filepath.Join(mount, "tls.crt"))
	if err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, func(c *config) {
		c.CertFile, c.KeyFile = filepath.Join(mount, "tls.crt"), filepath.Join(mount, "tls.key")
	})
	if a.thumbprint != id.thumbprint {
		t.Fatalf("agent thumbprint %s, want the mounted %s", a.thumbprint, id.thumbprint)
	}
	out, errOut, code := runCLI("health", "-home", a.home, "-listen", a.addr, "-cert", a.cfg.CertFile, "-key", a.cfg.KeyFile)
	if code != 0 || out != "ok\n" {
		t.Fatalf("with -cert/-key: code %d, %q %q", code, out, errOut)
	}
	t.Setenv("TENTACLE_CERT_FILE", a.cfg.CertFile)
	t.Setenv("TENTACLE_KEY_FILE", a.cfg.KeyFile)
	if out, errOut, code = runCLI("health", "-home", a.home, "-listen", a.addr); code != 0 || out != "ok\n" {
		t.Fatalf("with TENTACLE_CERT_FILE/KEY_FILE: code %d, %q %q", code, out, errOut)
	}
}

func TestProbeAddr(t *testing.T) {
	tests := []struct{ listen, want, err string }{
		{":10933", "127.0.0.1:10933", ""},
		{"0.0.0.0:10933", "127.0.0.1:10933", ""},
		{"[::]:10933", "[::1]:10933", ""},
		{"[::]", "[::1]:10933", ""},
		{"10.1.2.3:99", "10.1.2.3:99", ""},
		{"agent.internal:10933", "agent.internal:10933", ""},
		{"127.0.0.1", "127.0.0.1:10933", ""},
		{":0", "", "port 0"},
	}
	for _, tt := range tests {
		t.Run(tt.listen, func(t *testing.T) {
			got, err := probeAddr(tt.listen)
			if got != tt.want || (err == nil) != (tt.err == "") || err != nil && !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("probeAddr(%q) = %q, %v", tt.listen, got, err)
			}
		})
	}
}

// runChild is cmd.CombinedOutput through startChild and waitChild, so that
// the orphan reaper of an agent in this process leaves cmd's exit status to
// the test.
func runChild(cmd *exec.Cmd) (string, error) {
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := startChild(cmd); err != nil {
		return "", err
	}
	err := waitChild(cmd)
	return out.String(), err
}

// envAgent is the built binary running as an agent in a child process.
type envAgent struct {
	t          *testing.T
	cmd        *exec.Cmd
	logs       *syncBuffer
	addr       string
	thumbprint string
	exited     chan struct{}
	err        error // cmd's exit, once exited is closed
}

var listeningRE = regexp.MustCompile(`msg=listening addr=(\S+) thumbprint=([0-9A-F]{64})`)

// startEnvAgent runs argv with exactly env (nothing inherited) and waits
// until it logs that it listens.
func startEnvAgent(t *testing.T, env []string, argv ...string) *envAgent {
	t.Helper()
	p := &envAgent{t: t, logs: &syncBuffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Env = env
	p.cmd.Stdout = p.logs
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := startChild(p.cmd); err != nil {
		t.Fatal(err)
	}
	copied := make(chan struct{})
	go func() { io.Copy(p.logs, stderr); close(copied) }()
	go func() { <-copied; p.err = waitChild(p.cmd); close(p.exited) }()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			p.cmd.Process.Kill()
			<-p.exited
		}
	})
	waitFor(t, "the agent to listen", 20*time.Second, func() bool {
		select {
		case <-p.exited:
			t.Fatalf("agent exited: %v\n%s", p.err, p.logs)
		default:
		}
		m := listeningRE.FindStringSubmatch(p.logs.String())
		if m == nil {
			return false
		}
		p.addr, p.thumbprint = m[1], m[2]
		return true
	})
	return p
}

// stop sends SIGTERM, as docker stop and systemctl stop do, and checks that
// the agent exits 0 within d.
func (p *envAgent) stop(d time.Duration) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		p.t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(d):
		p.t.Fatalf("agent did not stop within %v of SIGTERM\n%s", d, p.logs)
	}
	if p.err != nil {
		p.t.Fatalf("agent exited with %v after SIGTERM, want status 0\n%s", p.err, p.logs)
	}
}

// baseEnv is the least environment a process needs: PATH only.
func baseEnv(vars ...string) []string {
	return append([]string{"PATH=" + os.Getenv("PATH")}, vars...)
}

// TestContainerConfigFromEnvironment runs the agent the way a container
// does: "tentacle run" with TENTACLE_* variables and nothing else.
func TestContainerConfigFromEnvironment(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("stops the agent with SIGTERM, which Windows does not have")
	}
	bin := buildTentacle(t)
	client := newTestIdentity(t)
	ping := func(p *envAgent, id *identity) error {
		cc, err := dialAgent(p.addr, id, p.thumbprint, "", 5*time.Second, nil)
		if err != nil {
			return err
		}
		defer cc.Close()
		return cc.call("ping", nil, nil)
	}
	health := func(env ...string) (string, error) {
		cmd := exec.Command(bin, "health")
		cmd.Env = env
		return runChild(cmd)
	}

	t.Run("identity created on first start and reused", func(t *testing.T) {
		home := filepath.Join(t.TempDir(), "volume") // not there yet: a fresh volume
		env := baseEnv("TENTACLE_HOME="+home, "TENTACLE_LISTEN=127.0.0.1:0", "TENTACLE_TRUST="+client.thumbprint)
		p := startEnvAgent(t, env, bin, "run")
		if !strings.Contains(p.logs.String(), "created identity") {
			t.Fatalf("first start did not say it created the identity:\n%s", p.logs)
		}
		if err := ping(p, client); err != nil {
			t.Fatalf("client trusted by TENTACLE_TRUST: %v", err)
		}
		if out, err := health(baseEnv("TENTACLE_HOME="+home, "TENTACLE_LISTEN="+p.addr)...); err != nil || out != "ok\n" {
			t.Fatalf("tentacle health from the environment: %v %q", err, out)
		}
		first := p.thumbprint
		p.stop(10 * time.Second)
		if out, err := health(baseEnv("TENTACLE_HOME="+home, "TENTACLE_LISTEN="+p.addr)...); err == nil || !strings.Contains(out, "does not answer") {
			t.Fatalf("tentacle health with the agent stopped: %v %q", err, out)
		}

		p = startEnvAgent(t, env, bin, "run") // the container restarts
		if p.thumbprint != first {
			t.Fatalf("thumbprint changed across restarts: %s then %s", first, p.thumbprint)
		}
		if strings.Contains(p.logs.String(), "created identity") {
			t.Fatalf("second start made a new identity:\n%s", p.logs)
		}
		if err := ping(p, client); err != nil {
			t.Fatal(err)
		}
		p.stop(10 * time.Second)
	})

	t.Run("identity and trust list from mounted files", func(t *testing.T) {
		secret, configMap := t.TempDir(), t.TempDir()
		id, err := newIdentity(filepath.Join(secret, "tls.key"), filepath.Join(secret, "tls.crt"))
		if err != nil {
			t.Fatal(err)
		}
		trustFile := filepath.Join(configMap, "trusted_servers")
		if err := writeFileAtomic(trustFile, []byte(client.thumbprint+" from-configmap\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		home := t.TempDir()
		env := baseEnv("TENTACLE_HOME="+home, "TENTACLE_LISTEN=127.0.0.1:0",
			"TENTACLE_CERT_FILE="+filepath.Join(secret, "tls.crt"), "TENTACLE_KEY_FILE="+filepath.Join(secret, "tls.key"),
			"TENTACLE_TRUST_FILE="+trustFile)
		p := startEnvAgent(t, env, bin, "run")
		if p.thumbprint != id.thumbprint {
			t.Fatalf("agent thumbprint %s, want the mounted %s", p.thumbprint, id.thumbprint)
		}
		if _, err := os.Stat(filepath.Join(home, "tentacle.key")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("a key was created in home although one is mounted: %v", err)
		}
		if err := ping(p, client); err != nil {
			t.Fatalf("client trusted by the mounted trust file: %v", err)
		}
		probeEnv := baseEnv("TENTACLE_HOME="+home, "TENTACLE_LISTEN="+p.addr,
			"TENTACLE_CERT_FILE="+filepath.Join(secret, "tls.crt"), "TENTACLE_KEY_FILE="+filepath.Join(secret, "tls.key"))
		if out, err := health(probeEnv...); err != nil || out != "ok\n" {
			t.Fatalf("tentacle health with the mounted identity: %v %q", err, out)
		}
		// The ConfigMap is updated: the entry goes, and the client with it.
		if err := writeFileAtomic(trustFile, []byte("# nobody\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := ping(p, client); err == nil {
			t.Fatal("client still trusted after its line left the mounted trust file")
		}
		p.stop(10 * time.Second)
	})

	t.Run("bad mounted key is a clear start-up error", func(t *testing.T) {
		secret := t.TempDir()
		newIdentity(filepath.Join(secret, "tls.key"), filepath.Join(secret, "tls.crt"))
		os.Chmod(filepath.Join(secret, "tls.key"), 0o644)
		cmd := exec.Command(bin, "run")
		cmd.Env = baseEnv("TENTACLE_HOME="+t.TempDir(), "TENTACLE_LISTEN=127.0.0.1:0",
			"TENTACLE_CERT_FILE="+filepath.Join(secret, "tls.crt"), "TENTACLE_KEY_FILE="+filepath.Join(secret, "tls.key"))
		out, err := runChild(cmd)
		if cmd.ProcessState.ExitCode() != 1 || !strings.Contains(out, "chmod 600") {
			t.Fatalf("exit %v, output %q", err, out)
		}
	})
}

// TestServiceUnit checks the generated unit, with systemd-analyze verify
// where it is installed, and install/uninstall against a temporary root.
func TestServiceUnit(t *testing.T) {
	spec := serviceSpec{Bin: "/usr/local/bin/tentacle", Home: "/var/lib/tentacle", User: "tentacle", Listen: ":10933"}
	unit := unitText(spec)
	for _, want := range []string{
		"\nUser=tentacle\n", "\nExecStart=/usr/local/bin/tentacle run -home /var/lib/tentacle -listen :10933\n",
		"\nRestart=on-failure\n", "\nUMask=0077\n", "\nNoNewPrivileges=yes\n", "\nDelegate=yes\n", "\nWantedBy=multi-user.target\n",
	} {
		if !strings.Contains(unit, want) {
			t.Errorf("unit lacks %q:\n%s", want, unit)
		}
	}
	odd := unitText(serviceSpec{Bin: "/opt/my tools/tentacle", Home: "/srv/100%/a$b", User: "svc", Listen: "[::]:10933"})
	if !strings.Contains(odd, `ExecStart="/opt/my tools/tentacle" run -home /srv/100%%/a$$b -listen [::]:10933`) {
		t.Errorf("special characters are not quoted:\n%s", odd)
	}

	for _, sp := range []serviceSpec{spec, {Bin: "/b", Home: "/srv/100%/a$b", User: "svc", Listen: ":1"}} {
		if home, usr := unitHomeUser(unitText(sp)); home != sp.Home || usr != sp.User {
			t.Errorf("home and user read back from the unit: %q %q, want %q %q", home, usr, sp.Home, sp.User)
		}
	}

	root := t.TempDir()
	bin := ""
	if runtime.GOOS == "linux" {
		bin = buildTentacle(t)
	} else {
		bin, _ = os.Executable()
	}
	var said bytes.Buffer
	h := &serviceHost{
		unitPath: filepath.Join(root, "etc/systemd/system", serviceName),
		binPath:  filepath.Join(root, "usr/local/bin/tentacle"),
		srcBin:   bin,
		out:      &said,
	}
	spec = serviceSpec{Bin: h.binPath, Home: filepath.Join(root, "var/lib/tentacle"), User: "root", Listen: "127.0.0.1:10933"}
	if runtime.GOOS == "windows" {
		spec.User = "" // no such thing; install is refused by the command anyway
		t.Skip("systemd units are Linux only")
	}
	if err := h.install(spec); err != nil {
		t.Fatalf("install: %v\n%s", err, said.String())
	}
	got, err := os.ReadFile(h.unitPath)
	if err != nil || string(got) != unitText(spec) {
		t.Fatalf("unit file: %v\n%s", err, got)
	}
	if fi, err := os.Stat(h.binPath); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("installed binary: %v %v", fi, err)
	}
	id, err := loadIdentity(filepath.Join(spec.Home, "tentacle.key"), filepath.Join(spec.Home, "tentacle.crt"))
	if err != nil {
		t.Fatalf("identity in the service's home: %v", err)
	}
	for _, want := range []string{"installed", "agent thumbprint " + id.thumbprint, "wrote", "systemd is not running here", "tentacle trust add"} {
		if !strings.Contains(said.String(), want) {
			t.Errorf("install output lacks %q:\n%s", want, said.String())
		}
	}
	if fi, _ := os.Stat(spec.Home); fi.Mode().Perm() != 0o700 {
		t.Errorf("home mode %v", fi.Mode())
	}

	if analyze, err := exec.LookPath("systemd-analyze"); err == nil {
		cmd := exec.Command(analyze, "verify", h.unitPath)
		if out, err := runChild(cmd); err != nil || strings.Contains(out, h.unitPath) {
			t.Fatalf("systemd-analyze verify %s: %v\n%s", h.unitPath, err, out)
		}
	} else {
		t.Log("systemd-analyze is not installed: the unit was not verified by systemd")
	}

	said.Reset()
	if err := h.uninstall(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(h.unitPath); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("unit still there after uninstall: %v", err)
	}
	if _, err := os.Stat(filepath.Join(spec.Home, "tentacle.key")); err != nil {
		t.Fatalf("uninstall lost the identity: %v", err)
	}
	if !strings.Contains(said.String(), "removed") || !strings.Contains(said.String(), "to remove them too: rm -r "+spec.Home+" "+h.binPath+"\n") {
		t.Errorf("uninstall output:\n%s", said.String())
	}
	said.Reset()
	if err := h.uninstall(); err != nil || !strings.Contains(said.String(), "not installed") {
		t.Fatalf("second uninstall: %v %q", err, said.String())
	}
}

func TestServiceCommand(t *testing.T) {
	home := filepath.Join(t.TempDir(), "home")
	// serviceCase is one call of "tentacle service" and what it must print.
	type serviceCase struct {
		name     string
		args     []string
		code     int
		inStdout string
		inStderr string
	}
	tests := []serviceCase{
		{"no subcommand", nil, 2, "", "tentacle service install [-home DIR]"},
		{"unknown subcommand", []string{"instal"}, 2, "", `unknown subcommand "instal" (did you mean "install"?): want install, uninstall`},
		{"bad user", []string{"install", "-dry-run", "-user", "Bad User"}, 2, "", "not a valid user name"},
		{"stray argument", []string{"install", "-dry-run", "x"}, 2, "", "wrong number"},
		{"uninstall takes no -home", []string{"uninstall", "-home", home}, 2, "", "flag provided but not defined"},
	}
	if runtime.GOOS == "linux" {
		tests = append(tests, serviceCase{"dry run prints the unit", []string{"install", "-dry-run", "-home", home, "-user", "svc-user"}, 0,
			"ExecStart=/usr/local/bin/tentacle run -home " + home, "would create system user \"svc-user\""})
	} else {
		tests = append(tests, serviceCase{"not on this system", []string{"install", "-dry-run"}, 1, "", "only supported on Linux"})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := runCLI(append([]string{"service"}, tt.args...)...)
			if code != tt.code || !strings.Contains(out, tt.inStdout) || !strings.Contains(errOut, tt.inStderr) {
				t.Fatalf("code %d (want %d), stdout %q, stderr %q", code, tt.code, out, errOut)
			}
		})
	}
	if _, err := os.Stat(home); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("-dry-run created the home: %v", err)
	}
}

// BenchmarkAuditedRequest measures what the audit line adds to a request:
// the same method over the same connection, registered once as changing
// (audited) and once not, in the same run.
func BenchmarkAuditedRequest(b *testing.B) {
	a := startAgent(b, testChange, withMethod("test.nochange", method{groups: []string{"script"}, fn: handleTestChange}))
	c, err := dialAgent(a.addr, a.client, a.thumbprint, "", 5*time.Second, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	params := map[string]any{"path": "/srv/app/app.conf", "n": 1}
	per := func(m string, n int) time.Duration {
		start := time.Now()
		for range n {
			if err := c.call(m, params, nil); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(start) / time.Duration(n)
	}
	per("test.nochange", 200) // warm up
	b.ResetTimer()
	audited := per("test.change", b.N)
	b.StopTimer()
	base := per("test.nochange", max(b.N, 200))
	b.ReportMetric(float64(audited.Nanoseconds()), "ns/audited")
	b.ReportMetric(float64(base.Nanoseconds()), "ns/baseline")
	b.ReportMetric(float64(audited)/float64(base), "ratio")
	b.Logf("audited %v, baseline (same method, not audited) %v, ratio %.2f", audited, base, float64(audited)/float64(base))
}

// TestAuditDownloadsAndLongParams: file.download is audited with its path,
// refusals included, and no string of a line outgrows maxAuditString, so a
// client's long parameters cannot flush the log.
func TestAuditDownloadsAndLongParams(t *testing.T) {
	a := startAgent(t, testChange)
	c := a.dial(t)
	if _, err := upload(c, map[string]any{"path": "x.txt"}, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, err := download(c, "x.txt"); err != nil {
		t.Fatal(err)
	}
	if _, err := download(c, a.cfg.keyPath()); rpcKind(err) != kindForbidden {
		t.Fatalf("download of the key: %v", err)
	}
	long := "/srv/" + strings.Repeat("é", 100<<10)
	if err := c.call("test.change", map[string]any{"path": long, "fail": kindConflict}, nil); rpcKind(err) != kindConflict {
		t.Fatal(err)
	}
	lines := readAuditLines(t, a.home)
	if len(lines) != 4 {
		t.Fatalf("%d audit lines, want 4", len(lines))
	}
	x := filepath.Join(a.cfg.filesDir(), "x.txt")
	if d := lines[1]; d.Method != "file.download" || d.Outcome != "ok" || d.Params["path"] != x || d.Params["size"] != float64(5) || d.Params["sha256"] != shaOf([]byte("hello")) {
		t.Errorf("download line: %+v", d)
	}
	if d := lines[2]; d.Method != "file.download" || d.Outcome != kindForbidden || d.Params["path"] != a.cfg.keyPath() {
		t.Errorf("refused download line: %+v", d)
	}
	raw, _ := os.ReadFile(a.cfg.auditPath())
	last := raw[bytes.LastIndexByte(raw[:len(raw)-1], '\n')+1:]
	if len(last) > 3*maxAuditString || !bytes.Contains(last, []byte("bytes cut]")) || !utf8.Valid(last) {
		t.Fatalf("the long request's line is %d bytes (valid UTF-8: %v): %.300s", len(last), utf8.Valid(last), last)
	}
}

// TestAuditFullDisk: an audit line the disk takes only in part is cut off
// again, so the log ends at a line boundary and the next line, once there
// is room, is whole.
func TestAuditFullDisk(t *testing.T) {
	dir := mountTmpfs(t, "2m")
	if dir == "" {
		t.Skip("needs a tmpfs the test can mount (root on Linux)")
	}
	a := startAgent(t, testChange, func(c *config) { c.TrustFile, c.Home = homeTrustPath(c.Home), dir })
	c := a.dial(t)
	if err := c.call("test.change", map[string]any{"path": "/srv/first"}, nil); err != nil {
		t.Fatal(err)
	}
	// Leave 40 bytes in audit.log's last page, then fill the disk: the next
	// line fits only in part.
	f, err := os.OpenFile(a.cfg.auditPath(), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := f.Stat()
	padLen := 4096 - int(fi.Size()%4096) - 40
	if padLen < 200 {
		padLen += 4096
	}
	head, tail := `{"method":"pad","params":{"pad":"`, `"},"outcome":"ok"}`+"\n"
	pad := head + strings.Repeat("p", padLen-len(head)-len(tail)) + tail
	if _, err := f.WriteString(pad); err != nil {
		t.Fatal(err)
	}
	f.Close()
	filler, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	for _, err := filler.Write(make([]byte, 4096)); err == nil; _, err = filler.Write(make([]byte, 4096)) {
	}
	filler.Close()
	before, _ := os.Stat(a.cfg.auditPath())
	if err := c.call("test.change", map[string]any{"path": "/srv/on-a-full-disk"}, nil); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(a.cfg.auditPath())
	if len(raw) != int(before.Size()) || raw[len(raw)-1] != '\n' {
		t.Fatalf("audit.log is %d bytes, was %d, and ends in %q: a partial line was left", len(raw), before.Size(), raw[max(0, len(raw)-40):])
	}
	if !strings.Contains(a.logs.String(), "failed to write the audit log") {
		t.Fatalf("the failure was not logged:\n%s", a.logs)
	}
	os.Remove(filepath.Join(dir, "filler"))
	if err := c.call("test.change", map[string]any{"path": "/srv/after"}, nil); err != nil {
		t.Fatal(err)
	}
	lines := readAuditLines(t, a.cfg.Home) // every line parses
	if l := lines[len(lines)-1]; l.Params["path"] != "/srv/after" {
		t.Fatalf("last line %+v", l)
	}
}
