package main

// jobs_test.go: jobs over real TLS with real processes: output, exit codes,
// kills, isolation, long polls, reconnects, restarts, retention, memory, and
// the exec, jobs and job commands.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

// needSh skips a test on a system without sh (Windows): every script here
// is a shell script.
func needSh(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("needs sh")
	}
}

// startJob starts a script job and returns its ticket.
func startJob(t testing.TB, c *clientConn, params map[string]any) string {
	t.Helper()
	var r struct {
		Ticket string `json:"ticket"`
		State  string `json:"state"`
	}
	if err := c.call("script.start", params, &r); err != nil {
		t.Fatalf("script.start %v: %v", params, err)
	}
	if !validTicket(r.Ticket) || (r.State != stateQueued && r.State != stateRunning) {
		t.Fatalf("script.start answered %+v", r)
	}
	return r.Ticket
}

// followJob long-polls a job until it is done and returns its final status
// and every log entry, checking that seqs run 1, 2, 3… without a gap.
func followJob(t testing.TB, c *clientConn, ticket string) (*statusReply, []logEntry) {
	t.Helper()
	var logs []logEntry
	var after int64
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		var st statusReply
		if err := c.call("job.status", map[string]any{"ticket": ticket, "after": after, "wait_ms": 5000}, &st); err != nil {
			t.Fatalf("job.status: %v", err)
		}
		for _, e := range st.Logs {
			if e.Seq != after+1 {
				t.Fatalf("seq %d after %d: entries lost or repeated", e.Seq, after)
			}
			after = e.Seq
			logs = append(logs, e)
		}
		if st.Next != after {
			t.Fatalf("next = %d, want %d (the last seq)", st.Next, after)
		}
		if st.State == stateDone && len(st.Logs) == 0 {
			return &st, logs
		}
	}
	t.Fatalf("job %s did not finish within 30s", ticket)
	return nil, nil
}

// runScript runs a script to its end and returns its status and log.
func runScript(t testing.TB, c *clientConn, params map[string]any) (*statusReply, []logEntry) {
	t.Helper()
	return followJob(t, c, startJob(t, c, params))
}

// texts returns the texts of the entries of stream.
func texts(logs []logEntry, stream string) []string {
	var out []string
	for _, e := range logs {
		if e.Stream == stream {
			out = append(out, e.Text)
		}
	}
	return out
}

func outcomeOf(st *statusReply) string {
	if st.Outcome == nil {
		return "<null>"
	}
	return *st.Outcome
}

func exitCodeOf(st *statusReply) string {
	if st.ExitCode == nil {
		return "<null>"
	}
	return strconv.Itoa(*st.ExitCode)
}

// statusOf is one job.status call without waiting.
func statusOf(t testing.TB, c *clientConn, ticket string) *statusReply {
	t.Helper()
	var st statusReply
	if err := c.call("job.status", map[string]any{"ticket": ticket}, &st); err != nil {
		t.Fatalf("job.status %s: %v", ticket, err)
	}
	return &st
}

func TestScriptOutput(t *testing.T) {
	needSh(t)
	a := startAgent(t)
	c := a.dial(t)
	long := strings.Repeat("x", 200000)
	wide := strings.Repeat("é", 70000) // 140 000 bytes of 2-byte runes
	// Lines this long cannot be arguments (Linux caps one at 128 KiB).
	longFile, wideFile := filepath.Join(t.TempDir(), "long"), filepath.Join(t.TempDir(), "wide")
	os.WriteFile(longFile, []byte(long+"\n"), 0o644)
	os.WriteFile(wideFile, []byte(wide+"\n"), 0o644)
	tests := []struct {
		name   string
		script string
		args   []string
		env    map[string]string
		check  func(t *testing.T, logs []logEntry, ticket string)
	}{
		{"thousands of lines in order per stream", `i=1; while [ $i -le 5000 ]; do echo "out $i"; echo "err $i" >&2; i=$((i+1)); done`, nil, nil,
			func(t *testing.T, logs []logEntry, _ string) {
				out, errs := texts(logs, "stdout"), texts(logs, "stderr")
				if len(out) != 5000 || len(errs) != 5000 {
					t.Fatalf("got %d stdout and %d stderr lines, want 5000 each", len(out), len(errs))
				}
				for i := range 5000 {
					if out[i] != fmt.Sprintf("out %d", i+1) || errs[i] != fmt.Sprintf("err %d", i+1) {
						t.Fatalf("line %d: stdout %q, stderr %q", i+1, out[i], errs[i])
					}
				}
			}},
		{"a 200 000 byte line is split into 64 KiB entries", `cat "$1"; echo after`, []string{longFile}, nil,
			func(t *testing.T, logs []logEntry, _ string) {
				out := texts(logs, "stdout")
				if len(out) != 5 || out[4] != "after" {
					t.Fatalf("got %d entries (want 4 pieces and \"after\")", len(out))
				}
				for i, want := range []int{65536, 65536, 65536, 200000 - 3*65536} {
					if len(out[i]) != want {
						t.Fatalf("piece %d is %d bytes, want %d", i, len(out[i]), want)
					}
				}
				if strings.Join(out[:4], "") != long {
					t.Fatal("the pieces do not join to the line")
				}
			}},
		{"a long line is split between characters", `cat "$1"`, []string{wideFile}, nil,
			func(t *testing.T, logs []logEntry, _ string) {
				out := texts(logs, "stdout")
				for _, p := range out {
					if !utf8.ValidString(p) || strings.ContainsRune(p, utf8.RuneError) || len(p) > maxLogLine {
						t.Fatalf("a piece of %d bytes is not whole characters", len(p))
					}
				}
				if strings.Join(out, "") != wide {
					t.Fatal("the pieces do not join to the line")
				}
			}},
		{"invalid UTF-8 is replaced", `printf 'a\377b\n\300\n'`, nil, nil,
			func(t *testing.T, logs []logEntry, _ string) {
				if out := texts(logs, "stdout"); !slices.Equal(out, []string{"a\uFFFDb", "\uFFFD"}) {
					t.Fatalf("stdout = %q", out)
				}
			}},
		{"control characters, CRLF and a last line without newline", `printf 'tab\there\r\nq"\\\001\nlast'`, nil, nil,
			func(t *testing.T, logs []logEntry, _ string) {
				if out := texts(logs, "stdout"); !slices.Equal(out, []string{"tab\there", "q\"\\\x01", "last"}) {
					t.Fatalf("stdout = %q", out)
				}
			}},
		{"environment, arguments and work directory", `echo "$1|$2|$GREETING|$TENTACLE_TICKET|$TENTACLE_WORK_DIR|$(pwd -P)"`, []string{"one", "two words"}, map[string]string{"GREETING": "hi there"},
			func(t *testing.T, logs []logEntry, ticket string) {
				dir, _ := filepath.EvalSymlinks(a.cfg.workDir())
				wd := filepath.Join(a.cfg.workDir(), ticket)
				want := fmt.Sprintf("one|two words|hi there|%s|%s|%s", ticket, wd, filepath.Join(dir, ticket))
				if out := texts(logs, "stdout"); len(out) != 1 || out[0] != want {
					t.Fatalf("stdout = %q, want %q", out, want)
				}
			}},
		{"stdin is empty", `if read line; then echo "read $line"; else echo eof; fi`, nil, nil,
			func(t *testing.T, logs []logEntry, _ string) {
				if out := texts(logs, "stdout"); !slices.Equal(out, []string{"eof"}) {
					t.Fatalf("stdout = %q", out)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			params := map[string]any{"script": tt.script}
			if tt.args != nil {
				params["args"] = tt.args
			}
			if tt.env != nil {
				params["env"] = tt.env
			}
			ticket := startJob(t, c, params)
			st, logs := followJob(t, c, ticket)
			if outcomeOf(st) != outcomeSuccess {
				t.Fatalf("outcome %s, log %v", outcomeOf(st), logs)
			}
			for _, e := range logs {
				if _, err := time.Parse(time.RFC3339, e.Time); err != nil {
					t.Fatalf("entry %d time %q: %v", e.Seq, e.Time, err)
				}
			}
			tt.check(t, logs, ticket)
		})
	}
}

func TestScriptExitCodes(t *testing.T) {
	needSh(t)
	a := startAgent(t)
	c := a.dial(t)
	tests := []struct {
		name, script, outcome, code string
	}{
		{"zero", "true", outcomeSuccess, "0"},
		{"non-zero", "echo failing >&2; exit 3", outcomeFailed, "3"},
		{"255", "exit 255", outcomeFailed, "255"},
		{"killed by a signal", "kill -9 $$", outcomeFailed, "137"},
		{"syntax error", "if then fi (", outcomeFailed, "2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, _ := runScript(t, c, map[string]any{"script": tt.script})
			if outcomeOf(st) != tt.outcome || exitCodeOf(st) != tt.code || st.Started == nil || st.Finished == nil {
				t.Fatalf("outcome %s, exit code %s, started %v finished %v; want %s, %s", outcomeOf(st), exitCodeOf(st), st.Started, st.Finished, tt.outcome, tt.code)
			}
		})
	}
	t.Run("other shells", func(t *testing.T) {
		if _, err := exec.LookPath("bash"); err != nil {
			t.Skip("no bash")
		}
		sh, _ := exec.LookPath("sh")
		for _, shell := range []string{"bash", sh} {
			st, logs := runScript(t, c, map[string]any{"script": `echo "$0"`, "shell": shell})
			if outcomeOf(st) != outcomeSuccess || len(texts(logs, "stdout")) != 1 {
				t.Fatalf("shell %s: outcome %s, log %v", shell, outcomeOf(st), logs)
			}
		}
	})
}

// TestJobErrors: every bad request gets a clear error, no job is left
// behind, and the agent keeps serving.
func TestJobErrors(t *testing.T) {
	needSh(t)
	a := startAgent(t)
	c := a.dial(t)
	running := startJob(t, c, map[string]any{"script": "sleep 1000"})
	t.Cleanup(func() { c.call("job.cancel", map[string]any{"ticket": running}, nil) })
	noShell := "pwsh"
	if _, err := exec.LookPath("pwsh"); err == nil {
		noShell = "/nonexistent/shell"
	}
	tests := []struct {
		name   string
		method string
		params string
		kind   string
		msg    string
	}{
		{"no script", "script.start", `{}`, kindInvalidParams, `missing field "script"`},
		{"unknown field", "script.start", `{"script":"true","timeout":5}`, kindInvalidParams, `unknown field "timeout"`},
		{"mistyped field", "script.start", `{"script":"true","args":"a b"}`, kindInvalidParams, `field "args"`},
		{"shell not installed", "script.start", `{"script":"true","shell":"` + noShell + `"}`, kindInvalidParams, "is not installed"},
		{"interpreter path missing", "script.start", `{"script":"true","shell":"/nonexistent/python"}`, kindInvalidParams, "is not installed"},
		{"relative interpreter", "script.start", `{"script":"true","shell":"python3"}`, kindInvalidParams, "absolute interpreter path"},
		{"bad isolation", "script.start", `{"script":"true","isolation":"partial"}`, kindInvalidParams, "isolation"},
		{"negative timeout", "script.start", `{"script":"true","timeout_s":-1}`, kindInvalidParams, "timeout_s"},
		{"relative cwd", "script.start", `{"script":"true","cwd":"tmp"}`, kindInvalidParams, "absolute"},
		{"missing cwd", "script.start", `{"script":"true","cwd":"/nonexistent/dir"}`, kindInvalidParams, "not a folder"},
		{"bad env name", "script.start", `{"script":"true","env":{"A=B":"x"}}`, kindInvalidParams, "env"},
		{"NUL in argument", "script.start", `{"script":"true","args":["a\u0000b"]}`, kindInvalidParams, "NUL"},
		{"status of unknown ticket", "job.status", `{"ticket":"0123456789abcdef"}`, kindNotFound, "no job"},
		{"status of a path", "job.status", `{"ticket":"../../etc"}`, kindNotFound, "no job"},
		{"status without ticket", "job.status", `{}`, kindInvalidParams, `missing field "ticket"`},
		{"negative after", "job.status", `{"ticket":"` + running + `","after":-1}`, kindInvalidParams, "negative"},
		{"cancel unknown", "job.cancel", `{"ticket":"0123456789abcdef"}`, kindNotFound, "no job"},
		{"complete unknown", "job.complete", `{"ticket":"0123456789abcdef"}`, kindNotFound, "no job"},
		{"complete running", "job.complete", `{"ticket":"` + running + `"}`, kindConflict, "still running"},
		{"list with params", "job.list", `{"all":true}`, kindInvalidParams, "unknown field"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := c.call(tt.method, json.RawMessage(tt.params), nil)
			if rpcKind(err) != tt.kind || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("%s %s: error %v (%s), want %s containing %q", tt.method, tt.params, err, rpcKind(err), tt.kind, tt.msg)
			}
			if err := c.call("ping", nil, nil); err != nil {
				t.Fatalf("agent stopped serving: %v", err)
			}
		})
	}
	var list struct {
		Jobs []jobListItem `json:"jobs"`
	}
	if err := c.call("job.list", nil, &list); err != nil || len(list.Jobs) != 1 || list.Jobs[0].Ticket != running {
		t.Fatalf("job.list = %+v, %v: want only the running job", list, err)
	}
	if st := statusOf(t, c, running); st.State != stateRunning {
		t.Fatalf("the running job is %s", st.State)
	}
}

// pidsIn parses the numbers a script printed.
func pidsIn(t *testing.T, lines []string) []int {
	var pids []int
	for _, l := range lines {
		if p, err := strconv.Atoi(strings.TrimPrefix(l, "pid ")); err == nil && strings.HasPrefix(l, "pid ") {
			pids = append(pids, p)
		}
	}
	if len(pids) == 0 {
		t.Fatalf("no pid in %q", lines)
	}
	return pids
}

func waitGone(t *testing.T, pids []int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("processes %v to be gone", pids), 10*time.Second, func() bool {
		for _, p := range pids {
			if processAlive(p) {
				return false
			}
		}
		return true
	})
}

func TestTimeoutKillsProcessGroup(t *testing.T) {
	needSh(t)
	if runtime.GOOS == "windows" {
		t.Skip("process groups are Unix")
	}
	a := startAgent(t, func(c *config) { c.KillGrace = 300 * time.Millisecond })
	c := a.dial(t)
	tests := []struct {
		name, script string
		sigkill      bool
	}{
		{"SIGTERM stops the tree", `sleep 1000 & echo "pid $!"; sh -c 'sleep 1000 & echo "pid $!"; wait' & echo "pid $!"; wait`, false},
		{"SIGKILL after the grace period for a tree that ignores SIGTERM", `trap '' TERM; sleep 1000 & echo "pid $!"; echo "pid $$"; while :; do sleep 0.05; done`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			st, logs := runScript(t, c, map[string]any{"script": tt.script, "timeout_s": 0.5})
			if outcomeOf(st) != outcomeTimedOut {
				t.Fatalf("outcome %s, want timed_out; log %v", outcomeOf(st), logs)
			}
			if d := time.Since(start); d < 500*time.Millisecond || d > 8*time.Second {
				t.Fatalf("the job took %v with a timeout of 0.5s", d)
			}
			agent := strings.Join(texts(logs, "agent"), "\n")
			if !strings.Contains(agent, "timed out after 500ms") || !strings.Contains(agent, "SIGTERM") || strings.Contains(agent, "SIGKILL") != tt.sigkill {
				t.Fatalf("agent lines:\n%s", agent)
			}
			waitGone(t, pidsIn(t, texts(logs, "stdout")))
		})
	}
}

// TestBackgroundProcessHoldingOutput: a script that leaves a background
// process holding its output still ends, drainDelay after it exits.
func TestBackgroundProcessHoldingOutput(t *testing.T) {
	needSh(t)
	a := startAgent(t)
	c := a.dial(t)
	start := time.Now()
	st, logs := runScript(t, c, map[string]any{"script": `sleep 1000 & echo "pid $!"`})
	pids := pidsIn(t, texts(logs, "stdout"))
	defer func() {
		for _, pid := range pids {
			if p, err := os.FindProcess(pid); err == nil {
				p.Kill()
			}
		}
	}()
	if d := time.Since(start); outcomeOf(st) != outcomeSuccess || d < drainDelay || d > drainDelay+5*time.Second {
		t.Fatalf("outcome %s after %v", outcomeOf(st), d)
	}
	if agent := strings.Join(texts(logs, "agent"), "\n"); !strings.Contains(agent, "a background process still holds it open") {
		t.Fatalf("agent lines: %q", agent)
	}
}

func TestCancel(t *testing.T) {
	needSh(t)
	a := startAgent(t)
	c := a.dial(t)
	marker := filepath.Join(t.TempDir(), "ran")

	// A full job holds mutex "m"; a second one queues behind it.
	first := startJob(t, c, map[string]any{"script": `sleep 1000 & echo "pid $!"; wait`, "isolation": "full", "mutex": "m"})
	waitFor(t, "the first job's output", 10*time.Second, func() bool { return len(statusOf(t, c, first).Logs) > 0 })
	second := startJob(t, c, map[string]any{"script": "touch " + marker, "mutex": "m"})
	st := statusOf(t, c, second)
	if st.State != stateQueued || st.Started != nil || len(st.Logs) != 1 || !strings.Contains(st.Logs[0].Text, `waiting for mutex "m": job `+first+" holds it") {
		t.Fatalf("queued job: %+v", st)
	}

	// Cancelling the queued job: it never starts.
	var cst statusReply
	if err := c.call("job.cancel", map[string]any{"ticket": second}, &cst); err != nil {
		t.Fatal(err)
	}
	if cst.State != stateDone || outcomeOf(&cst) != outcomeCancelled || cst.Started != nil || cst.ExitCode != nil {
		t.Fatalf("cancelled queued job: %+v", cst)
	}

	// Cancelling the running job: its process tree goes.
	if err := c.call("job.cancel", map[string]any{"ticket": first}, nil); err != nil {
		t.Fatal(err)
	}
	st, logs := followJob(t, c, first)
	if outcomeOf(st) != outcomeCancelled || !strings.Contains(strings.Join(texts(logs, "agent"), "\n"), `cancelled by "test-client"`) {
		t.Fatalf("cancelled running job: %s, %v", outcomeOf(st), logs)
	}
	waitGone(t, pidsIn(t, texts(logs, "stdout")))
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the cancelled queued job ran")
	}
	// Cancelling a finished job changes nothing.
	if err := c.call("job.cancel", map[string]any{"ticket": first}, &cst); err != nil || outcomeOf(&cst) != outcomeCancelled {
		t.Fatalf("cancel again: %v, %+v", err, cst)
	}
	for _, tk := range []string{first, second} {
		if err := c.call("job.complete", map[string]any{"ticket": tk}, nil); err != nil {
			t.Fatal(err)
		}
	}
}

// interval is when one job ran, by the timestamps its script printed.
type interval struct{ start, end int64 }

// scriptInterval reads "start N" and "end N" (nanoseconds) from a log.
func scriptInterval(t *testing.T, logs []logEntry) interval {
	var iv interval
	for _, l := range texts(logs, "stdout") {
		f := strings.Fields(l)
		if len(f) == 2 {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			switch f[0] {
			case "start":
				iv.start = n
			case "end":
				iv.end = n
			}
		}
	}
	if iv.start == 0 || iv.end < iv.start {
		t.Fatalf("no interval in %v", logs)
	}
	return iv
}

func TestIsolation(t *testing.T) {
	needSh(t)
	if out, err := exec.Command("date", "+%s%N").Output(); err != nil || len(bytes.TrimSpace(out)) < 19 {
		t.Skip("needs date +%N")
	}
	a := startAgent(t)
	c := a.dial(t)
	dir := t.TempDir()

	t.Run("full jobs never overlap", func(t *testing.T) {
		var tickets []string
		for range 4 {
			tickets = append(tickets, startJob(t, c, map[string]any{"isolation": "full", "mutex": "serial",
				"script": `echo "start $(date +%s%N)"; sleep 0.1; echo "end $(date +%s%N)"`}))
		}
		var ivs []interval
		for _, tk := range tickets {
			st, logs := followJob(t, c, tk)
			if outcomeOf(st) != outcomeSuccess {
				t.Fatalf("outcome %s: %v", outcomeOf(st), logs)
			}
			ivs = append(ivs, scriptInterval(t, logs))
		}
		sort.Slice(ivs, func(i, j int) bool { return ivs[i].start < ivs[j].start })
		for i := 1; i < len(ivs); i++ {
			if ivs[i].start < ivs[i-1].end {
				t.Fatalf("full jobs overlapped: %v", ivs)
			}
		}
	})

	t.Run("none jobs run together", func(t *testing.T) {
		// Each job waits until all three have started: they can only
		// succeed if they run at the same time.
		gate := filepath.Join(dir, "gate")
		os.Mkdir(gate, 0o755)
		script := `echo "start $(date +%s%N)"; touch "$1/$TENTACLE_TICKET"; n=0
while [ "$(ls "$1" | wc -l)" -lt 3 ]; do n=$((n+1)); [ $n -gt 1000 ] && exit 9; sleep 0.01; done
echo "end $(date +%s%N)"`
		var tickets []string
		for range 3 {
			tickets = append(tickets, startJob(t, c, map[string]any{"script": script, "args": []string{gate}, "mutex": "shared"}))
		}
		var ivs []interval
		for _, tk := range tickets {
			st, logs := followJob(t, c, tk)
			if outcomeOf(st) != outcomeSuccess {
				t.Fatalf("outcome %s (exit %s): the jobs did not run together", outcomeOf(st), exitCodeOf(st))
			}
			ivs = append(ivs, scriptInterval(t, logs))
		}
		for _, x := range ivs {
			for _, y := range ivs {
				if x.start > y.end || y.start > x.end {
					t.Fatalf("none jobs did not overlap: %v", ivs)
				}
			}
		}
	})

	t.Run("none waits for full, full waits for none", func(t *testing.T) {
		release := filepath.Join(dir, "release")
		hold := `echo "start $(date +%s%N)"; while [ ! -e "$1" ]; do sleep 0.01; done; echo "end $(date +%s%N)"`
		quick := `echo "start $(date +%s%N)"; echo "end $(date +%s%N)"`
		reader := startJob(t, c, map[string]any{"script": hold, "args": []string{release}, "mutex": "rw"})
		writer := startJob(t, c, map[string]any{"script": quick, "mutex": "rw", "isolation": "full"})
		late := startJob(t, c, map[string]any{"script": quick, "mutex": "rw"})
		for _, tk := range []string{writer, late} {
			if st := statusOf(t, c, tk); st.State != stateQueued {
				t.Fatalf("job %s is %s while a job holds the mutex", tk, st.State)
			}
		}
		if st := statusOf(t, c, late); !strings.Contains(st.Logs[0].Text, "job "+writer+" is waiting for it first") {
			t.Fatalf("late job's first line: %q", st.Logs[0].Text)
		}
		os.WriteFile(release, nil, 0o644)
		var ivs []interval
		for _, tk := range []string{reader, writer, late} {
			st, logs := followJob(t, c, tk)
			if outcomeOf(st) != outcomeSuccess {
				t.Fatalf("outcome %s: %v", outcomeOf(st), logs)
			}
			ivs = append(ivs, scriptInterval(t, logs))
		}
		if !(ivs[0].end <= ivs[1].start && ivs[1].end <= ivs[2].start) {
			t.Fatalf("want reader, then writer, then the late reader: %v", ivs)
		}
	})
}

func TestLongPoll(t *testing.T) {
	needSh(t)
	a := startAgent(t, func(c *config) { c.Limits.MaxWait = 3 * time.Second })
	c := a.dial(t)
	gate := filepath.Join(t.TempDir(), "go")
	ticket := startJob(t, c, map[string]any{"script": `while [ ! -e "$1" ]; do sleep 0.01; done; echo hi; while [ -e "$1" ]; do sleep 0.01; done`, "args": []string{gate}})

	type answer struct {
		st  statusReply
		err error
		d   time.Duration
	}
	poll := func(after int64, waitMs int) <-chan answer {
		ch := make(chan answer, 1)
		go func() {
			c2 := a.dial(t)
			start := time.Now()
			var r answer
			r.err = c2.call("job.status", map[string]any{"ticket": ticket, "after": after, "wait_ms": waitMs}, &r.st)
			r.d = time.Since(start)
			ch <- r
		}()
		return ch
	}

	// A new line ends a wait of a minute (clamped to 3s) at once.
	ch := poll(0, 60000)
	waitInFlight(t, a) // the poll is waiting before the line comes
	os.WriteFile(gate, nil, 0o644)
	r := <-ch
	if r.err != nil || len(r.st.Logs) != 1 || r.st.Logs[0].Text != "hi" || r.st.Next != 1 {
		t.Fatalf("long poll: %+v, %v", r.st, r.err)
	}
	if r.d > 2*time.Second {
		t.Fatalf("the long poll answered after %v, not when the line came", r.d)
	}

	// A change of state (running → done) ends a wait too.
	ch = poll(1, 60000)
	waitInFlight(t, a)
	os.Remove(gate)
	r = <-ch
	if r.err != nil || r.st.State != stateDone || r.d > 2*time.Second {
		t.Fatalf("long poll for the end: %+v after %v, %v", r.st, r.d, r.err)
	}

	// Nothing new: the wait lasts wait_ms, clamped to the agent's maximum.
	quiet := startJob(t, c, map[string]any{"script": "sleep 1000"})
	t.Cleanup(func() { c.call("job.cancel", map[string]any{"ticket": quiet}, nil) })
	for _, tt := range []struct {
		waitMs   int
		min, max time.Duration
	}{{300, 300 * time.Millisecond, 2500 * time.Millisecond}, {600000, 3 * time.Second, 6 * time.Second}} {
		start := time.Now()
		var st statusReply
		if err := c.call("job.status", map[string]any{"ticket": quiet, "wait_ms": tt.waitMs}, &st); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d < tt.min || d > tt.max || st.State != stateRunning || len(st.Logs) != 0 {
			t.Fatalf("wait_ms %d: answered after %v with %+v", tt.waitMs, d, st)
		}
	}
	// A finished job answers at once whatever the wait.
	start := time.Now()
	statusFin := statusReply{}
	if err := c.call("job.status", map[string]any{"ticket": ticket, "after": 1, "wait_ms": 60000}, &statusFin); err != nil || time.Since(start) > time.Second {
		t.Fatalf("finished job: %v after %v", err, time.Since(start))
	}
}

// TestBoundedAnswers: one answer holds a bounded number of entries and
// bytes; next continues without a gap.
func TestBoundedAnswers(t *testing.T) {
	needSh(t)
	a := startAgent(t)
	c := a.dial(t)
	ticket := startJob(t, c, map[string]any{"script": `i=0; while [ $i -lt 10000 ]; do echo $i; i=$((i+1)); done; head -c 300000 /dev/zero | tr '\0' y; echo`})
	followJob(t, c, ticket) // the log is whole and gapless
	var st statusReply
	if err := c.call("job.status", map[string]any{"ticket": ticket}, &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Logs) != maxAnswerEntries || st.Next != maxAnswerEntries {
		t.Fatalf("first answer: %d entries, next %d; want %d", len(st.Logs), st.Next, maxAnswerEntries)
	}
	if err := c.call("job.status", map[string]any{"ticket": ticket, "after": 9990}, &st); err != nil {
		t.Fatal(err)
	}
	size := 0
	for _, e := range st.Logs {
		size += len(e.Text)
	}
	if st.Logs[0].Seq != 9991 || size > maxAnswerBytes+maxLogLine || st.Next != st.Logs[len(st.Logs)-1].Seq {
		t.Fatalf("answer after 9990: first seq %d, %d bytes, next %d", st.Logs[0].Seq, size, st.Next)
	}
	if err := c.call("job.status", map[string]any{"ticket": ticket, "after": 1 << 40}, &st); err != nil || len(st.Logs) != 0 || st.Next != 1<<40 {
		t.Fatalf("after the end: %+v, %v", st, err)
	}
}

func TestReconnectReadsTheRest(t *testing.T) {
	needSh(t)
	a := startAgent(t)
	c := a.dial(t)
	gate := filepath.Join(t.TempDir(), "go")
	ticket := startJob(t, c, map[string]any{"script": `echo one; echo two; while [ ! -e "$1" ]; do sleep 0.01; done; echo three`, "args": []string{gate}})
	var st statusReply
	waitFor(t, "two lines", 10*time.Second, func() bool {
		st = *statusOf(t, c, ticket)
		return len(st.Logs) == 2
	})
	c.Close() // the client goes away mid-job
	os.WriteFile(gate, nil, 0o644)
	c2 := a.dial(t)
	st2, logs := followJob(t, c2, ticket)
	if outcomeOf(st2) != outcomeSuccess || !slices.Equal(texts(logs, "stdout"), []string{"one", "two", "three"}) {
		t.Fatalf("after reconnecting: %s, %v", outcomeOf(st2), logs)
	}
	var rest statusReply
	if err := c2.call("job.status", map[string]any{"ticket": ticket, "after": st.Next}, &rest); err != nil || len(rest.Logs) != 1 || rest.Logs[0].Text != "three" {
		t.Fatalf("the rest after %d: %+v, %v", st.Next, rest, err)
	}
}

func TestJobComplete(t *testing.T) {
	needSh(t)
	a := startAgent(t)
	c := a.dial(t)
	ticket := startJob(t, c, map[string]any{"script": "echo a; echo b; echo c"})
	followJob(t, c, ticket)
	dir := filepath.Join(a.cfg.workDir(), ticket)
	if _, err := os.Stat(filepath.Join(dir, metaDir, "log.jsonl")); err != nil {
		t.Fatalf("no log file: %v", err)
	}
	var st statusReply
	if err := c.call("job.complete", map[string]any{"ticket": ticket, "after": 1}, &st); err != nil {
		t.Fatal(err)
	}
	if outcomeOf(&st) != outcomeSuccess || !slices.Equal(texts(st.Logs, "stdout"), []string{"b", "c"}) {
		t.Fatalf("complete answered %+v", st)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("work directory still there: %v", err)
	}
	for _, m := range []string{"job.status", "job.complete", "job.cancel"} {
		if err := c.call(m, map[string]any{"ticket": ticket}, nil); rpcKind(err) != kindNotFound {
			t.Fatalf("%s after complete: %v", m, err)
		}
	}
}

func TestRetentionReaps(t *testing.T) {
	needSh(t)
	a := startAgent(t, func(c *config) { c.JobRetention = 300 * time.Millisecond })
	c := a.dial(t)
	done := startJob(t, c, map[string]any{"script": "echo abandoned"})
	followJob(t, c, done)
	running := startJob(t, c, map[string]any{"script": "sleep 1000"})
	waitFor(t, "the finished job to be reaped", 10*time.Second, func() bool {
		return rpcKind(c.call("job.status", map[string]any{"ticket": done}, nil)) == kindNotFound
	})
	if _, err := os.Stat(filepath.Join(a.cfg.workDir(), done)); !os.IsNotExist(err) {
		t.Fatalf("work directory of the reaped job: %v", err)
	}
	if st := statusOf(t, c, running); st.State != stateRunning {
		t.Fatalf("the running job was touched: %+v", st)
	}
	// The line is written once the job is gone: wait for it.
	waitFor(t, "the reaping in the agent's log", 5*time.Second, func() bool {
		return strings.Contains(a.logs.String(), "reaped job nobody completed")
	})
	c.call("job.cancel", map[string]any{"ticket": running}, nil)
}

func TestRestartKeepsFinishedJobs(t *testing.T) {
	needSh(t)
	a := startAgent(t, func(c *config) { c.ShutdownGrace = 300 * time.Millisecond })
	c := a.dial(t)
	finished := startJob(t, c, map[string]any{"script": "echo kept; exit 4"})
	_, before := followJob(t, c, finished)
	running := startJob(t, c, map[string]any{"script": `sleep 1000 & echo "pid $!"; wait`})
	waitFor(t, "the running job's pid", 10*time.Second, func() bool { return len(statusOf(t, c, running).Logs) > 0 })
	pids := pidsIn(t, texts(statusOf(t, c, running).Logs, "stdout"))
	queued := startJob(t, c, map[string]any{"script": "true", "isolation": "full"})
	c.Close()

	a.restart() // a graceful stop: running jobs are stopped after the grace
	waitGone(t, pids)
	c = a.dial(t)
	st, after := followJob(t, c, finished)
	if outcomeOf(st) != outcomeFailed || exitCodeOf(st) != "4" || !slices.Equal(before, after) {
		t.Fatalf("finished job after restart: %s %s, %v (before %v)", outcomeOf(st), exitCodeOf(st), after, before)
	}
	st, logs := followJob(t, c, running)
	if outcomeOf(st) != outcomeCancelled || !strings.Contains(strings.Join(texts(logs, "agent"), "\n"), "the agent is shutting down") {
		t.Fatalf("job running at shutdown: %s, %v", outcomeOf(st), logs)
	}
	st, logs = followJob(t, c, queued)
	if outcomeOf(st) != outcomeCancelled || st.Started != nil || !strings.Contains(strings.Join(texts(logs, "agent"), "\n"), "shut down before this job could start") {
		t.Fatalf("job queued at shutdown: %s, %v", outcomeOf(st), logs)
	}
}

// buildTentacle builds the tentacle binary into a temporary folder.
func buildTentacle(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "tentacle")
	if runtime.GOOS == "windows" {
		bin += ".exe"
	}
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// procAgent is an agent running as its own process, so that a test can
// kill it the hard way.
type procAgent struct {
	cmd        *exec.Cmd
	logs       *syncBuffer
	addr       string
	thumbprint string
}

// startProcAgent runs "tentacle run" on home and waits until it listens.
func startProcAgent(t testing.TB, bin, home string) *procAgent {
	t.Helper()
	p := &procAgent{logs: &syncBuffer{}}
	p.cmd = exec.Command(bin, "run", "-home", home, "-listen", "127.0.0.1:0", "-kill-grace", "500ms")
	p.cmd.Stderr = p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.cmd.Process.Kill(); p.cmd.Wait() })
	waitFor(t, "the agent to listen", 10*time.Second, func() bool { return strings.Contains(p.logs.String(), "msg=listening") })
	for _, f := range strings.Fields(p.logs.String()) {
		if v, ok := strings.CutPrefix(f, "addr="); ok && p.addr == "" {
			p.addr = v
		}
		if v, ok := strings.CutPrefix(f, "thumbprint="); ok && p.thumbprint == "" {
			p.thumbprint = v
		}
	}
	return p
}

func TestCrashMarksRunningJobsLost(t *testing.T) {
	needSh(t)
	bin := buildTentacle(t)
	home, clientHome := t.TempDir(), t.TempDir()
	client, err := newIdentity(filepath.Join(clientHome, "tentacle.key"), filepath.Join(clientHome, "tentacle.crt"))
	if err != nil {
		t.Fatal(err)
	}
	writeTrust(t, home, client.thumbprint+" test-client\n")
	p := startProcAgent(t, bin, home)
	c, err := dialAgent(p.addr, client, p.thumbprint, "", 10*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	finished := startJob(t, c, map[string]any{"script": "echo done before the crash"})
	_, before := followJob(t, c, finished)
	running := startJob(t, c, map[string]any{"script": `sleep 1000 & echo "pid $!"; echo "pid $$"; wait`})
	waitFor(t, "the running job's pids", 10*time.Second, func() bool { return len(statusOf(t, c, running).Logs) >= 2 })
	pids := pidsIn(t, texts(statusOf(t, c, running).Logs, "stdout"))
	c.Close()

	p.cmd.Process.Kill() // the agent dies without a word
	p.cmd.Wait()
	for _, pid := range pids {
		if !processAlive(pid) {
			t.Fatalf("process %d died with the agent: nothing left to clean up", pid)
		}
	}
	p2 := startProcAgent(t, bin, home)
	c, err = dialAgent(p2.addr, client, p2.thumbprint, "", 10*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, after := followJob(t, c, finished)
	if outcomeOf(st) != outcomeSuccess || !slices.Equal(before, after) {
		t.Fatalf("finished job after the crash: %s %v", outcomeOf(st), after)
	}
	st, logs := followJob(t, c, running)
	agent := strings.Join(texts(logs, "agent"), "\n")
	if outcomeOf(st) != outcomeLost || st.Finished == nil || !strings.Contains(agent, "the agent stopped while this job was running") {
		t.Fatalf("running job after the crash: %s, %v", outcomeOf(st), logs)
	}
	if runtime.GOOS == "linux" {
		if !strings.Contains(agent, "killed 2 process(es) left over") {
			t.Fatalf("leftovers not killed: %s", agent)
		}
		waitGone(t, pids)
	}
}

// TestOutputMemoryBounded: 200 MB of output (one 100 MB line and 100 MB of
// short lines) leaves the agent's heap flat.
func TestOutputMemoryBounded(t *testing.T) {
	needSh(t)
	a := startAgent(t)
	c := a.dial(t)
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapAlloc
	var peak uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapAlloc)
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	start := time.Now()
	ticket := startJob(t, c, map[string]any{"script": `head -c 100000000 /dev/zero | tr '\0' x; echo; yes 'a line of output, as a build or a test run prints them by the thousand' | head -c 100000000`})
	var st statusReply
	for st.State != stateDone {
		// Follow only the state, not the 200 MB, so the test's own reading
		// does not count.
		if err := c.call("job.status", map[string]any{"ticket": ticket, "after": 1 << 40, "wait_ms": 5000}, &st); err != nil {
			t.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	close(stop)
	<-sampled
	growth := int64(peak) - int64(base)
	t.Logf("200 MB of output in %v; heap %d MiB before, peak %d MiB", elapsed.Round(time.Millisecond), base>>20, peak>>20)
	if outcomeOf(&st) != outcomeSuccess || growth > 48<<20 {
		t.Fatalf("outcome %s; heap grew by %d MiB", outcomeOf(&st), growth>>20)
	}
	var first statusReply
	if err := c.call("job.status", map[string]any{"ticket": ticket}, &first); err != nil {
		t.Fatal(err)
	}
	if len(first.Logs) < 2 || len(first.Logs[0].Text) != maxLogLine || first.Logs[0].Text[:3] != "xxx" {
		t.Fatalf("the 100 MB line was not split into %d-byte entries", maxLogLine)
	}
	pieces := int64((100000000 + maxLogLine - 1) / maxLogLine)
	var tail statusReply
	if err := c.call("job.status", map[string]any{"ticket": ticket, "after": pieces - 1}, &tail); err != nil {
		t.Fatal(err)
	}
	if len(tail.Logs[0].Text) != 100000000%maxLogLine || !strings.HasPrefix(tail.Logs[1].Text, "a line of output") {
		t.Fatalf("around the end of the long line: %d bytes, then %q", len(tail.Logs[0].Text), tail.Logs[1].Text)
	}
}

// relay forwards TCP connections to target and can cut them all, as a
// flaky network would.
type relay struct {
	ln     net.Listener
	target string
	mu     sync.Mutex // guards conns
	conns  []net.Conn
}

func startRelay(t *testing.T, target string) *relay {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{ln: ln, target: target}
	t.Cleanup(func() { ln.Close(); r.cut() })
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			r.mu.Lock()
			r.conns = append(r.conns, in, out)
			r.mu.Unlock()
			go func() { io.Copy(out, in); out.Close() }()
			go func() { io.Copy(in, out); in.Close() }()
		}
	}()
	return r
}

func (r *relay) cut() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns {
		c.Close()
	}
	n := len(r.conns) / 2
	r.conns = nil
	return n
}

func TestExecCLI(t *testing.T) {
	needSh(t)
	a := startAgent(t)
	script := filepath.Join(t.TempDir(), "s.sh")
	os.WriteFile(script, []byte("echo \"from file $1\"\necho oops >&2\nexit 7\n"), 0o644)
	tests := []struct {
		name           string
		args           []string
		code           int
		stdout, stderr string // stderr: a part of it
	}{
		{"stdout and stderr apart", []string{a.addr, "--", "echo out1; echo err1 >&2; echo out2"}, 0, "out1\nout2\n", "err1\n"},
		{"exit code", []string{a.addr, "--", "exit 42"}, 42, "", ""},
		{"arguments", []string{a.addr, "--", `echo "[$1] [$2]"`, "a b", "c"}, 0, "[a b] [c]\n", ""},
		{"env and cwd", []string{"-env", "X=1", "-env", "Y=two=2", "-cwd", "/", a.addr, "--", `echo "$X $Y $(pwd)"`}, 0, "1 two=2 /\n", ""},
		{"script from a file", []string{"-file", script, a.addr, "--", "arg"}, 7, "from file arg\n", "oops\n"},
		{"timeout", []string{"-timeout", "300ms", a.addr, "--", "echo started; sleep 1000"}, exitTimedOut, "started\n", "timed out"},
		{"isolation full", []string{"-isolation", "full", "-mutex", "cli", a.addr, "--", "echo alone"}, 0, "alone\n", ""},
		{"shell not installed", []string{"-shell", "/nonexistent/sh", a.addr, "--", "true"}, exitNoJob, "", "is not installed"},
		{"no script", []string{a.addr}, 2, "", "no script"},
		{"bad env", []string{"-env", "NOVALUE", a.addr, "--", "true"}, 2, "", "NAME=VALUE"},
		{"bad isolation", []string{"-isolation", "half", a.addr, "--", "true"}, 2, "", "-isolation"},
		{"words before --", []string{a.addr, "extra", "--", "true"}, 2, "", "before \"--\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := a.cli("exec", tt.args...)
			if code != tt.code || out != tt.stdout || !strings.Contains(errOut, tt.stderr) {
				t.Fatalf("exec %q: code %d, stdout %q, stderr %q; want %d, %q, %q", tt.args, code, out, errOut, tt.code, tt.stdout, tt.stderr)
			}
		})
	}
	// exec completes what it ran: no job is left over.
	c := a.dial(t)
	var list struct {
		Jobs []jobListItem `json:"jobs"`
	}
	if err := c.call("job.list", nil, &list); err != nil || len(list.Jobs) != 0 {
		t.Fatalf("jobs left after exec: %+v, %v", list.Jobs, err)
	}
}

func TestJobsAndJobCLI(t *testing.T) {
	needSh(t)
	a := startAgent(t)
	c := a.dial(t)
	done := startJob(t, c, map[string]any{"script": "echo hello; echo warn >&2; exit 3"})
	followJob(t, c, done)
	gate := filepath.Join(t.TempDir(), "go")
	running := startJob(t, c, map[string]any{"script": `echo first; while [ ! -e "$1" ]; do sleep 0.01; done; echo second`, "args": []string{gate}})

	out, errOut, code := a.cli("jobs", a.addr)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 3 || !strings.HasPrefix(lines[0], "TICKET") ||
		!strings.Contains(lines[1], done) || !strings.Contains(lines[1], "failed") || !strings.Contains(lines[2], running) {
		t.Fatalf("jobs: code %d\n%s%s", code, out, errOut)
	}
	out, _, code = a.cli("job", a.addr, done)
	for _, want := range []string{"ticket:    " + done, "outcome:   failed", "exit code: 3", "log:       2 lines", "stdout hello", "stderr warn"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Fatalf("job: code %d, want %q in\n%s", code, want, out)
		}
	}
	if _, errOut, code := a.cli("job", a.addr, "0123456789abcdef"); code != 1 || !strings.Contains(errOut, "not_found") {
		t.Fatalf("job of unknown ticket: %d %q", code, errOut)
	}

	// job -follow streams like exec and exits with the job's exit code.
	var fo, fe syncBuffer
	fcode := make(chan int, 1)
	go func() {
		fcode <- run([]string{"job", "-home", a.clientHome, "-pin", a.thumbprint, "-follow", a.addr, running}, &fo, &fe)
	}()
	waitFor(t, "the first line", 10*time.Second, func() bool { return fo.String() == "first\n" })
	os.WriteFile(gate, nil, 0o644)
	if code := <-fcode; code != 0 || fo.String() != "first\nsecond\n" {
		t.Fatalf("job -follow: code %d, stdout %q, stderr %q", code, fo.String(), fe.String())
	}
	if _, _, code := a.cli("job", "-follow", a.addr, done); code != 3 {
		t.Fatalf("job -follow of a job that exited 3: code %d", code)
	}
	// Neither command completes a job.
	statusOf(t, c, done)
	statusOf(t, c, running)
}

func TestExecReconnects(t *testing.T) {
	needSh(t)
	a := startAgent(t)
	r := startRelay(t, a.addr)
	gate := filepath.Join(t.TempDir(), "go")
	var stdout, stderr syncBuffer
	codec := make(chan int, 1)
	go func() {
		codec <- run([]string{"exec", "-home", a.clientHome, "-pin", a.thumbprint, r.ln.Addr().String(), "--",
			`i=1; while [ $i -le 1000 ]; do echo "line $i"; i=$((i+1)); done; echo err >&2
while [ ! -e "$1" ]; do sleep 0.01; done; echo after`, gate}, &stdout, &stderr)
	}()
	waitFor(t, "the first 1000 lines", 10*time.Second, func() bool { return strings.Count(stdout.String(), "\n") == 1000 })
	if r.cut() == 0 {
		t.Fatal("no connection to cut")
	}
	os.WriteFile(gate, nil, 0o644)
	select {
	case code := <-codec:
		var want strings.Builder
		for i := 1; i <= 1000; i++ {
			fmt.Fprintf(&want, "line %d\n", i)
		}
		want.WriteString("after\n")
		if code != 0 || stdout.String() != want.String() {
			t.Fatalf("code %d, stdout has %d lines (want 1001, none lost or repeated); stderr %q", code, strings.Count(stdout.String(), "\n"), stderr.String())
		}
		if !strings.Contains(stderr.String(), "err\n") || !strings.Contains(stderr.String(), "reconnecting") || !strings.Contains(stderr.String(), "reconnected, continuing after line") {
			t.Fatalf("stderr %q", stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("exec did not finish; stderr %q", stderr.String())
	}

	// An agent that stays away: exec gives up after execReconnectFor.
	defer func(d time.Duration) { execReconnectFor = d }(execReconnectFor)
	execReconnectFor = 500 * time.Millisecond
	ln := r.ln
	go func() {
		codec <- run([]string{"exec", "-home", a.clientHome, "-pin", a.thumbprint, ln.Addr().String(), "--", "echo up; sleep 1000"}, &stdout, &stderr)
	}()
	waitFor(t, "the job to print", 10*time.Second, func() bool { return strings.HasSuffix(stdout.String(), "up\n") })
	ln.Close()
	r.cut()
	select {
	case code := <-codec:
		if code != exitNoJob || !strings.Contains(stderr.String(), "could not reconnect within 500ms") {
			t.Fatalf("code %d, stderr %q", code, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("exec did not give up")
	}
	c := a.dial(t)
	var list struct {
		Jobs []jobListItem `json:"jobs"`
	}
	c.call("job.list", nil, &list)
	for _, j := range list.Jobs {
		c.call("job.cancel", map[string]any{"ticket": j.Ticket}, nil)
	}
}

func TestExecInterruptCancels(t *testing.T) {
	needSh(t)
	if runtime.GOOS == "windows" {
		t.Skip("no SIGINT to send on Windows")
	}
	bin := buildTentacle(t)
	a := startAgent(t)
	var stdout, stderr syncBuffer
	cmd := exec.Command(bin, "exec", "-home", a.clientHome, "-pin", a.thumbprint, a.addr, "--", `sleep 1000 & echo "pid $!"; wait`)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the job's pid", 10*time.Second, func() bool { return strings.Contains(stdout.String(), "pid ") })
	pids := pidsIn(t, strings.Split(strings.TrimSpace(stdout.String()), "\n"))
	cmd.Process.Signal(os.Interrupt)
	err := cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code != exitCancelled {
		t.Fatalf("exit code %d (%v), stderr %q", code, err, stderr.String())
	}
	if e := stderr.String(); !strings.Contains(e, "cancelling job") || !strings.Contains(e, "was cancelled") {
		t.Fatalf("stderr %q", e)
	}
	waitGone(t, pids)
	var list struct {
		Jobs []jobListItem `json:"jobs"`
	}
	if err := a.dial(t).call("job.list", nil, &list); err != nil || len(list.Jobs) != 0 {
		t.Fatalf("the cancelled job was not completed: %+v", list.Jobs)
	}
}

// FuzzLineWriter: whatever bytes a process writes, in whatever chunks, the
// log holds them as valid UTF-8 entries of at most maxLogLine bytes that
// join back to the output (bytes of invalid UTF-8 aside).
func FuzzLineWriter(f *testing.F) {
	f.Add([]byte("a\nb\r\nc"), uint16(1))
	f.Add([]byte("\xff\xfe\n\xe2\x82"), uint16(3))
	f.Add(bytes.Repeat([]byte("é"), 40000), uint16(4096))
	f.Fuzz(func(t *testing.T, data []byte, chunk uint16) {
		l := newJobLog(filepath.Join(t.TempDir(), "log"), nil)
		w := &lineWriter{log: l, stream: "stdout"}
		step := int(chunk)%70000 + 1
		for p := data; len(p) > 0; {
			n := min(step, len(p))
			w.Write(p[:n])
			p = p[n:]
		}
		w.flush()
		last, _ := l.extent()
		var got []string
		var after int64
		for after < last {
			entries, next, err := l.read(after)
			if err != nil || next <= after {
				t.Fatalf("read after %d: %v", after, err)
			}
			for _, raw := range entries {
				var e logEntry
				if err := json.Unmarshal(raw, &e); err != nil || e.Seq != after+1 || len(e.Text) > maxLogLine || !utf8.ValidString(e.Text) {
					t.Fatalf("entry %s: %v", raw, err)
				}
				after = e.Seq
				got = append(got, e.Text)
			}
		}
		if !utf8.Valid(data) || bytes.Contains(data, []byte("\r")) {
			return
		}
		want := string(data)
		want = strings.TrimSuffix(want, "\n")
		if len(data) == 0 {
			want = ""
		}
		joined := strings.Join(got, "")
		if strings.ReplaceAll(want, "\n", "") != joined {
			t.Fatalf("entries do not join back to the output")
		}
	})
}

// BenchmarkExec times, in one run: "tentacle exec ADDR -- true" as a new
// process (new connection, handshake, start, wait, complete) beside
// "sh -c true" run locally, and "true" as script.start, job.status (wait)
// and job.complete on an open connection.
func BenchmarkExec(b *testing.B) {
	needSh(b)
	bin := buildTentacle(b)
	// The agent is the real binary in its own process, as deployed, not
	// this test process (whose scheduler and heap the client would share).
	home, clientHome := b.TempDir(), b.TempDir()
	client, err := newIdentity(filepath.Join(clientHome, "tentacle.key"), filepath.Join(clientHome, "tentacle.crt"))
	if err != nil {
		b.Fatal(err)
	}
	writeTrust(b, home, client.thumbprint+" bench\n")
	p := startProcAgent(b, bin, home)
	addr, pin := p.addr, p.thumbprint
	c, err := dialAgent(addr, client, pin, "", 10*time.Second, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	var execT, shT, openT []time.Duration
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if out, err := exec.Command(bin, "exec", "-home", clientHome, "-pin", pin, addr, "--", "true").CombinedOutput(); err != nil {
			b.Fatalf("exec: %v\n%s", err, out)
		}
		execT = append(execT, time.Since(start))

		start = time.Now()
		if err := exec.Command("sh", "-c", "true").Run(); err != nil {
			b.Fatal(err)
		}
		shT = append(shT, time.Since(start))

		start = time.Now()
		var r struct{ Ticket string }
		if err := c.call("script.start", map[string]any{"script": "true"}, &r); err != nil {
			b.Fatal(err)
		}
		for {
			var st statusReply
			if err := c.call("job.status", map[string]any{"ticket": r.Ticket, "wait_ms": 10000}, &st); err != nil {
				b.Fatal(err)
			}
			if st.State == stateDone {
				break
			}
		}
		if err := c.call("job.complete", map[string]any{"ticket": r.Ticket}, nil); err != nil {
			b.Fatal(err)
		}
		openT = append(openT, time.Since(start))
	}
	b.StopTimer()
	e, s, o := median(execT), median(shT), median(openT)
	b.ReportMetric(float64(e.Microseconds())/1000, "exec-ms")
	b.ReportMetric(float64(s.Microseconds())/1000, "sh-ms")
	b.ReportMetric(float64(e)/float64(s), "exec/sh")
	b.ReportMetric(float64(o.Microseconds())/1000, "open-conn-ms")
	b.Logf("medians of %d: tentacle exec -- true %v, local sh -c true %v, ratio %.1fx (target <= 6x); true on an open connection %v (target < 2ms)",
		b.N, e.Round(10*time.Microsecond), s.Round(10*time.Microsecond), float64(e)/float64(s), o.Round(10*time.Microsecond))
}

// BenchmarkJobOutput prints 1 GiB (the figure) through a job and
// reports the agent's throughput and its heap's growth, beside the time the
// same output takes to go to /dev/null locally.
func BenchmarkJobOutput(b *testing.B) {
	needSh(b)
	c := benchAgent(b).dial(b)
	const size = 1 << 30
	script := fmt.Sprintf(`yes 'a line of output, as a build or a test run prints them by the thousand' | head -c %d`, size)
	for range b.N {
		start := time.Now()
		if err := exec.Command("sh", "-c", script+" >/dev/null").Run(); err != nil {
			b.Fatal(err)
		}
		local := time.Since(start)
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		base, peak := ms.HeapAlloc, ms.HeapAlloc
		start = time.Now()
		var r struct{ Ticket string }
		if err := c.call("script.start", map[string]any{"script": script}, &r); err != nil {
			b.Fatal(err)
		}
		for {
			var st statusReply
			if err := c.call("job.status", map[string]any{"ticket": r.Ticket, "after": 1 << 40, "wait_ms": 100}, &st); err != nil {
				b.Fatal(err)
			}
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapAlloc)
			if st.State == stateDone {
				break
			}
		}
		took := time.Since(start)
		c.call("job.complete", map[string]any{"ticket": r.Ticket}, nil)
		b.ReportMetric(float64(size)/took.Seconds()/(1<<20), "job-MiB/s")
		b.ReportMetric(float64(size)/local.Seconds()/(1<<20), "devnull-MiB/s")
		b.ReportMetric(float64(peak-base)/(1<<20), "heap-growth-MiB")
		b.Logf("1 GiB of output: job %v (%.0f MiB/s), to /dev/null locally %v, ratio %.1fx; agent heap growth %.1f MiB",
			took.Round(time.Millisecond), float64(size)/took.Seconds()/(1<<20), local.Round(time.Millisecond), float64(took)/float64(local), float64(peak-base)/(1<<20))
	}
}

// TestShellWithoutPath: an agent started with an empty or no PATH (env -i,
// a bare container) still finds sh in the standard places.
func TestShellWithoutPath(t *testing.T) {
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("needs /bin/sh")
	}
	for _, tt := range []struct {
		name  string
		unset bool
	}{{"empty PATH", false}, {"no PATH", true}} {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("PATH", "")
			if tt.unset {
				os.Unsetenv("PATH")
			}
			a := startAgent(t)
			c := a.dial(t)
			st, logs := runScript(t, c, map[string]any{"script": "echo ran"})
			if outcomeOf(st) != outcomeSuccess || !slices.Equal(texts(logs, "stdout"), []string{"ran"}) {
				t.Fatalf("script without PATH: %s, %v", outcomeOf(st), logs)
			}
			var info struct {
				Shells []string `json:"shells"`
			}
			if err := c.call("info", nil, &info); err != nil || !slices.Contains(info.Shells, "sh") {
				t.Fatalf("info shells %v, %v", info.Shells, err)
			}
		})
	}
}

// TestMutexWaitSaidOnlyWhenContended: "mutex acquired after waiting" is for
// a job that waited for another job's hold, not for a slow start.
func TestMutexWaitSaidOnlyWhenContended(t *testing.T) {
	needSh(t)
	a := startAgent(t)
	c := a.dial(t)
	// A start held up by the journal (a compaction, a slow disk) waits for
	// no mutex.
	jr := a.srv.jobs.journal
	jr.mu.Lock()
	time.AfterFunc(300*time.Millisecond, jr.mu.Unlock)
	_, logs := runScript(t, c, map[string]any{"script": "true"})
	if agent := strings.Join(texts(logs, "agent"), "\n"); agent != "" {
		t.Fatalf("an uncontended job says: %q", agent)
	}
	release := filepath.Join(t.TempDir(), "release")
	holder := startJob(t, c, map[string]any{"script": `while [ ! -e "$1" ]; do sleep 0.01; done`, "args": []string{release}, "mutex": "m", "isolation": "full"})
	waiter := startJob(t, c, map[string]any{"script": "true", "mutex": "m"})
	if err := os.WriteFile(release, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	followJob(t, c, holder)
	_, logs = followJob(t, c, waiter)
	agent := texts(logs, "agent")
	if len(agent) != 2 || !strings.HasPrefix(agent[0], `waiting for mutex "m": job `+holder) || !strings.HasPrefix(agent[1], `mutex "m" acquired after waiting `) {
		t.Fatalf("a job that waited says: %q", agent)
	}
}

// TestJobLogLines: the agent logs one INFO line per job, when it finishes,
// with what an operator wants; queued and started are DEBUG.
func TestJobLogLines(t *testing.T) {
	needSh(t)
	logs := &syncBuffer{}
	a := startAgentLogging(t, logs)
	c := a.dial(t)
	st, _ := runScript(t, c, map[string]any{"script": "exit 3"})
	waitFor(t, "the finished line", 5*time.Second, func() bool { return strings.Contains(logs.String(), "ticket="+st.Ticket) })
	var lines []string
	for line := range strings.Lines(logs.String()) {
		if strings.Contains(line, st.Ticket) {
			lines = append(lines, line)
		}
	}
	if len(lines) != 1 {
		t.Fatalf("%d agent log lines for one job, want 1:\n%s", len(lines), strings.Join(lines, ""))
	}
	for _, want := range []string{"level=INFO", `msg="job finished"`, "kind=script", "outcome=failed", "duration=", "client=test-client"} {
		if !strings.Contains(lines[0], want) {
			t.Fatalf("finished line %q lacks %q", lines[0], want)
		}
	}
}
