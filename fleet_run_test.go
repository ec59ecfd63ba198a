package main

// fleet_run_test.go: targets and fan-out mode against several real agents
// on 127.0.0.1: prefixed whole lines, -group, -json, the summary and exit
// codes, agents that are unreachable, silent, pinned wrong or refusing, a
// thousand agents in one fan-out, the fan-out commands, and starts that
// are sent again with their ticket when the answer is lost.

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestTargets(t *testing.T) {
	needSh(t)
	fl := startFleet(t, 2, func(i int) []string { return []string{"web"} })
	a1 := fl.agents[0]
	tests := []struct {
		name           string
		cmd            string
		args           []string
		code           int
		stdout, stderr string
	}{
		{"a NAME is single mode", "exec", []string{"a1", "--", "echo hi"}, 0, "hi\n", ""},
		{"a NAME with its own -pin", "exec", []string{"-pin", strings.ToLower(a1.thumbprint), "a1", "--", "echo hi"}, 0, "hi\n", ""},
		{"a NAME over TENTACLE_PIN", "exec", []string{"a1", "--", "echo hi"}, 0, "hi\n", ""},
		{"a NAME with another -pin", "exec", []string{"-pin", tpA, "a1", "--", "echo hi"}, 2, "", `-pin ` + tpA + ` is not the pin of agent "a1"`},
		{"an address without a pin", "exec", []string{"web9", "--", "true"}, 2, "", `"web9" is neither an agent in "` + agentsPath(fl.home) + `" nor pinned`},
		{"an unknown name in a list", "exec", []string{"a1,web9", "--", "true"}, 2, "", `no agent "web9" in`},
		{"an unknown tag", "exec", []string{"@db", "--", "true"}, 2, "", `tag "@db" matches no agent`},
		{"download takes one agent", "download", []string{"@web", "x", "y"}, 2, "", `TARGET "@web" selects several agents, but download takes one`},
		{"job takes one agent", "job", []string{"all", "0123456789abcdef"}, 2, "", "but job takes one"},
		{"a fan-out flag in single mode", "exec", []string{"-parallel", "2", "a1", "--", "true"}, 2, "", `-parallel applies to several agents: give a TARGET such as @TAG, all or a list ("a1,"`},
		{"bad -parallel", "exec", []string{"-parallel", "0", "all", "--", "true"}, 2, "", "-parallel must be at least 1"},
		{"bad -batch", "deploy", []string{"-batch", "0%", "all", "app", "1", "pkg"}, 2, "", `-batch "0%"`},
		{"a list of one is fan-out", "exec", []string{"a1,", "--", "echo hi"}, 0, "a1 | hi\n", "1 agent: 1 ok ("},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if strings.Contains(tt.name, "TENTACLE_PIN") {
				t.Setenv("TENTACLE_PIN", tpA) // another agent's: a NAME's own pin wins
			}
			stdout, stderr, code := fl.cli(tt.cmd, tt.args...)
			if code != tt.code || !strings.Contains(stdout, tt.stdout) || !strings.Contains(stderr, tt.stderr) {
				t.Fatalf("code %d (want %d)\nstdout %q (want %q)\nstderr %q (want %q)", code, tt.code, stdout, tt.stdout, stderr, tt.stderr)
			}
		})
	}
	// A NAME is byte for byte what its address and pin give.
	script := []string{"--", "echo out; echo err >&2; exit 3"}
	o1, e1, c1 := fl.cli("exec", append([]string{"a1"}, script...)...)
	o2, e2, c2 := fl.cli("exec", append([]string{"-pin", a1.thumbprint, a1.addr}, script...)...)
	if o1 != o2 || e1 != e2 || c1 != c2 || c1 != 3 {
		t.Fatalf("NAME: %q %q %d; address: %q %q %d", o1, e1, c1, o2, e2, c2)
	}
	// A job started by NAME is followed by NAME.
	out, _, _ := fl.cli("call", "a1", "script.start", `{"script":"echo later"}`)
	var started struct{ Ticket string }
	json.Unmarshal([]byte(out), &started)
	if out, stderr, code := fl.cli("job", "-follow", "a1", started.Ticket); code != 0 || out != "later\n" {
		t.Fatalf("job -follow a1: %d %q %q", code, out, stderr)
	}
}

// prefixed is the pattern of a fan-out output line.
var prefixed = regexp.MustCompile(`^(a\d+) +\| (.*)$`)

func TestFanOutExec(t *testing.T) {
	needSh(t)
	fl := startFleet(t, 3, func(i int) []string { return []string{"web"} })
	fl.writeAgents(fl.readAgents() + "long-name-agent " + fl.agents[0].addr + " " + fl.agents[0].thumbprint + " other\n")
	// Each agent writes many lines on both streams, in pieces, at once:
	// every line comes out whole with its own prefix.
	script := `i=0; while [ $i -lt 300 ]; do printf 'out %s ' $i; printf 'of %s\n' "$TENTACLE_TICKET"; echo "err $i" >&2; i=$((i+1)); done; [ "$1" = fail ] && exit 4; exit 0`
	stdout, stderr, code := fl.cli("exec", "@web", "--", script)
	if code != 0 {
		t.Fatalf("code %d, stderr %q", code, stderr)
	}
	counts := map[string]int{}
	for _, l := range strings.Split(strings.TrimSuffix(stdout, "\n"), "\n") {
		m := prefixed.FindStringSubmatch(l)
		if m == nil || !regexp.MustCompile(`^out \d+ of [0-9a-f]+$`).MatchString(m[2]) || !strings.HasPrefix(l, m[1]+" | ") {
			t.Fatalf("stdout line %q", l)
		}
		counts[m[1]]++
	}
	for _, n := range []string{"a1", "a2", "a3"} {
		if counts[n] != 300 {
			t.Fatalf("%s wrote %d stdout lines: %v", n, counts[n], counts)
		}
	}
	lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
	if last := lines[len(lines)-1]; !regexp.MustCompile(`^3 agents: 3 ok \(\d+\.\ds\)$`).MatchString(last) || len(lines) != 901 {
		t.Fatalf("%d stderr lines, last %q", len(lines), last)
	}
	// Names are padded to the longest selected one.
	stdout, stderr, code = fl.cli("exec", "a1,long-name-agent", "--", `echo "x 5"; exit 5`)
	if code != 1 || stdout != "a1              | x 5\nlong-name-agent | x 5\n" && stdout != "long-name-agent | x 5\na1              | x 5\n" {
		t.Fatalf("code %d, stdout %q", code, stdout)
	}
	if !strings.Contains(stderr, "a1               failed       exit 5\nlong-name-agent  failed       exit 5\n2 agents: 0 ok, 2 failed (") {
		t.Fatalf("stderr %q", stderr)
	}
	// -group: one block per agent, with its outcome.
	stdout, _, code = fl.cli("exec", "-group", "@web", "--", `echo one; echo two`)
	if code != 0 {
		t.Fatal(code)
	}
	for _, n := range []string{"a1", "a2", "a3"} {
		if !regexp.MustCompile(`── ` + n + ` \(ok, exit 0, \d+\.\ds\) ──\none\ntwo\n`).MatchString(stdout) {
			t.Fatalf("no block for %s in %q", n, stdout)
		}
	}
	// -json: output events, then one end event per agent; nothing else.
	stdout, stderr, code = fl.cli("exec", "-json", "@web", "--", `echo "hi"; echo oops >&2; [ "$TENTACLE_TICKET" ] && exit 2`)
	if code != 1 || stderr != "" {
		t.Fatalf("code %d, stderr %q", code, stderr)
	}
	ends := map[string]map[string]any{}
	streams := map[string]int{}
	for _, l := range strings.Split(strings.TrimSuffix(stdout, "\n"), "\n") {
		var ev map[string]any
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		if s, ok := ev["stream"]; ok {
			streams[fmt.Sprint(ev["agent"], s, ev["text"])]++
		} else {
			ends[ev["agent"].(string)] = ev
		}
	}
	for i, n := range []string{"a1", "a2", "a3"} {
		e := ends[n]
		if e == nil || e["outcome"] != "failed" || e["exit_code"] != 2.0 || e["address"] != fl.agents[i].addr || e["error"] != "exit 2" || streams[n+"stdouthi"] != 1 || streams[n+"stderroops"] != 1 {
			t.Fatalf("%s: end %v, streams %v", n, e, streams)
		}
	}
}

func TestFanOutDeadAgents(t *testing.T) {
	needSh(t)
	fl := startFleet(t, 2, nil)
	// An agent that accepts connections and never says a word, one that
	// nobody listens for, one whose pin is wrong, and one that does not
	// trust this client.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	}()
	stranger := startAgent(t)
	a1 := fl.agents[0]
	fl.writeAgents(fl.readAgents() + strings.Join([]string{
		"silent " + silent.Addr().String() + " " + tpA,
		"gone " + closedPort(t) + " " + tpA,
		"wrongpin " + a1.addr + " " + tpA,
		"stranger " + stranger.addr + " " + stranger.thumbprint,
	}, "\n") + "\n")
	start := time.Now()
	_, stderr, code := fl.cli("exec", "-connect-timeout", "1s", "all", "--", "echo up")
	took := time.Since(start)
	if code != 1 || took > 5*time.Second {
		t.Fatalf("code %d after %v, stderr %q", code, took, stderr)
	}
	for _, want := range []string{
		"silent    timeout      no answer from " + silent.Addr().String() + " within 1s",
		"gone      unreachable  ",
		"wrongpin  pin-mismatch the agent at " + a1.addr + " has thumbprint " + a1.thumbprint + ", not the pinned " + tpA,
		"stranger  refused      the agent at " + stranger.addr + " does not trust this client (thumbprint " + fl.client.thumbprint + ")",
		"\"tentacle trust add " + fl.client.thumbprint + " NAME\"",
		"6 agents: 2 ok, 1 unreachable, 1 refused, 1 pin-mismatch, 1 timeout (",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	// agents status says the same, in its table.
	stdout, stderr, code := fl.cli("agents status", "-connect-timeout", "1s")
	if code != 1 {
		t.Fatalf("status: code %d", code)
	}
	for _, want := range []string{
		"NAME      ADDRESS", "STATE         RTT", "a1        " + a1.addr + "  ok ", "silent", "timeout", "gone", "unreachable", "pin-mismatch", "refused",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("status lacks %q:\n%s", want, stdout)
		}
	}
	if !strings.Contains(stderr, "6 agents: 2 ok, 1 unreachable, 1 refused, 1 pin-mismatch, 1 timeout (") {
		t.Errorf("status stderr %q", stderr)
	}
}

func TestAgentsStatus(t *testing.T) {
	needSh(t)
	fl := startFleet(t, 2, func(i int) []string { return []string{fmt.Sprint("t", i)} })
	pkg := scriptPkg(t, "1.0")
	cc := fl.dial(1)
	if st, _ := deploy(t, cc, "shop", "1.0", pkg, nil); outcomeOf(st) != outcomeSuccess {
		t.Fatalf("deploy: %s", outcomeOf(st))
	}
	ticket := startJob(t, cc, map[string]any{"script": "sleep 30"})
	defer cc.call("job.cancel", map[string]any{"ticket": ticket}, nil)
	stdout, stderr, code := fl.cli("agents status", "-json")
	if code != 0 || stderr != "" {
		t.Fatalf("code %d, stderr %q", code, stderr)
	}
	var rows []statusRow
	for _, l := range strings.Split(strings.TrimSuffix(stdout, "\n"), "\n") {
		var r statusRow
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatal(err)
		}
		rows = append(rows, r)
	}
	if len(rows) != 2 || rows[1].State != "ok" || *rows[1].Jobs != 1 || rows[1].Apps["shop"] != "1.0" || *rows[0].Jobs != 0 || len(rows[0].Apps) != 0 || *rows[0].Version != versionString() || rows[0].RTTms == nil {
		t.Fatalf("rows %+v", rows)
	}
	stdout, _, code = fl.cli("agents status", "@t1")
	if code != 0 || !regexp.MustCompile(`(?m)^NAME +ADDRESS +STATE +RTT +VERSION +UPTIME +JOBS +APPS\na2 +127\.0\.0\.1:\d+ +ok +\d+\.\dms +\S+ +\d+s +1 +shop=1\.0\n$`).MatchString(stdout) {
		t.Fatalf("code %d, table %q", code, stdout)
	}
}

// TestFanOutThousandAgents: 1,000 agents in one file and one fan-out; the
// client's open files and memory stay bounded by -parallel, and the
// unreachable ones do not hold up the others.
func TestFanOutThousandAgents(t *testing.T) {
	needSh(t)
	if _, err := os.Stat("/proc/self/fd"); err != nil {
		t.Skip("needs /proc to count the client's open files")
	}
	if raceDetector || testing.Short() {
		t.Skip("a thousand agents take too long under -race or -short")
	}
	bin := buildTentacle(t)
	fl := startFleet(t, 4, nil)
	closed := closedPorts(t, 100) // for four entries in five
	var b strings.Builder
	for i := range 1000 {
		a := fl.agents[i%4]
		addr := a.addr
		if i%5 != 0 {
			addr = closed[i%len(closed)]
		}
		fmt.Fprintf(&b, "n%04d %s %s\n", i, addr, a.thumbprint)
	}
	fl.writeAgents(b.String())
	const parallel = 32
	cmd := exec.Command(bin, "exec", "-home", fl.home, "-parallel", strconv.Itoa(parallel), "all", "--", "echo ok")
	var stdout, stderr syncBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	memory := peakMemory(cmd.Process.Pid)
	var maxFDs atomic.Int64
	sampled := make(chan struct{})
	go func() { // count the client's open files while it runs
		defer close(sampled)
		for {
			des, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", cmd.Process.Pid))
			if err != nil {
				return
			}
			maxFDs.Store(max(maxFDs.Load(), int64(len(des))))
			time.Sleep(time.Millisecond)
		}
	}()
	err := cmd.Wait()
	took := time.Since(start)
	<-sampled
	if cmd.ProcessState.ExitCode() != 1 {
		t.Fatalf("exit %v, stderr tail %q", err, tail(stderr.String(), 500))
	}
	if n := strings.Count(stdout.String(), " | ok\n"); n != 200 {
		t.Fatalf("%d agents printed ok, want 200", n)
	}
	if last := tail(stderr.String(), 80); !strings.Contains(last, "1000 agents: 200 ok, 800 unreachable (") {
		t.Fatalf("total %q", last)
	}
	rss := memory()
	t.Logf("1000 agents, -parallel %d: %v, at most %d open files, peak RSS %.1f MiB", parallel, took.Round(time.Millisecond), maxFDs.Load(), float64(rss)/1024)
	if maxFDs.Load() > 2*parallel+20 {
		t.Errorf("the client held %d files open at once, more than -parallel %d allows", maxFDs.Load(), parallel)
	}
	if rss > 100<<10 {
		t.Errorf("peak RSS %d KiB", rss)
	}
	if took > 60*time.Second {
		t.Errorf("took %v", took)
	}
}

func tail(s string, n int) string { return s[max(0, len(s)-n):] }

func TestFanOutCommands(t *testing.T) {
	needSh(t)
	fl := startFleet(t, 3, func(i int) []string { return []string{"web"} })
	dir := t.TempDir()
	conf := writeTemp(t, []byte("listen 8080\n"))
	pkg := writeFileIn(dir, "shop.tar.gz", scriptPkg(t, "1.0"))
	steps := []struct {
		name   string
		cmd    string
		args   []string
		stdout []string // patterns each agent's lines match, NAME and HOME being the agent's
	}{
		{"call", "call", []string{"all", "ping"}, []string{`NAME \| \{"pong":true\}`}},
		{"upload", "upload", []string{"all", conf, "app.conf"}, []string{`NAME \| uploaded "` + regexp.QuoteMeta(conf) + `" to "HOME/files/app.conf" \(12 B, sha256 [0-9a-f]{64}\)`}},
		{"push", "push", []string{"all", pkg}, []string{"NAME \\| " + shaOfFile(t, pkg) + ` \(sent \d`}},
		{"push again", "push", []string{"all", pkg}, []string{"NAME \\| " + shaOfFile(t, pkg) + ` \(already there: nothing sent\)`}},
		{"deploy", "deploy", []string{"all", "shop", "1.0", pkg}, []string{`NAME \| deployed shop 1\.0 as release 1\.0: current -> 1\.0`}},
		{"deploy again", "deploy", []string{"all", "shop", "1.0", pkg}, []string{`NAME \| deployed shop 1\.0 as release 1\.0_1: current -> 1\.0_1`}},
		{"releases", "releases", []string{"all", "shop"}, []string{`NAME +1\.0 +1\.0 +\S+ +success +[0-9a-f]{12}`, `NAME +\* +1\.0_1 +1\.0 `}},
		{"apps", "releases", []string{"all"}, []string{`NAME +shop +1\.0_1`}},
		{"rollback", "rollback", []string{"all", "shop"}, []string{`NAME \| shop: current -> 1\.0 \(was 1\.0_1\)`}},
		{"jobs", "jobs", []string{"all"}, []string{`AGENT +TICKET +KIND +STATE +OUTCOME +STARTED`}},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			stdout, stderr, code := fl.cli(s.cmd, s.args...)
			if code != 0 || !strings.Contains(stderr, "3 agents: 3 ok (") {
				t.Fatalf("code %d, stderr %q", code, stderr)
			}
			for i, name := range fl.names {
				for _, want := range s.stdout {
					want = strings.ReplaceAll(strings.ReplaceAll(want, "NAME", name), "HOME", regexp.QuoteMeta(fl.agents[i].home))
					if !regexp.MustCompile(`(?m)^` + want).MatchString(stdout) {
						t.Fatalf("stdout lacks %q:\n%s", want, stdout)
					}
				}
			}
		})
	}
	// -json carries each command's result.
	stdout, _, _ := fl.cli("rollback", "-json", "a2,", "shop", "1.0_1")
	var ev struct {
		Agent, Outcome, Current string
		Previous                *string
	}
	if json.Unmarshal([]byte(stdout), &ev) != nil || ev.Agent != "a2" || ev.Outcome != "ok" || ev.Current != "1.0_1" || *ev.Previous != "1.0" {
		t.Fatalf("rollback -json %q", stdout)
	}
}

func writeFileIn(dir, name string, data []byte) string {
	p := dir + string(os.PathSeparator) + name
	if err := os.WriteFile(p, data, 0o644); err != nil {
		panic(err)
	}
	return p
}

func shaOfFile(t *testing.T, path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return shaOf(b)
}

// loseFirstAnswer is a TCP relay to an agent that, on the first
// connection, forwards what the client sends but drops the connection
// instead of forwarding the agent's first answer sent once lose() holds:
// the client's request reached the agent and was carried out, and its
// answer was lost on the way back.
type loseFirstAnswer struct {
	ln    net.Listener
	lose  func() bool
	cut   atomic.Bool
	conns atomic.Int32
}

func startLoseFirstAnswer(t *testing.T, target string, lose func() bool) *loseFirstAnswer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &loseFirstAnswer{ln: ln, lose: lose}
	relayEach(t, ln, target, func(in, out net.Conn) {
		r.conns.Add(1)
		go func() { io.Copy(out, in); out.Close() }()
		go func() {
			defer in.Close()
			buf := make([]byte, 64<<10)
			for {
				n, err := out.Read(buf)
				if n > 0 && !r.cut.Load() && r.lose() {
					r.cut.Store(true)
					in.Close()
					out.Close()
					return
				}
				if n > 0 {
					if _, werr := in.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	})
	return r
}

// agentTakesTickets reports whether the agent accepts a client-chosen
// ticket (PROTOCOL §5); an older one refuses the field.
func agentTakesTickets(fl *testFleet, i int) bool {
	err := fl.dial(i).call("script.start", map[string]any{"script": "true", "ticket": clientTicket()}, nil)
	return rpcKind(err) != kindInvalidParams
}

func TestStartResentWithTicket(t *testing.T) {
	needSh(t)
	fl := startFleet(t, 1, nil)
	a := fl.agents[0]
	if !agentTakesTickets(fl, 0) {
		t.Skip("this agent does not take a client-chosen ticket yet (PROTOCOL §5, the jobs branch): nothing to test against")
	}
	for _, mode := range []string{"single", "fan-out"} {
		t.Run(mode, func(t *testing.T) {
			marks := t.TempDir() + "/runs"
			// The agent's answer to the start is lost once the job exists.
			jobs := func() int {
				var list struct {
					Jobs []jobListItem `json:"jobs"`
				}
				c, err := dialAgent(a.addr, fl.client, a.thumbprint, "", 10*time.Second, nil)
				if err != nil {
					return -1
				}
				defer c.Close()
				c.call("job.list", nil, &list)
				return len(list.Jobs)
			}
			before := jobs()
			relay := startLoseFirstAnswer(t, a.addr, func() bool { return jobs() > before })
			fl.writeAgents(fmt.Sprintf("x %s %s\n", relay.ln.Addr(), a.thumbprint))
			target := "x"
			if mode == "fan-out" {
				target = "x,"
			}
			stdout, stderr, code := fl.cli("exec", target, "--", `echo run >> `+marks+`; echo done`)
			if code != 0 || !strings.Contains(stdout, "done") || !relay.cut.Load() || relay.conns.Load() < 2 {
				t.Fatalf("code %d, cut %v, %d connections\nstdout %q\nstderr %q", code, relay.cut.Load(), relay.conns.Load(), stdout, stderr)
			}
			if b, _ := os.ReadFile(marks); string(b) != "run\n" {
				t.Fatalf("the job ran %d times", strings.Count(string(b), "run"))
			}
			if !strings.Contains(stderr, "connection lost") || !strings.Contains(stderr, "reconnected") {
				t.Fatalf("stderr %q", stderr)
			}
		})
	}
}

// TestTicketlessAgent: an agent older than client-chosen tickets refuses
// the field; exec and deploy send the start again without it, once.
func TestTicketlessAgent(t *testing.T) {
	needSh(t)
	if testing.Short() {
		t.Skip("builds the agent of an earlier commit")
	}
	bin := buildOlderAgent(t, "fa7564e")
	fl := startFleet(t, 1, nil)
	a := fl.agents[0]
	a.stop()
	p := startProcAgent(t, bin, a.home)
	fl.writeAgents(fmt.Sprintf("old %s %s\n", p.addr, p.thumbprint))
	ticketless.Delete("old")
	for _, target := range []string{"old", "old,"} {
		stdout, stderr, code := fl.cli("exec", target, "--", "echo from the old agent")
		if code != 0 || !strings.Contains(stdout, "from the old agent") {
			t.Fatalf("%s: code %d, stdout %q, stderr %q", target, code, stdout, stderr)
		}
	}
	if _, old := ticketless.Load("old"); !old {
		t.Fatal("the old agent was not remembered")
	}
	pkg := writeFileIn(t.TempDir(), "p.tar.gz", scriptPkg(t, "1.0"))
	if stdout, stderr, code := fl.cli("deploy", "old", "shop", "1.0", pkg); code != 0 {
		t.Fatalf("deploy: code %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

// buildOlderAgent builds the tentacle of an earlier commit of this
// repository, a real agent of an older version.
func buildOlderAgent(t *testing.T, rev string) string {
	t.Helper()
	if runtime.GOOS == "windows" {
		t.Skip("builds with git and tar")
	}
	src := t.TempDir()
	archive := exec.Command("sh", "-c", "git archive "+rev+" | tar -x -C "+src)
	if out, err := archive.CombinedOutput(); err != nil {
		t.Skipf("no commit %s to build (%v): %s", rev, err, out)
	}
	bin := src + "/tentacle-old"
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir = src
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", rev, err, out)
	}
	return bin
}

// peakMemory samples the peak resident memory (VmHWM) of a running
// process until it exits, in KiB. The rusage of a child would not do:
// Linux carries the parent's high-water mark into a child that was
// vforked, as os/exec does, so it reports the test process's.
func peakMemory(pid int) (wait func() int64) {
	var peak atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
			if err != nil {
				return
			}
			for l := range strings.SplitSeq(string(data), "\n") {
				if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
					n, _ := strconv.ParseInt(f[1], 10, 64)
					peak.Store(max(peak.Load(), n))
				}
			}
			time.Sleep(time.Millisecond)
		}
	}()
	return func() int64 { <-done; return peak.Load() }
}

func TestFanOutReconnects(t *testing.T) {
	needSh(t)
	fl := startFleet(t, 2, nil)
	r := startRelay(t, fl.agents[1].addr)
	fl.writeAgents(fmt.Sprintf("a1 %s %s\nvia-relay %s %s\n", fl.agents[0].addr, fl.agents[0].thumbprint, r.ln.Addr(), fl.agents[1].thumbprint))
	gate := t.TempDir() + "/gate"
	var stdout, stderr syncBuffer
	done := make(chan int)
	go func() {
		done <- run([]string{"exec", "-home", fl.home, "all", "--", `echo one; while [ ! -e ` + gate + ` ]; do sleep 0.02; done; echo two`}, &stdout, &stderr)
	}()
	waitFor(t, "both agents' first line", 10*time.Second, func() bool { return strings.Count(stdout.String(), "| one\n") == 2 })
	r.cutThenOpen(t, gate)
	select {
	case code := <-done:
		out, e := stdout.String(), stderr.String()
		if code != 0 || strings.Count(out, "via-relay | one\n") != 1 || strings.Count(out, "via-relay | two\n") != 1 || strings.Count(out, "a1        | two\n") != 1 {
			t.Fatalf("code %d\nstdout %q\nstderr %q", code, out, e)
		}
		if !strings.Contains(e, "via-relay | tentacle exec: connection lost") || !strings.Contains(e, "via-relay | tentacle exec: reconnected, continuing after line 1") {
			t.Fatalf("stderr %q", e)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("exec did not end")
	}
}

// startInterruptibleExec starts "tentacle exec -home HOME ARGS..." as a
// process of its own against a fleet of n agents, for a test that sends it
// Ctrl-C (so not on Windows); it is killed at the test's end.
func startInterruptibleExec(t *testing.T, n int, args ...string) (fl *testFleet, cmd *exec.Cmd, stdout, stderr *syncBuffer) {
	t.Helper()
	needSh(t)
	if runtime.GOOS == "windows" {
		t.Skip("no SIGINT to send on Windows")
	}
	bin := buildTentacle(t)
	fl = startFleet(t, n, nil)
	stdout, stderr = &syncBuffer{}, &syncBuffer{}
	cmd = exec.Command(bin, append([]string{"exec", "-home", fl.home}, args...)...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	return fl, cmd, stdout, stderr
}

func TestFanOutSecondInterrupt(t *testing.T) {
	// The job ignores SIGTERM, so the cancel takes until the agent's kill
	// grace is over: long enough for a second Ctrl-C.
	fl, cmd, stdout, stderr := startInterruptibleExec(t, 1, "a1,", "--", `trap '' TERM; echo started; while :; do sleep 0.05; done`)
	waitFor(t, "the job to start", 10*time.Second, func() bool { return strings.Contains(stdout.String(), "started") })
	cmd.Process.Signal(os.Interrupt)
	waitFor(t, "the cancel", 5*time.Second, func() bool { return strings.Contains(stderr.String(), "cancelling the jobs running on 1 agent") })
	time.Sleep(600 * time.Millisecond) // a second Ctrl-C counts only half a second after the first
	cmd.Process.Signal(os.Interrupt)
	cmd.Wait()
	m := regexp.MustCompile(`a1  cancelled    stopped waiting: job (\S+) may still be running: follow it with "tentacle job -follow a1 (\S+)"`).FindStringSubmatch(stderr.String())
	if cmd.ProcessState.ExitCode() != 1 || m == nil || m[1] != m[2] {
		t.Fatalf("exit %d, stderr %q", cmd.ProcessState.ExitCode(), stderr.String())
	}
	// The hint works: the job ends cancelled once the agent kills it.
	if _, e, code := fl.cli("job", "-follow", "a1", m[1]); code != exitCancelled {
		t.Fatalf("job -follow: code %d, stderr %q", code, e)
	}
}

func TestFleetProgressLine(t *testing.T) {
	var out, errb strings.Builder
	o := &fleetOut{stdout: &out, stderr: &errb, width: 2, prog: &fleetProgress{label: "exec", total: 12, start: time.Now()}}
	o.setPhase("deploy site 2.0", "batch 2/4", 0)
	o.prog.done, o.prog.bad = 7, 1
	o.mu.Lock()
	o.prog.draw(o.stderr)
	o.mu.Unlock()
	o.agent("a1").line(false, "hello")
	o.agent("a2").line(true, "oops")
	want := "\rdeploy site 2.0: batch 2/4 · 7 of 12 done · 6 ok · 1 failed · 0s\x1b[K\r\x1b[Ka2 | oops\n"
	if errb.String() != want || out.String() != "a1 | hello\n" {
		t.Fatalf("stderr %q (want %q), stdout %q", errb.String(), want, out.String())
	}
	o.stopProgress()
	o.mu.Lock()
	o.prog.draw(o.stderr)
	o.mu.Unlock()
	if errb.String() != want {
		t.Fatalf("drawn after stopping: %q", errb.String())
	}
}
