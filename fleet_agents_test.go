package main

// fleet_agents_test.go: the agents file (parse, malformed lines, modes,
// rewrites that keep what they do not understand) and "tentacle agents",
// against real agents over real TLS; and the test fleet the other fleet
// tests use.

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// testFleet is several agents that trust one client identity, named in
// that client's agents file.
type testFleet struct {
	t      *testing.T
	home   string // the client's
	client *identity
	agents []*testAgent
	names  []string
}

// startFleet starts n agents named a1…an; tags gives each one's tags.
func startFleet(t *testing.T, n int, tags func(i int) []string) *testFleet {
	t.Helper()
	fl := &testFleet{t: t, home: t.TempDir()}
	var err error
	if fl.client, err = newIdentity(filepath.Join(fl.home, "tentacle.key"), filepath.Join(fl.home, "tentacle.crt")); err != nil {
		t.Fatal(err)
	}
	var lines []string
	for i := range n {
		a := startAgent(t)
		writeTrust(t, a.home, fl.client.thumbprint+" fleet-client\n")
		name := fmt.Sprintf("a%d", i+1)
		fl.agents, fl.names = append(fl.agents, a), append(fl.names, name)
		var tg []string
		if tags != nil {
			tg = tags(i)
		}
		lines = append(lines, strings.Join(append([]string{name, a.addr, a.thumbprint}, tg...), " "))
	}
	fl.writeAgents(strings.Join(lines, "\n") + "\n")
	return fl
}

// dial connects to agent i as the fleet's client.
func (fl *testFleet) dial(i int) *clientConn {
	fl.t.Helper()
	a := fl.agents[i]
	c, err := dialAgent(a.addr, fl.client, a.thumbprint, "", 10*time.Second, nil)
	if err != nil {
		fl.t.Fatalf("dial: %v", err)
	}
	fl.t.Cleanup(func() { c.Close() })
	return c
}

// writeAgents replaces the client's agents file.
func (fl *testFleet) writeAgents(content string) {
	fl.t.Helper()
	if err := os.WriteFile(agentsPath(fl.home), []byte(content), 0o644); err != nil {
		fl.t.Fatal(err)
	}
}

func (fl *testFleet) readAgents() string {
	b, _ := os.ReadFile(agentsPath(fl.home))
	return string(b)
}

// cli runs "tentacle CMD -home <client home> ARGS..."; CMD may be two words
// ("agents add").
func (fl *testFleet) cli(cmd string, args ...string) (stdout, stderr string, code int) {
	full := append(strings.Fields(cmd), "-home", fl.home)
	return runCLI(append(full, args...)...)
}

func TestAgentsFileParse(t *testing.T) {
	good := strings.Repeat("A", 64)
	lower := strings.ToLower(good)
	colons := strings.TrimSuffix(strings.Repeat("aa:", 32), ":")
	content := strings.Join([]string{
		"# a comment",
		"",
		"web1 10.1.0.11 " + lower + " web staging", // 3
		"web2 10.1.0.12:10933 sha256:" + colons + " web",
		"db1 [fd00::5]:11000 " + good + " db",
		"db2 [fd00::6] " + good,
		"   # an indented comment",
		"all 10.0.0.1 " + good, // 8
		"-x 10.0.0.1 " + good,
		"web3 fd00::7 " + good,
		"web4 10.0.0.1:99999 " + good,
		"web5 10.0.0.1 NOTAPIN",
		"web6 10.0.0.1 " + good + " owner=ops",
		"web7 10.0.0.1",
		"web1 10.9.9.9 " + good, // 15: a duplicate
		"web8 host_name.example " + good + " a b a",
		"web9 [10.0.0.1] " + good,
		"web10 10.0.0.1 " + good + " bad/tag",
	}, "\n") + "\n" + "web11 10.0.0.1 " + good + " " + strings.Repeat("t", maxAgentsLine) + "\nweb12 10.0.0.1 " + good
	home := t.TempDir()
	if err := os.WriteFile(agentsPath(home), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	af, err := readAgents(home)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range af.entries {
		names = append(names, e.Name)
	}
	if got := strings.Join(names, " "); got != "web1 web2 db1 db2 web8 web12" {
		t.Fatalf("entries %q", got)
	}
	if e := af.byName["web1"]; e.Pin != good || e.Addr != "10.1.0.11" || e.address() != "10.1.0.11:10933" || strings.Join(e.Tags, ",") != "web,staging" {
		t.Fatalf("web1 = %+v", e)
	}
	if e := af.byName["web2"]; e.Pin != strings.Repeat("AA", 32) {
		t.Fatalf("web2 pin %q", e.Pin)
	}
	if e := af.byName["db2"]; e.address() != "[fd00::6]:10933" {
		t.Fatalf("db2 address %q", e.address())
	}
	if e := af.byName["web8"]; strings.Join(e.Tags, ",") != "a,b" {
		t.Fatalf("web8 tags %q", e.Tags)
	}
	want := []struct {
		line int
		what string
	}{
		{8, `"all" is reserved`}, {9, `name "-x"`}, {10, "write an IPv6 address in brackets, as [fd00::7]"},
		{11, `port "99999"`}, {12, "pin: thumbprint"}, {13, `option "owner=ops"`}, {14, "want NAME ADDRESS PIN"},
		{15, `name "web1" is already at line 3`}, {17, "is not an IPv6 address"}, {18, `tag "bad/tag"`}, {19, "longer than 8192 bytes"},
	}
	if len(af.problems) != len(want) {
		t.Fatalf("problems:\n%s", strings.Join(af.problems, "\n"))
	}
	for i, w := range want {
		p := af.problems[i]
		if !strings.Contains(p, fmt.Sprintf("%q: malformed agent at line %d: ", agentsPath(home), w.line)) || !strings.Contains(p, w.what) {
			t.Errorf("problem %d = %q, want line %d and %q", i, p, w.line, w.what)
		}
	}
	// A rewrite of a file with a line too long to keep refuses and
	// changes nothing.
	_, stderr, code := runCLI("agents", "tag", "-home", home, "web1", "new")
	if code != 1 || !strings.Contains(stderr, "line longer than 8192 bytes at line 19") {
		t.Fatalf("tag: code %d, stderr %q", code, stderr)
	}
	if b, _ := os.ReadFile(agentsPath(home)); string(b) != content {
		t.Fatal("the agents file changed")
	}
}

func TestAgentsFileModeRefused(t *testing.T) {
	if isWindows {
		t.Skip("no group or other write bits on Windows")
	}
	home := t.TempDir()
	content := "web1 10.0.0.1 " + tpA + "\n"
	if err := os.WriteFile(agentsPath(home), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(agentsPath(home), 0o664)
	fix := fmt.Sprintf("fix it with \"chmod go-w %s\"", agentsPath(home))
	for _, args := range [][]string{
		{"agents", "list", "-home", home},
		{"agents", "add", "-home", home, "-pin", tpA, "web2", "10.0.0.2"},
		{"agents", "remove", "-home", home, "web1"},
		{"exec", "-home", home, "all", "--", "true"},
		{"call", "-home", home, "web1", "ping"},
	} {
		_, stderr, code := runCLI(args...)
		if code != 1 || !strings.Contains(stderr, "is writable by group or others (mode 0664)") || !strings.Contains(stderr, fix) {
			t.Errorf("%q: code %d, stderr %q", args, code, stderr)
		}
	}
	if b, _ := os.ReadFile(agentsPath(home)); string(b) != content {
		t.Fatal("the agents file changed")
	}
}

// TestAgentsFileOwnerRefused: an agents file that another user owns, or a
// link to one, is refused like the trust list (its pins are that user's).
func TestAgentsFileOwnerRefused(t *testing.T) {
	if isWindows || os.Getuid() != 0 {
		t.Skip("needs root to give a file to another user")
	}
	for _, link := range []bool{false, true} {
		t.Run(map[bool]string{false: "owned by another user", true: "a link to such a file"}[link], func(t *testing.T) {
			home, theirs := t.TempDir(), filepath.Join(t.TempDir(), "agents")
			if !link {
				theirs = agentsPath(home)
			}
			if err := os.WriteFile(theirs, []byte("web1 10.0.0.1 "+tpA+"\n"), 0o644); err != nil || os.Chown(theirs, 65534, 65534) != nil {
				t.Fatal("cannot make another user's file")
			}
			if link {
				if err := os.Symlink(theirs, agentsPath(home)); err != nil {
					t.Fatal(err)
				}
			}
			_, stderr, code := runCLI("agents", "list", "-home", home)
			if code != 1 || !strings.Contains(stderr, "is owned by uid 65534") || !strings.Contains(stderr, "so its pins cannot be relied on") {
				t.Fatalf("code %d, stderr %q", code, stderr)
			}
		})
	}
}

func TestAgentsCommands(t *testing.T) {
	home := t.TempDir()
	path := agentsPath(home)
	hand := "# my lab\n\nweb1   10.0.0.1    " + tpA + "   web\n# a note about web2\nsomething this build does not understand\n"
	if err := os.WriteFile(path, []byte(hand), 0o600); err != nil {
		t.Fatal(err)
	}
	other := strings.Repeat("B", 64)
	steps := []struct {
		name           string
		args           []string
		code           int
		stdout, stderr string
	}{
		{"add with -pin", []string{"add", "-pin", strings.ToLower(other), "db1", "[fd00::5]:11000", "db", "eu"}, 0, `added db1 ([fd00::5]:11000, pin BBBB…BBBB, tags db eu) in "` + path + `"`, "malformed agent at line 5"},
		{"replace the pin", []string{"add", "-pin", other, "web1", "10.0.0.9", "web"}, 0, "replaced the pin of web1: was " + tpA + ", now " + other, ""},
		{"no pin, no terminal", []string{"add", "web2", "10.0.0.2"}, 1, "", "pass -pin THUMBPRINT"},
		{"no pin names -accept-new", []string{"add", "web2", "10.0.0.2"}, 1, "", "or -accept-new to record the thumbprint"},
		{"malformed pin", []string{"add", "-pin", "12AB", "web2", "10.0.0.2"}, 2, "", `-pin: thumbprint "12AB" is not 64 hex digits`},
		{"both ways", []string{"add", "-pin", other, "-accept-new", "web2", "10.0.0.2"}, 2, "", "-pin and -accept-new exclude each other"},
		{"bad name", []string{"add", "-pin", other, "all", "10.0.0.2"}, 2, "", `"all" is reserved`},
		{"bad address", []string{"add", "-pin", other, "web2", "10.0.0.2:0"}, 2, "", `port "0"`},
		{"bad tag", []string{"add", "-pin", other, "web2", "10.0.0.2", "x=y"}, 2, "", `option "x=y"`},
		{"tag", []string{"tag", "web1", "canary", "web"}, 0, "web1: tags web canary", ""},
		{"untag a missing tag", []string{"untag", "web1", "nope"}, 1, "", `agent "web1" has no tag "nope": nothing changed`},
		{"untag", []string{"untag", "web1", "web"}, 0, "web1: tags canary", ""},
		{"remove an unknown name", []string{"remove", "db1", "nope"}, 1, "", `no agent "nope"`},
		{"list", []string{"list"}, 0, "NAME  ADDRESS          PIN        TAGS\nweb1  10.0.0.9         BBBB…BBBB  canary\ndb1   [fd00::5]:11000  BBBB…BBBB  db eu\n", ""},
		{"list a tag", []string{"list", "@db"}, 0, "db1", ""},
		{"list an unknown tag", []string{"list", "@nope"}, 2, "", `tag "@nope" matches no agent`},
		{"unknown subcommand", []string{"frob"}, 2, "", `unknown subcommand "frob"`},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			before, _ := os.ReadFile(path)
			args := append([]string{"agents", s.args[0], "-home", home}, s.args[1:]...)
			if s.args[0] == "frob" {
				args = []string{"agents", "frob"}
			}
			stdout, stderr, code := runCLI(args...)
			if code != s.code || !strings.Contains(stdout, s.stdout) || !strings.Contains(stderr, s.stderr) {
				t.Fatalf("code %d (want %d)\nstdout %q (want %q)\nstderr %q (want %q)", code, s.code, stdout, s.stdout, stderr, s.stderr)
			}
			if after, _ := os.ReadFile(path); code != 0 && string(after) != string(before) {
				t.Fatalf("a refused command changed the file:\n%s", after)
			}
		})
	}
	got, _ := os.ReadFile(path)
	for _, keep := range []string{"# my lab\n\n", "# a note about web2\nsomething this build does not understand\n", "db1       [fd00::5]:11000    " + other + "  db  eu\n"} {
		if !strings.Contains(string(got), keep) {
			t.Errorf("file lacks %q:\n%s", keep, got)
		}
	}
	if fi, _ := os.Stat(path); !isWindows && fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %04o, want the file's 0600 kept", fi.Mode().Perm())
	}
	stdout, _, code := runCLI("agents", "list", "-home", home, "-json")
	var first struct {
		Name, Address, Pin string
		Tags               []string
	}
	if code != 0 || json.Unmarshal([]byte(strings.Split(stdout, "\n")[0]), &first) != nil || first.Name != "web1" || first.Pin != other || len(first.Tags) != 1 {
		t.Fatalf("list -json: %q", stdout)
	}
	if _, _, code := runCLI("agents", "remove", "-home", home, "web1", "db1"); code != 0 {
		t.Fatal("remove failed")
	}
	if got, _ := os.ReadFile(path); strings.Contains(string(got), other) || !strings.Contains(string(got), "does not understand") {
		t.Fatalf("after remove:\n%s", got)
	}
}

func TestAgentsAddLearnsPin(t *testing.T) {
	// The agent does not trust this client yet: -accept-new must still
	// learn its pin, from the certificate it presents first.
	a := startAgent(t)
	home := t.TempDir()
	writeTrust(t, a.home, "")
	stdout, stderr, code := runCLI("agents", "add", "-home", home, "-accept-new", "web1", a.addr, "web")
	if code != 0 || !strings.Contains(stdout, a.addr+" presents thumbprint "+a.thumbprint) || !strings.Contains(stdout, "does not trust this client yet") {
		t.Fatalf("code %d\nstdout %q\nstderr %q", code, stdout, stderr)
	}
	af, _ := readAgents(home)
	if e := af.byName["web1"]; e == nil || e.Pin != a.thumbprint {
		t.Fatalf("entry %+v", e)
	}
	client, _ := ensureIdentity(&config{Home: home}, io.Discard)
	writeTrust(t, a.home, client.thumbprint+" lab\n")
	if out, stderr, code := runCLI("call", "-home", home, "web1", "ping"); code != 0 || !strings.Contains(out, "pong") {
		t.Fatalf("call web1 ping: %d %q %q", code, out, stderr)
	}
	// The agent's key changes: -accept-new refuses to take the new one.
	b := startAgent(t)
	stdout, stderr, code = runCLI("agents", "add", "-home", home, "-accept-new", "web1", b.addr)
	if code != 1 || !strings.Contains(stderr, `"web1" is pinned to `+a.thumbprint+", but "+b.addr+" presents "+b.thumbprint) || !strings.Contains(stderr, "tentacle agents add -pin "+b.thumbprint) {
		t.Fatalf("code %d\nstdout %q\nstderr %q", code, stdout, stderr)
	}
	// On a terminal: the question, answered no, then yes.
	defer func(p func() (io.Reader, bool)) { promptInput = p }(promptInput)
	for _, tt := range []struct {
		answer string
		code   int
		pin    string
	}{{"n\n", 1, a.thumbprint}, {"", 1, a.thumbprint}, {"yes\n", 0, b.thumbprint}} {
		promptInput = func() (io.Reader, bool) { return strings.NewReader(tt.answer), true }
		stdout, stderr, code = runCLI("agents", "add", "-home", home, "web1", b.addr)
		if code != tt.code || !strings.Contains(stdout, b.addr+" presents thumbprint "+b.thumbprint) || !strings.Contains(stderr, "web1 is pinned to "+a.thumbprint+" now\ntrust it as web1? [y/N] ") {
			t.Fatalf("answer %q: code %d\nstdout %q\nstderr %q", tt.answer, code, stdout, stderr)
		}
		if af, _ := readAgents(home); af.byName["web1"].Pin != tt.pin {
			t.Fatalf("answer %q: pin %s", tt.answer, af.byName["web1"].Pin)
		}
	}
	if !strings.Contains(stdout, "replaced the pin of web1: was "+a.thumbprint+", now "+b.thumbprint) {
		t.Fatalf("stdout %q", stdout)
	}
	// Nothing listens: nothing to learn, nothing written.
	_, stderr, code = runCLI("agents", "add", "-home", home, "-accept-new", "-connect-timeout", "2s", "web2", closedPort(t))
	if code != 1 || !strings.Contains(stderr, "failed to learn the pin of") {
		t.Fatalf("code %d, stderr %q", code, stderr)
	}
}

// closedPorts are up to n loopback addresses where nothing listens:
// privileged ports, which no test binds (an ephemeral one, freed, may be
// taken by any process on the machine meanwhile), checked closed now.
func closedPorts(t testing.TB, n int) []string {
	t.Helper()
	var closed []string
	for port := 1; port < 1024 && len(closed) < n; port++ {
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			continue
		}
		closed = append(closed, addr)
	}
	if len(closed) == 0 {
		t.Skip("every privileged loopback port answers: no closed port to test with")
	}
	return closed
}

func closedPort(t testing.TB) string { return closedPorts(t, 1)[0] }

// FuzzAgentsFile: any bytes as an agents file parse without a panic, every
// line is either kept as an entry, blank or a comment, or reported with its
// number, and an entry written back as a line reads back the same.
func FuzzAgentsFile(f *testing.F) {
	f.Add("web1 10.0.0.1 " + tpA + " web prod\n# comment\n\n")
	f.Add("db1 [::1]:10933 sha256:" + strings.ToLower(tpA) + "\nweb1 h " + tpA + "\nweb1 h " + tpA + "\n")
	f.Add("x\n" + strings.Repeat("a", maxAgentsLine+2) + "\ny y y\r\n")
	f.Fuzz(func(t *testing.T, text string) {
		a := &agentsFile{path: "fuzz", byName: map[string]*agentEntry{}}
		if err := a.parse(strings.NewReader(text)); err != nil {
			return // larger than the file cap
		}
		kept := 0
		for _, l := range a.lines {
			if s := strings.TrimSpace(l); l != droppedLine && (s == "" || s[0] == '#') {
				kept++
			}
		}
		if kept+len(a.entries)+len(a.problems) != len(a.lines) {
			t.Fatalf("%d lines: %d blank or comments, %d entries, %d problems", len(a.lines), kept, len(a.entries), len(a.problems))
		}
		for _, e := range a.entries {
			if a.byName[e.Name] != e || len(e.Pin) != 64 {
				t.Fatalf("entry %+v", e)
			}
			back, err := parseAgentLine(e.text())
			if err != nil || back.Name != e.Name || back.Addr != e.Addr || back.Pin != e.Pin || !slices.Equal(back.Tags, e.Tags) {
				t.Fatalf("%q reads back as %+v, %v", e.text(), back, err)
			}
		}
	})
}
