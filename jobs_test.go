package main

// jobs_test.go: jobs over real TLS with real processes: output, exit codes,
// kills, isolation, long polls, reconnects, restarts, retention, memory, and
// the exec, jobs and job commands; then, each in a section of its own,
// client-chosen tickets and jobs' owners, jobs and the disk (a full disk,
// the log cap, links), and jobs in cgroups.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
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
	var r startReply
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
	a, c := startShAgent(t)
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
	_, c := startShAgent(t)
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
	_, c := startShAgent(t)
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
			// 1 s: time enough for the tree to print its pids on a loaded machine.
			st, logs := runScript(t, c, map[string]any{"script": tt.script, "timeout_s": 1})
			if outcomeOf(st) != outcomeTimedOut {
				t.Fatalf("outcome %s, want timed_out; log %v", outcomeOf(st), logs)
			}
			if d := time.Since(start); d < time.Second || d > 9*time.Second {
				t.Fatalf("the job took %v with a timeout of 1s", d)
			}
			agent := strings.Join(texts(logs, "agent"), "\n")
			if !strings.Contains(agent, "timed out after 1s") || !strings.Contains(agent, "SIGTERM") || strings.Contains(agent, "SIGKILL") != tt.sigkill {
				t.Fatalf("agent lines:\n%s", agent)
			}
			waitGone(t, pidsIn(t, texts(logs, "stdout")))
		})
	}
}

// TestBackgroundProcessHoldingOutput: a script that leaves a background
// process holding its output still ends, drainDelay after it exits.
func TestBackgroundProcessHoldingOutput(t *testing.T) {
	_, c := startShAgent(t)
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
	_, c := startShAgent(t)
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
	a, c := startShAgent(t, func(c *config) { c.Limits.MaxWait = 3 * time.Second })
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
	_, c := startShAgent(t)
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
	a, c := startShAgent(t)
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
	a, c := startShAgent(t)
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
	a, c := startShAgent(t, func(c *config) { c.JobRetention = 300 * time.Millisecond })
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
	a, c := startShAgent(t, func(c *config) { c.ShutdownGrace = 300 * time.Millisecond })
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

// buildTentacle builds the agent binary as shipped (CGO_ENABLED=0
// -trimpath), once a test run, and returns its path.
func buildTentacle(t testing.TB) string {
	t.Helper()
	built.once.Do(func() {
		built.dir, built.err = os.MkdirTemp("", "tentacle-test-bin")
		if built.err != nil {
			return
		}
		os.Chmod(built.dir, 0o755) // tests run it as another user too
		goBin, err := exec.LookPath("go")
		if err != nil {
			goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		built.bin = filepath.Join(built.dir, "tentacle")
		if runtime.GOOS == "windows" {
			built.bin += ".exe"
		}
		cmd := exec.Command(goBin, "build", "-trimpath", "-o", built.bin, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		built.out, built.err = runChild(cmd)
	})
	if built.err != nil {
		t.Fatalf("go build: %v\n%s", built.err, built.out)
	}
	return built.bin
}

// built is the agent's binary, built once for all the tests of this run
// that start it as a process of its own (TestMain removes it).
var built struct {
	once          sync.Once
	dir, bin, out string
	err           error
}

// procAgent is an agent running as its own process, so that a test can
// kill it the hard way.
type procAgent struct {
	cmd        *exec.Cmd
	logs       *syncBuffer
	addr       string
	thumbprint string
	bin, home  string
}

// startProcAgent runs "tentacle run" on home and waits until it listens.
func startProcAgent(t testing.TB, bin, home string) *procAgent {
	t.Helper()
	p := &procAgent{logs: &syncBuffer{}, bin: bin, home: home}
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

// dial connects to the agent as client, until the test's end.
func (p *procAgent) dial(t testing.TB, client *identity) *clientConn {
	t.Helper()
	c, err := dialAgent(p.addr, client, p.thumbprint, "", 10*time.Second, nil)
	if err != nil {
		t.Fatalf("dial: %v\n%s", err, p.logs)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// startBinaryAgent runs the built binary as an agent in a new home that
// trusts a new client identity, named name, and connects as that client.
// It returns the agent, the client's identity and home, and the connection.
func startBinaryAgent(tb testing.TB, name string) (p *procAgent, client *identity, clientHome string, c *clientConn) {
	tb.Helper()
	needSh(tb)
	home := tb.TempDir()
	client, clientHome = trustedClient(tb, home, name)
	p = startProcAgent(tb, buildTentacle(tb), home)
	return p, client, clientHome, p.dial(tb, client)
}

func TestCrashMarksRunningJobsLost(t *testing.T) {
	p, client, _, c := startBinaryAgent(t, "test-client")
	finished := startJob(t, c, map[string]any{"script": "echo done before the crash"})
	_, before := followJob(t, c, finished)
	script := `sleep 1000 & echo "pid $!"; echo "pid $$"; wait`
	h, _ := sharedCgroups()
	if h != nil { // found by its cgroup, a child in a session of its own goes too
		script = detached("exec sleep 1000") + ` & echo "pid $$"; wait`
	}
	running := startJob(t, c, map[string]any{"script": script})
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
	p2 := startProcAgent(t, p.bin, p.home)
	c = p2.dial(t, client)
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
		if h != nil && len(cgroupsOf(h, running)) > 0 {
			t.Fatalf("the lost job's cgroups are still there: %v", cgroupsOf(h, running))
		}
	}
}

// TestOutputMemoryBounded: 200 MB of output (one 100 MB line and 100 MB of
// short lines) leaves the agent's heap flat.
func TestOutputMemoryBounded(t *testing.T) {
	_, c := startShAgent(t)
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
	t.Cleanup(func() { r.cut() })
	relayEach(t, ln, target, func(in, out net.Conn) {
		r.mu.Lock()
		r.conns = append(r.conns, in, out)
		r.mu.Unlock()
		go func() { io.Copy(out, in); out.Close() }()
		go func() { io.Copy(in, out); in.Close() }()
	})
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

// cutThenOpen cuts the connections through r, which must have one, then
// creates gate: a script waiting for it goes on, on its new connection.
func (r *relay) cutThenOpen(t *testing.T, gate string) {
	t.Helper()
	if r.cut() == 0 {
		t.Fatal("no connection through the relay to cut")
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
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
		{"words joined as ssh does", []string{a.addr, "--", "echo", "hello", "world"}, 0, "hello world\n", ""},
		{"a command with its flags", []string{a.addr, "--", "ls", "-d", "/"}, 0, "/\n", ""},
		{"env and cwd", []string{"-env", "X=1", "-env", "Y=two=2", "-cwd", "/", a.addr, "--", `echo "$X $Y $(pwd)"`}, 0, "1 two=2 /\n", ""},
		{"script from a file", []string{"-file", script, a.addr, "--", "arg"}, 7, "from file arg\n", "oops\n"},
		{"timeout", []string{"-timeout", "1s", a.addr, "--", "echo started; sleep 1000"}, exitTimedOut, "started\n", "timed out"},
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
	a, c := startShAgent(t)
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
		// The words after "--" are one command line, as with ssh: the gate's
		// path is in it.
		codec <- run([]string{"exec", "-home", a.clientHome, "-pin", a.thumbprint, r.ln.Addr().String(), "--",
			`i=1; while [ $i -le 1000 ]; do echo "line $i"; i=$((i+1)); done; echo err >&2
while [ ! -e '` + gate + `' ]; do sleep 0.01; done; echo after`}, &stdout, &stderr)
	}()
	waitFor(t, "the first 1000 lines", 10*time.Second, func() bool { return strings.Count(stdout.String(), "\n") == 1000 })
	r.cutThenOpen(t, gate)
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
	// The agent is the real binary in its own process, as deployed, not
	// this test process (whose scheduler and heap the client would share).
	p, _, clientHome, c := startBinaryAgent(b, "bench")
	bin, addr, pin := p.bin, p.addr, p.thumbprint
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

// BenchmarkJobOutput prints 1 GiB (the issue's figure) through a job and
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
	a, c := startShAgent(t)
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

// Client-chosen tickets (retried starts are idempotent, PROTOCOL §5) and
// jobs belonging to the client that started them (issue 11 #3).

// startReply is script.start's and deploy.start's answer.
type startReply struct {
	Ticket string `json:"ticket"`
	State  string `json:"state"`
}

// ranLines counts the lines a script appended to path: how often it ran.
func ranLines(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Count(string(b), "\n")
}

func listTickets(t *testing.T, c *clientConn) []string {
	t.Helper()
	var list struct {
		Jobs []jobListItem `json:"jobs"`
	}
	if err := c.call("job.list", nil, &list); err != nil {
		t.Fatalf("job.list: %v", err)
	}
	var out []string
	for _, j := range list.Jobs {
		out = append(out, j.Ticket)
	}
	return out
}

func TestClientChosenTicket(t *testing.T) {
	a, c := startShAgent(t)
	outer := t // subtests' connections outlive them
	ran := filepath.Join(t.TempDir(), "ran")
	ticket := "build-4711-step-3-attempt"
	params := `{"script":"echo ran >> \"$1\"; echo hello","args":["` + ran + `"],"timeout_s":30,"ticket":"` + ticket + `"}`
	// The same parameters spelt differently: other key order, white space,
	// number spelling and string escapes.
	respelt := `{ "ticket":"` + ticket + `", "timeout_s":3e1, "args":["` + ran + `"], "script":"echo ran >> \"$1\"; echo hell\u006f" }`

	var first startReply
	if err := c.call("script.start", json.RawMessage(params), &first); err != nil {
		t.Fatalf("script.start with a ticket: %v", err)
	}
	if first.Ticket != ticket || (first.State != stateQueued && first.State != stateRunning) {
		t.Fatalf("first start answered %+v", first)
	}
	var again startReply
	if err := c.call("script.start", json.RawMessage(respelt), &again); err != nil || again.Ticket != ticket {
		t.Fatalf("retried start: %+v, %v", again, err)
	}
	st, logs := followJob(t, c, ticket)
	if outcomeOf(st) != outcomeSuccess || strings.Join(texts(logs, "stdout"), "|") != "hello" {
		t.Fatalf("job: %s %v", outcomeOf(st), logs)
	}
	if err := c.call("script.start", json.RawMessage(params), &again); err != nil || again.Ticket != ticket || again.State != stateDone {
		t.Fatalf("retry of a finished job: %+v, %v (want its state now, done)", again, err)
	}
	if n := ranLines(t, ran); n != 1 {
		t.Fatalf("the script ran %d times for three starts of one ticket", n)
	}

	t.Run("other parameters are conflict", func(t *testing.T) {
		other := strings.Replace(params, "hello", "bye", 1)
		err := c.call("script.start", json.RawMessage(other), nil)
		if rpcKind(err) != kindConflict || !strings.Contains(err.Error(), "taken by another job") {
			t.Fatalf("start with the ticket and other parameters: %v", err)
		}
		if st := statusOf(t, c, ticket); outcomeOf(st) != outcomeSuccess || len(st.Logs) != 1 {
			t.Fatalf("the first job changed: %+v", st)
		}
	})

	t.Run("a retry after a restart is still idempotent", func(t *testing.T) {
		a.restart()
		c = a.dial(outer)
		var r startReply
		if err := c.call("script.start", json.RawMessage(params), &r); err != nil || r.State != stateDone {
			t.Fatalf("retry after restart: %+v, %v", r, err)
		}
		if err := c.call("script.start", json.RawMessage(strings.Replace(params, "hello", "bye", 1)), nil); rpcKind(err) != kindConflict {
			t.Fatalf("other parameters after restart: %v", err)
		}
		if n := ranLines(t, ran); n != 1 {
			t.Fatalf("the script ran %d times", n)
		}
	})

	t.Run("a completed ticket may be used again", func(t *testing.T) {
		if err := c.call("job.complete", map[string]any{"ticket": ticket}, nil); err != nil {
			t.Fatal(err)
		}
		if st, _ := runScriptRaw(t, c, params); outcomeOf(st) != outcomeSuccess {
			t.Fatalf("reused ticket: %s", outcomeOf(st))
		}
		if n := ranLines(t, ran); n != 2 {
			t.Fatalf("the script ran %d times, want 2 (once per life of the ticket)", n)
		}
	})

	t.Run("concurrent retries start one job", func(t *testing.T) {
		ran := filepath.Join(t.TempDir(), "ran")
		p := map[string]any{"script": `echo ran >> "$1"`, "args": []string{ran}, "ticket": "concurrent-retries-0001"}
		var wg sync.WaitGroup
		errs := make([]error, 8)
		for i := range errs {
			wg.Go(func() {
				cc := a.dial(outer)
				var r startReply
				errs[i] = cc.call("script.start", p, &r)
				if errs[i] == nil && r.Ticket != "concurrent-retries-0001" {
					errs[i] = &rpcError{Message: "ticket " + r.Ticket}
				}
			})
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatalf("concurrent start: %v", err)
			}
		}
		followJob(t, c, "concurrent-retries-0001")
		if n := ranLines(t, ran); n != 1 {
			t.Fatalf("eight concurrent starts of one ticket ran %d jobs", n)
		}
	})

	t.Run("bad tickets", func(t *testing.T) {
		before := listTickets(t, c)
		for _, tt := range []struct{ name, ticket string }{
			{"15 characters", "abcdefghijklmno"},
			{"65 characters", strings.Repeat("a", 65)},
			{"upper case", "ABCDEFGHIJKLMNOP"},
			{"a path", "../../../etc/passwd"},
			{"a dot", "abcdefgh.ijklmnop"},
			{"an underscore", "abcdefgh_ijklmnop"},
			{"a NUL", "abcdefghijklmnop\x00"},
		} {
			t.Run(tt.name, func(t *testing.T) {
				for _, m := range []string{"script.start", "deploy.start"} {
					p := map[string]any{"script": "true", "ticket": tt.ticket}
					if m == "deploy.start" {
						p = map[string]any{"app": "web", "version": "1", "package": strings.Repeat("0", 64), "ticket": tt.ticket}
					}
					err := c.call(m, p, nil)
					if rpcKind(err) != kindInvalidParams || !strings.Contains(err.Error(), "16 to 64 of a-z 0-9 -") {
						t.Fatalf("%s ticket %q: %v", m, tt.ticket, err)
					}
				}
			})
		}
		if after := listTickets(t, c); strings.Join(after, ",") != strings.Join(before, ",") {
			t.Fatalf("a refused start left a job: %v, was %v", after, before)
		}
		ents, _ := os.ReadDir(a.cfg.workDir())
		for _, e := range ents {
			if strings.Contains(e.Name(), "passwd") || strings.Contains(e.Name(), "ABC") {
				t.Fatalf("a refused ticket reached the file system: %q", e.Name())
			}
		}
	})

	t.Run("the longest ticket and the minted form", func(t *testing.T) {
		long := strings.Repeat("0123456789-", 6)[:64]
		if st, _ := runScript(t, c, map[string]any{"script": "true", "ticket": long}); st.Ticket != long {
			t.Fatalf("64-character ticket: %+v", st)
		}
		minted := startJob(t, c, map[string]any{"script": "true"})
		if len(minted) != 16 || strings.Trim(minted, "0123456789abcdef") != "" {
			t.Fatalf("minted ticket %q: want 16 hex digits", minted)
		}
		var r startReply
		if err := c.call("script.start", map[string]any{"script": "true", "ticket": minted}, &r); err != nil || r.Ticket != minted {
			t.Fatalf("a minted ticket sent back with the same parameters: %+v, %v", r, err)
		}
	})
}

// runScriptRaw starts a script from raw params and follows it to its end.
func runScriptRaw(t *testing.T, c *clientConn, params string) (*statusReply, []logEntry) {
	t.Helper()
	var r startReply
	if err := c.call("script.start", json.RawMessage(params), &r); err != nil {
		t.Fatalf("script.start: %v", err)
	}
	return followJob(t, c, r.Ticket)
}

func TestDeployStartTicket(t *testing.T) {
	needSh(t)
	logs := &syncBuffer{}
	a := startAgentLogging(t, logs)
	c := a.dial(t)
	sha := push(t, c, scriptPkg(t, "1.0"))
	params := map[string]any{"app": "web", "version": "1.0", "package": sha, "ticket": "deploy-web-1-0-try"}
	var first, again startReply
	if err := c.call("deploy.start", params, &first); err != nil || first.Ticket != "deploy-web-1-0-try" {
		t.Fatalf("deploy.start with a ticket: %+v, %v", first, err)
	}
	if err := c.call("deploy.start", params, &again); err != nil || again.Ticket != first.Ticket {
		t.Fatalf("retried deploy.start: %+v, %v", again, err)
	}
	st, _ := followJob(t, c, first.Ticket)
	if outcomeOf(st) != outcomeSuccess {
		t.Fatalf("deploy: %s", outcomeOf(st))
	}
	if l := list(t, c, "web"); len(l.Releases) != 1 {
		t.Fatalf("two starts of one ticket made %d releases: %+v", len(l.Releases), l.Releases)
	}
	other := map[string]any{"app": "web", "version": "1.1", "package": sha, "ticket": "deploy-web-1-0-try"}
	if err := c.call("deploy.start", other, nil); rpcKind(err) != kindConflict {
		t.Fatalf("deploy.start with the ticket and another version: %v", err)
	}
	// The retry took no lasting hold on the package: it can be pruned.
	a.srv.apps.mu.Lock()
	held := 0
	for _, h := range a.srv.apps.holds {
		if h.sha == sha {
			held++
		}
	}
	a.srv.apps.mu.Unlock()
	if held != 0 {
		t.Fatalf("package %s still held %d times after the deploy ended", sha, held)
	}
	// One INFO line for the finished deploy, with its app and version.
	waitFor(t, "the finished line", 5*time.Second, func() bool { return strings.Contains(logs.String(), "msg=\"job finished\" ticket="+first.Ticket) })
	for line := range strings.Lines(logs.String()) {
		if strings.Contains(line, "job finished") && strings.Contains(line, first.Ticket) {
			for _, want := range []string{"level=INFO", "kind=deploy", "outcome=success", "duration=", "client=test-client", "app=web", "version=1.0"} {
				if !strings.Contains(line, want) {
					t.Fatalf("finished line %q lacks %q", line, want)
				}
			}
		}
	}
}

// TestJobsBelongToTheirClient: a client sees and touches only its own jobs
// unless its entry is unrestricted or has allow=jobs; another client's
// ticket reads exactly like an unknown one.
func TestJobsBelongToTheirClient(t *testing.T) {
	needSh(t)
	a := startAgent(t)
	owner, other, reader, overseer := newTestIdentity(t), newTestIdentity(t), newTestIdentity(t), newTestIdentity(t)
	writeTrust(t, a.home, a.client.thumbprint+" admin\n"+
		owner.thumbprint+" allow=script owner\n"+
		other.thumbprint+" allow=script,deploy other\n"+
		reader.thumbprint+" allow=read reader\n"+
		overseer.thumbprint+" allow=jobs overseer\n")
	dial := func(id *identity) *clientConn {
		c, err := dialAgent(a.addr, id, a.thumbprint, "", 10*time.Second, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	oc, xc, rc, jc, ac := dial(owner), dial(other), dial(reader), dial(overseer), a.dial(t)
	secret := startJob(t, oc, map[string]any{"script": "echo the secret; sleep 1000"})
	waitFor(t, "the secret printed", 10*time.Second, func() bool { return len(statusOf(t, oc, secret).Logs) > 0 })
	const unknown = "0123456789abcdef"

	// Whatever another client asks about the job, the answer is the one for
	// an unknown ticket, word for word but the ticket.
	for _, c := range []struct {
		name string
		cc   *clientConn
	}{{"another script client", xc}, {"a read-only client", rc}} {
		for _, m := range []string{"job.status", "job.cancel", "job.complete"} {
			t.Run(c.name+" "+m, func(t *testing.T) {
				errOther := c.cc.call(m, map[string]any{"ticket": secret}, nil)
				errUnknown := c.cc.call(m, map[string]any{"ticket": unknown}, nil)
				if m == "job.cancel" || m == "job.complete" {
					if c.cc == rc {
						if rpcKind(errOther) != kindForbidden || rpcKind(errUnknown) != kindForbidden {
							t.Fatalf("%s from allow=read: %v / %v, want forbidden", m, errOther, errUnknown)
						}
						return
					}
				}
				if rpcKind(errOther) != kindNotFound || errOther.Error() != strings.ReplaceAll(errUnknown.Error(), unknown, secret) {
					t.Fatalf("%s of another client's job: %v (%s); of an unknown one: %v", m, errOther, rpcKind(errOther), errUnknown)
				}
			})
		}
		if got := listTickets(t, c.cc); len(got) != 0 {
			t.Fatalf("%s lists %v", c.name, got)
		}
	}
	// Starting a job under another client's ticket is refused as a
	// mismatched retry is: nothing tells the two apart.
	var r startReply
	if err := oc.call("script.start", map[string]any{"script": "true", "ticket": "owned-by-the-owner-1"}, &r); err != nil {
		t.Fatal(err)
	}
	errTheirs := xc.call("script.start", map[string]any{"script": "true", "ticket": "owned-by-the-owner-1"}, nil)
	errMine := oc.call("script.start", map[string]any{"script": "false", "ticket": "owned-by-the-owner-1"}, nil)
	if rpcKind(errTheirs) != kindConflict || errTheirs.Error() != errMine.Error() {
		t.Fatalf("start under another client's ticket: %v; under one's own with other parameters: %v", errTheirs, errMine)
	}
	if st := statusOf(t, oc, secret); st.State != stateRunning {
		t.Fatalf("the owner's job is %s after the others tried it", st.State)
	}

	t.Run("the owner sees its own", func(t *testing.T) {
		if got := listTickets(t, oc); len(got) != 2 {
			t.Fatalf("owner lists %v", got)
		}
	})
	t.Run("allow=jobs and unrestricted entries see and touch all", func(t *testing.T) {
		for _, c := range []*clientConn{jc, ac} {
			if got := listTickets(t, c); len(got) != 2 {
				t.Fatalf("lists %v, want both of the owner's jobs", got)
			}
			if st := statusOf(t, c, secret); len(st.Logs) == 0 || st.Logs[0].Text != "the secret" {
				t.Fatalf("status: %+v", st)
			}
		}
		if err := jc.call("script.start", map[string]any{"script": "true"}, nil); rpcKind(err) != kindForbidden {
			t.Fatalf("allow=jobs may start a script: %v", err)
		}
		if err := jc.call("job.cancel", map[string]any{"ticket": secret}, nil); err != nil {
			t.Fatalf("allow=jobs cancels: %v", err)
		}
		if st, _ := followJob(t, oc, secret); outcomeOf(st) != outcomeCancelled {
			t.Fatalf("after the overseer's cancel: %s", outcomeOf(st))
		}
		if err := jc.call("job.complete", map[string]any{"ticket": secret}, nil); err != nil {
			t.Fatalf("allow=jobs completes: %v", err)
		}
	})

	t.Run("jobs journaled without an owner", func(t *testing.T) {
		done := startJob(t, oc, map[string]any{"script": "echo old"})
		followJob(t, oc, done)
		a.stop()
		// What an agent from before owners were recorded left behind.
		path := filepath.Join(a.cfg.workDir(), journalName)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var kept []string
		for line := range strings.Lines(string(b)) {
			var st map[string]any
			if json.Unmarshal([]byte(line), &st) != nil {
				t.Fatalf("journal line %q", line)
			}
			delete(st, "owner")
			nb, _ := json.Marshal(st)
			kept = append(kept, string(nb)+"\n")
		}
		if err := os.WriteFile(path, []byte(strings.Join(kept, "")), 0o600); err != nil {
			t.Fatal(err)
		}
		a.cfg.Listen = "127.0.0.1:0"
		a.start()
		oc, jc, ac = dial(owner), dial(overseer), a.dial(t)
		if err := oc.call("job.status", map[string]any{"ticket": done}, nil); rpcKind(err) != kindNotFound {
			t.Fatalf("an ownerless job read by a restricted client: %v", err)
		}
		for _, c := range []*clientConn{jc, ac} {
			if st := statusOf(t, c, done); outcomeOf(st) != outcomeSuccess {
				t.Fatalf("an ownerless job read by allow=jobs or an unrestricted entry: %+v", st)
			}
		}
	})
}

// TestBodyDecidesOutcome: a job whose body decides its outcome (a deploy)
// reads success when the body returned nil, even if a cancel landed after
// its work was done; an ordinary job reads cancelled.
func TestBodyDecidesOutcome(t *testing.T) {
	a := startAgent(t)
	for _, tt := range []struct {
		name        string
		bodyDecides bool
		want        string
	}{
		{"deploy-like", true, outcomeSuccess},
		{"script-like", false, outcomeCancelled},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cancelled := make(chan struct{})
			j, _, err := a.srv.jobs.start(jobSpec{Kind: "script", BodyDecides: tt.bodyDecides, Run: func(j *job) error {
				<-j.context().Done() // the work is done; a cancel lands meanwhile
				close(cancelled)
				return nil
			}})
			if err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the job to run", 5*time.Second, func() bool { return j.currentState() == stateRunning })
			a.srv.jobs.cancelJob(j, "the test")
			<-cancelled
			waitFor(t, "the job to end", 5*time.Second, func() bool { return j.currentState() == stateDone })
			st, err := j.status(0)
			if err != nil || st.Outcome == nil || *st.Outcome != tt.want {
				t.Fatalf("outcome %v, %v; want %s", st.Outcome, err, tt.want)
			}
		})
	}
}

// Jobs and the disk: a full disk (on a tmpfs the test mounts) neither tears
// the journal nor lets a job whose output was lost read success; the log
// cap; start-up that does not read kept logs; job files that are not opened
// through links.

// smallDisk mounts a tmpfs of size (as mount(8) takes it: "256k") to
// fill, private to the agent's user like a home, or skips the test where
// it cannot mount (see mountTmpfs).
func smallDisk(t *testing.T, size string) string {
	t.Helper()
	dir := mountTmpfs(t, size)
	if dir == "" {
		t.Skip("cannot mount a tmpfs to fill (needs root on Linux and mount(2))")
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

// fillDisk writes a file in dir until the file system is full and returns
// a function that removes it.
func fillDisk(t *testing.T, dir string) (free func()) {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	for {
		if _, err = f.Write(chunk); err != nil {
			break
		}
	}
	f.Close()
	if !isDiskFull(err) {
		t.Fatalf("filling %s: %v", dir, err)
	}
	return func() {
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
	}
}

// TestJournalOnFullDisk: an append that fails for space leaves the journal
// ending at a line boundary, and what it held is written by the next
// append that succeeds, so no state is glued onto a torn line and lost.
func TestJournalOnFullDisk(t *testing.T) {
	dir := smallDisk(t, "256k")
	path := filepath.Join(dir, journalName)
	jr, _, err := openJournal(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(jr.close) // before the unmount
	state := func(i int, s string) jobState {
		return jobState{Ticket: fmt.Sprintf("%016x", i), Kind: "script", Mutex: strings.Repeat("m", 100), State: s, Created: time.Now().UTC()}
	}
	// Lines of about 250 bytes; the file ends a few bytes short of a page
	// when the disk fills, so the next append is written in part.
	n := 0
	for ; ; n++ {
		if err := jr.put(state(n, stateQueued)); err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Stat(path); err != nil || fi.Size()%4096 > 4096-100 {
			break
		}
	}
	n++
	free := fillDisk(t, dir)
	failures := 0
	for ; n < 5000 && failures < 3; n++ {
		if err := jr.put(state(n, stateQueued)); err != nil {
			if !isDiskFull(err) {
				t.Fatalf("put %d: %v", n, err)
			}
			failures++
		}
	}
	if failures == 0 {
		t.Fatalf("%d appends on a full disk all succeeded", n)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if b[len(b)-1] != '\n' {
		t.Fatalf("after a failed append the journal (%d bytes) ends in a torn line: %q", len(b), b[max(0, len(b)-80):])
	}
	for line := range strings.Lines(string(b)) {
		var r journalRecord
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("journal line %q: %v", line, err)
		}
	}
	free()
	for i := range n {
		if err := jr.put(state(i, stateDone)); err != nil {
			t.Fatalf("put %d with space again: %v", i, err)
		}
	}
	jr.close()
	jr, states, err := openJournal(path)
	if err != nil {
		t.Fatal(err)
	}
	jr.close()
	if len(states) != n {
		t.Fatalf("the journal holds %d jobs, want %d", len(states), n)
	}
	for id, st := range states {
		if st.State != stateDone {
			t.Fatalf("job %s reads %s, want done: a line was glued onto a torn one", id, st.State)
		}
	}
}

// TestOutputOnFullDisk: a script whose output could not be written does not
// read success; its status and log say why, exec prints it and exits 1, and
// the agent goes on serving.
func TestOutputOnFullDisk(t *testing.T) {
	needSh(t)
	if _, err := exec.LookPath("fold"); err != nil {
		t.Skip("needs fold")
	}
	dir := smallDisk(t, "4m")
	a := startAgent(t, func(c *config) { c.TrustFile = homeTrustPath(c.Home); c.Home = dir })
	c := a.dial(t)
	// 8 MB of output (about 13 MB of log) on a 4 MiB disk, then exit 0.
	flood := `head -c 8000000 /dev/zero | tr '\0' x | fold -w 100; echo done >&2; exit 0`
	st, logs := runScript(t, c, map[string]any{"script": flood})
	agent := strings.Join(texts(logs, "agent"), "\n")
	if outcomeOf(st) != outcomeFailed || exitCodeOf(st) != "0" || !strings.Contains(st.LogError, "no space left on device") {
		t.Fatalf("a job whose output did not fit: outcome %s, exit %s, log_error %q", outcomeOf(st), exitCodeOf(st), st.LogError)
	}
	for _, want := range []string{"output is not being kept", "failed: its output could not all be written", "no space left on device"} {
		if !strings.Contains(agent, want) {
			t.Fatalf("agent lines lack %q:\n%s", want, agent)
		}
	}
	if err := c.call("job.complete", map[string]any{"ticket": st.Ticket}, nil); err != nil {
		t.Fatalf("complete: %v", err)
	}

	stdout, stderr, code := a.cli("exec", a.addr, "--", flood)
	if code != 1 || !strings.Contains(stderr, "no space left on device") || !strings.Contains(stderr, "failed") {
		t.Fatalf("exec of a job whose output was lost: code %d, stderr %q (stdout %d bytes)", code, stderr, len(stdout))
	}
	if st, _ := runScript(t, c, map[string]any{"script": "echo fine"}); outcomeOf(st) != outcomeSuccess {
		t.Fatalf("after the disk had room again: %s", outcomeOf(st))
	}
}

func TestJobLogCap(t *testing.T) {
	needSh(t)
	const capBytes = 64 << 10
	a := startAgent(t, func(c *config) { c.JobMaxLog = capBytes })
	c := a.dial(t)
	script := `i=0; while [ $i -lt 5000 ]; do echo "line $i"; i=$((i+1)); done; echo last >&2; exit 0`
	st, logs := runScript(t, c, map[string]any{"script": script})
	out := texts(logs, "stdout")
	if outcomeOf(st) != outcomeSuccess || exitCodeOf(st) != "0" || !st.LogTruncated {
		t.Fatalf("capped job: outcome %s, exit %s, log_truncated %v", outcomeOf(st), exitCodeOf(st), st.LogTruncated)
	}
	// stderr's "last" may come in before stdout reaches the cap (the two
	// pipes are read apart): only stdout's lines are counted.
	checkPrefix := func(out []string) {
		t.Helper()
		if len(out) == 0 || len(out) >= 5000 {
			t.Fatalf("kept %d of 5000 stdout lines", len(out))
		}
		for i, line := range out {
			if line != "line "+strconv.Itoa(i) {
				t.Fatalf("kept line %d is %q: the cap must keep a prefix", i, line)
			}
		}
	}
	checkPrefix(out)
	if agent := strings.Join(texts(logs, "agent"), "\n"); !strings.Contains(agent, "output past 65536 bytes is not kept (the agent's -job-max-log): the job goes on") {
		t.Fatalf("agent lines: %q", agent)
	}
	fi, err := os.Stat(filepath.Join(a.cfg.workDir(), st.Ticket, metaDir, "log.jsonl"))
	if err != nil || fi.Size() > capBytes+1024 {
		t.Fatalf("log on disk: %v, %v (cap %d)", fi.Size(), err, capBytes)
	}
	a.restart()
	c = a.dial(t)
	if again := statusOf(t, c, st.Ticket); !again.LogTruncated || outcomeOf(again) != outcomeSuccess {
		t.Fatalf("after a restart: log_truncated %v, outcome %s", again.LogTruncated, outcomeOf(again))
	}
	stdout, stderr, code := a.cli("exec", a.addr, "--", script)
	if code != 0 || !strings.Contains(stderr, "tentacle: output past 65536 bytes is not kept") {
		t.Fatalf("exec of a capped job: code %d, stderr %q", code, stderr)
	}
	checkPrefix(strings.Split(strings.TrimSuffix(stdout, "\n"), "\n"))
}

// writeBigLog replaces a job's log with n entries of about 1 KiB each.
func writeBigLog(t *testing.T, path string, n int) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	text := strings.Repeat("x", 1000)
	for seq := 1; seq <= n; seq++ {
		fmt.Fprintf(w, `{"seq":%d,"stream":"stdout","text":"%s","time":"2026-01-01T00:00:00.000Z"}`+"\n", seq, text)
	}
	if err := errors.Join(w.Flush(), f.Close()); err != nil {
		t.Fatal(err)
	}
}

// TestStartupDoesNotReadJobLogs: the time from start to listening does not
// grow with the job output kept on disk (a kept 2 GiB log once held the port
// shut for 21.9 s). Prints the start times with and without a 256 MiB log.
func TestStartupDoesNotReadJobLogs(t *testing.T) {
	a, c := startShAgent(t)
	big := startJob(t, c, map[string]any{"script": "echo soon to be big"})
	followJob(t, c, big)
	c.Close()
	startTime := func() time.Duration {
		var times []time.Duration
		for range 3 {
			a.stop()
			a.cfg.Listen = "127.0.0.1:0"
			t0 := time.Now()
			a.start()
			times = append(times, time.Since(t0))
		}
		slices.Sort(times)
		return times[1]
	}
	without := startTime()
	a.stop()
	const entries = 256 << 10 // about 256 MiB
	logPath := filepath.Join(a.cfg.workDir(), big, metaDir, "log.jsonl")
	writeBigLog(t, logPath, entries)
	fi, _ := os.Stat(logPath)
	a.start()
	with := startTime()
	t.Logf("start-up (median of 3): %v with no big job log, %v with a %d MiB one (ratio %.2f)", without, with, fi.Size()>>20, float64(with)/float64(without))
	if with > 2*without+200*time.Millisecond {
		t.Fatalf("start-up took %v with a %d MiB job log, %v without: it reads job logs", with, fi.Size()>>20, without)
	}
	// The log is whole: its first and last entries are read, and its extent
	// is known from its end.
	c = a.dial(t)
	st := statusOf(t, c, big)
	if len(st.Logs) == 0 || st.Logs[0].Seq != 1 {
		t.Fatalf("first page of the big log: %d entries", len(st.Logs))
	}
	var last statusReply
	if err := c.call("job.status", map[string]any{"ticket": big, "after": entries - 1}, &last); err != nil || len(last.Logs) != 1 || last.Logs[0].Seq != entries || last.Next != entries {
		t.Fatalf("last entry of the big log: %+v, %v", last.Logs, err)
	}
	var none statusReply
	if err := c.call("job.status", map[string]any{"ticket": big, "after": entries, "wait_ms": 10}, &none); err != nil || len(none.Logs) != 0 || none.Next != entries {
		t.Fatalf("after the last entry: %+v, %v", none, err)
	}
}

// readySpares waits until the agent's pool holds its spare work folders and
// returns them.
func readySpares(t *testing.T, a *testAgent) []string {
	t.Helper()
	var spares []string
	waitFor(t, "spare work folders", 5*time.Second, func() bool {
		spares, _ = filepath.Glob(filepath.Join(a.cfg.workDir(), sparePrefix+"*", metaDir, "log.jsonl"))
		return len(spares) == cap(a.srv.jobs.pool.ready) && len(a.srv.jobs.pool.ready) == cap(a.srv.jobs.pool.ready)
	})
	for i, s := range spares {
		spares[i] = filepath.Dir(filepath.Dir(s))
	}
	return spares
}

// TestJobFilesAreNotFollowed: what another local user could plant in a job
// folder (with a work folder she can write) is refused, never written
// through or run (issue 11 #5).
func TestJobFilesAreNotFollowed(t *testing.T) {
	needSh(t)
	if runtime.GOOS == "windows" {
		t.Skip("no symlinks or uids to plant on Windows")
	}
	t.Run("a planted script is refused, not written through", func(t *testing.T) {
		a := startAgent(t)
		c := a.dial(t)
		victim := filepath.Join(t.TempDir(), "victim")
		if err := os.WriteFile(victim, []byte("echo planted\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, s := range readySpares(t, a) {
			os.Remove(filepath.Join(s, metaDir, "script.sh"))
			if err := os.Symlink(victim, filepath.Join(s, metaDir, "script.sh")); err != nil {
				t.Fatal(err)
			}
		}
		st, logs := runScript(t, c, map[string]any{"script": "echo mine"})
		b, _ := os.ReadFile(victim)
		if string(b) != "echo planted\n" {
			t.Fatalf("the script was written through a planted link into %s: %q", victim, b)
		}
		if outcomeOf(st) != outcomeFailed || len(texts(logs, "stdout")) != 0 || !strings.Contains(strings.Join(texts(logs, "agent"), "\n"), "failed to write the script") {
			t.Fatalf("job with a planted script: %s, %v", outcomeOf(st), logs)
		}
	})
	t.Run("a job folder that is a link or another user's is refused", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root to give a folder to another uid")
		}
		a := startAgent(t)
		c := a.dial(t)
		elsewhere := t.TempDir()
		for i, s := range readySpares(t, a) {
			meta := filepath.Join(s, metaDir)
			if i%2 == 0 {
				if err := os.Chown(s, 65534, 65534); err != nil {
					t.Fatal(err)
				}
				continue
			}
			if err := errors.Join(os.RemoveAll(meta), os.Symlink(elsewhere, meta)); err != nil {
				t.Fatal(err)
			}
		}
		for range 2 {
			err := c.call("script.start", map[string]any{"script": "echo mine"}, nil)
			if err == nil || !strings.Contains(err.Error(), "refusing to use it") {
				t.Fatalf("start in a planted job folder: %v", err)
			}
		}
		if ents, _ := os.ReadDir(elsewhere); len(ents) != 0 {
			t.Fatalf("the agent wrote through a linked .tentacle: %v", ents)
		}
		if err := c.call("ping", nil, nil); err != nil {
			t.Fatalf("agent stopped serving: %v", err)
		}
	})
}

// Jobs in cgroups (jobs_contain.go): a fork flood fails its job and never
// the agent, a memory limit holds, detached and double-forked processes go
// with cancel, timeout and the job's end (unless kept), and what it costs
// (leftovers of a lost job: TestCrashMarksRunningJobsLost). Where this
// process cannot make cgroups the tests that need them skip and say why.

// runTrue runs "true" as a job on c (start, wait, complete) and adds the
// time it took to took.
func runTrue(b *testing.B, c *clientConn, took *[]time.Duration) {
	start := time.Now()
	ticket := startJob(b, c, map[string]any{"script": "true"})
	if st, _ := followJob(b, c, ticket); outcomeOf(st) != outcomeSuccess {
		b.Fatalf("true: %s", outcomeOf(st))
	}
	if err := c.call("job.complete", map[string]any{"ticket": ticket}, nil); err != nil {
		b.Fatal(err)
	}
	*took = append(*took, time.Since(start))
}

var burst = flag.Bool("burst", false, "BenchmarkJobContainment: jobs back to back, without exec between them")

// needCgroups skips a test where jobs cannot be put in cgroups here.
func needCgroups(t testing.TB) *cgroupHost {
	t.Helper()
	needSh(t)
	h, reason := sharedCgroups()
	if h == nil {
		t.Skipf("cgroups are not available to jobs here: %s", reason)
	}
	return h
}

// cgroupsOf lists the cgroups there are for ticket's processes.
func cgroupsOf(h *cgroupHost, ticket string) []string {
	var out []string
	for _, p := range []string{h.v2, h.pids, h.memory, h.freezer} {
		if p != "" {
			m, _ := filepath.Glob(filepath.Join(p, "tentacle-"+ticket+"*"))
			out = append(out, m...)
		}
	}
	return out
}

// agentLines is a job log's agent lines as one text.
func agentLines(logs []logEntry) string { return strings.Join(texts(logs, "agent"), "\n") }

// TestJobForkFlood: a job that forks until it cannot hits its process
// limit; its own forks fail, the agent goes on serving and starting jobs,
// and every process of the flood is gone after.
func TestJobForkFlood(t *testing.T) {
	h := needCgroups(t)
	const limit = 64
	a := startAgent(t, func(c *config) { c.JobMaxProcs = limit; c.KillGrace = 500 * time.Millisecond })
	c := a.dial(t)
	tests := []struct {
		name, shell string
		timeout     float64
		outcome     string
	}{
		// dash gives up at its first failed fork: the job fails by itself.
		{"sh fails at the limit", "sh", 30, outcomeFailed},
		// bash retries a failed fork with back-off: the flood goes on until the
		// job's timeout, while the agent serves.
		{"bash floods until its timeout", "bash", 3, outcomeTimedOut},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := exec.LookPath(tt.shell); err != nil {
				t.Skipf("%s is not installed", tt.shell)
			}
			ticket := startJob(t, c, map[string]any{"shell": tt.shell, "timeout_s": tt.timeout,
				"script": `while :; do sleep 1000 & done`})
			waitFor(t, "the flood to reach the limit", 20*time.Second, func() bool {
				for _, d := range cgroupsOf(h, ticket) {
					if b, err := os.ReadFile(filepath.Join(d, "pids.events")); err == nil && !strings.Contains(string(b), "max 0") {
						return true
					}
				}
				return statusOf(t, c, ticket).State == stateDone
			})
			// Meanwhile the agent answers and runs another job.
			if err := c.call("ping", nil, nil); err != nil {
				t.Fatalf("ping during the flood: %v", err)
			}
			if st, logs := runScript(t, c, map[string]any{"script": "echo fine"}); outcomeOf(st) != outcomeSuccess || !slices.Contains(texts(logs, "stdout"), "fine") {
				t.Fatalf("a job during the flood: %s %v", outcomeOf(st), logs)
			}
			st, logs := followJob(t, c, ticket)
			if outcomeOf(st) != tt.outcome {
				t.Fatalf("outcome %s, want %s; log %v", outcomeOf(st), tt.outcome, logs)
			}
			if want := fmt.Sprintf("the job reached its limit of %d processes (-job-max-procs)", limit); !strings.Contains(agentLines(logs), want) {
				t.Fatalf("no %q in the agent lines:\n%s", want, agentLines(logs))
			}
			if left := cgroupsOf(h, ticket); len(left) > 0 {
				t.Fatalf("the flood's cgroups are still there: %v", left)
			}
			if err := c.call("ping", nil, nil); err != nil {
				t.Fatalf("ping after the flood: %v", err)
			}
		})
	}
}

// TestJobMemoryLimit: a job that allocates past -job-max-memory is killed
// by the kernel and fails, and says so; one within it succeeds.
func TestJobMemoryLimit(t *testing.T) {
	h := needCgroups(t)
	if !h.hasMemory() {
		t.Skip("the memory controller is not available to jobs here")
	}
	const limit = 64 << 20
	a := startAgent(t, func(c *config) { c.JobMaxMemory = limit })
	c := a.dial(t)
	tests := []struct {
		name, block string
		outcome     string
	}{
		{"within the limit", "8M", outcomeSuccess},
		{"past the limit", "256M", outcomeFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// dd holds one block of bs bytes in memory, and fills it.
			st, logs := runScript(t, c, map[string]any{"script": "dd if=/dev/zero of=/dev/null bs=" + tt.block + " count=1"})
			if outcomeOf(st) != tt.outcome {
				t.Fatalf("outcome %s, want %s; log %v", outcomeOf(st), tt.outcome, logs)
			}
			killed := strings.Contains(agentLines(logs), fmt.Sprintf("for going over its memory limit of %d bytes (-job-max-memory)", limit))
			if killed != (tt.outcome == outcomeFailed) {
				t.Fatalf("exit code %s; agent lines:\n%s", exitCodeOf(st), agentLines(logs))
			}
			if tt.outcome == outcomeFailed && exitCodeOf(st) != "137" {
				t.Fatalf("exit code %s, want 137 (SIGKILL)", exitCodeOf(st))
			}
		})
	}
}

// detached is a shell command that starts sh in a session of its own,
// which prints its pid and becomes body (run with output to /dev/null).
func detached(body string) string {
	return `setsid sh -c 'echo "pid $$"; exec >/dev/null 2>&1; ` + body + `'`
}

// TestJobLeftovers: what a job's process leaves running, detached
// (setsid) or double-forked, goes when the job is cancelled or times out,
// always, and when the process ends by itself, unless it was started with
// TENTACLE_KEEP_RUNNING=1. Where there are no cgroups (process groups), the
// same holds for what stays in the job's process group.
func TestJobLeftovers(t *testing.T) {
	needSh(t)
	if runtime.GOOS == "windows" {
		t.Skip("needs setsid and /proc")
	}
	tests := []struct {
		name, script string
		group        bool    // also holds with process groups only (nothing leaves the group)
		timeout      float64 // 0: none
		cancel       bool
		outcome      string
		kept         bool // the leftover is still running after the job
		line         string
	}{
		{name: "a double-forked process goes when the script ends", script: `(` + detached("exec sleep 1000") + ` &)`,
			outcome: outcomeSuccess, line: "the process exited and left 1 process(es) running"},
		{name: "a background process goes when the script ends", script: `sh -c 'echo "pid $$"; exec sleep 1000 >/dev/null 2>&1' &`, group: true,
			outcome: outcomeSuccess, line: "the process exited and left 1 process(es) running"},
		{name: "a process started with TENTACLE_KEEP_RUNNING=1 is kept", script: `(TENTACLE_KEEP_RUNNING=1 ` + detached("exec sleep 1000") + ` &)`,
			outcome: outcomeSuccess, kept: true, line: "left 1 process(es) running, started with TENTACLE_KEEP_RUNNING=1"},
		{name: "cancel kills a detached process, kept or not", script: `TENTACLE_KEEP_RUNNING=1 ` + detached("exec sleep 1000") + ` & sleep 1000`,
			cancel: true, outcome: outcomeCancelled, line: "sending SIGTERM to cgroup"},
		{name: "a timeout kills a detached process that ignores SIGTERM", script: detached(`trap "" TERM; while :; do sleep 1; done`) + ` & sleep 1000`,
			timeout: 1, outcome: outcomeTimedOut, line: "sending SIGKILL to cgroup"},
	}
	modes := []containMode{{"cgroup", false}, {"process group", true}}
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			var h *cgroupHost
			if !mode.noCgroups {
				h = needCgroups(t)
			}
			a := startAgent(t, func(c *config) { c.KillGrace = 300 * time.Millisecond; c.noCgroups = mode.noCgroups })
			c := a.dial(t)
			for _, tt := range tests {
				if mode.noCgroups && !tt.group {
					continue
				}
				t.Run(tt.name, func(t *testing.T) {
					ticket := startJob(t, c, map[string]any{"script": tt.script, "timeout_s": tt.timeout})
					waitFor(t, "the leftover's pid", 10*time.Second, func() bool { return len(texts(statusOf(t, c, ticket).Logs, "stdout")) > 0 })
					if tt.cancel {
						if err := c.call("job.cancel", map[string]any{"ticket": ticket}, nil); err != nil {
							t.Fatal(err)
						}
					}
					st, logs := followJob(t, c, ticket)
					pids := pidsIn(t, texts(logs, "stdout"))
					defer killAll(pids)
					if outcomeOf(st) != tt.outcome || !strings.Contains(agentLines(logs), tt.line) {
						t.Fatalf("outcome %s, want %s with %q; agent lines:\n%s", outcomeOf(st), tt.outcome, tt.line, agentLines(logs))
					}
					if !tt.kept {
						waitGone(t, pids)
						if h != nil {
							if left := cgroupsOf(h, ticket); len(left) > 0 {
								t.Fatalf("cgroups left: %v", left)
							}
						}
						return
					}
					for _, p := range pids {
						if !processAlive(p) {
							t.Fatalf("kept process %d is gone", p)
						}
					}
					// Once the kept process has exited, the next job's start
					// removes its cgroup.
					killAll(pids)
					waitGone(t, pids)
					runScript(t, c, map[string]any{"script": "true"})
					if left := cgroupsOf(h, ticket); len(left) > 0 {
						t.Fatalf("cgroups left after the kept process exited: %v", left)
					}
				})
			}
		})
	}
}

func killAll(pids []int) {
	for _, p := range pids {
		if pr, err := os.FindProcess(p); err == nil {
			pr.Kill()
		}
	}
}

// containMode is a way for a test agent to contain its jobs: in cgroups
// where this machine has them, or in process groups (noCgroups).
type containMode struct {
	name      string
	noCgroups bool
}

// TestContainmentReported: the agent says at start how it contains jobs,
// with a WARN line and the reason where it is not cgroups, and info says
// the same.
func TestContainmentReported(t *testing.T) {
	h, _ := sharedCgroups()
	tests := []containMode{{"as found here", false}, {"without cgroups", true}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := startAgent(t, func(c *config) { c.noCgroups = tt.noCgroups; c.JobMaxProcs = 100 })
			var info struct {
				Containment struct {
					Mode     string `json:"mode"`
					Reason   string `json:"reason"`
					MaxProcs int    `json:"max_procs"`
				} `json:"containment"`
			}
			if err := a.dial(t).call("info", nil, &info); err != nil {
				t.Fatal(err)
			}
			got, logs := info.Containment, a.logs.String()
			if h != nil && !tt.noCgroups {
				if (got.Mode != containV1 && got.Mode != containV2) || got.MaxProcs != 100 || got.Reason != "" ||
					!strings.Contains(logs, `msg="containing jobs in cgroups" containment="`+got.Mode+`"`) {
					t.Fatalf("info %+v, log:\n%s", got, logs)
				}
				return
			}
			if got.Mode != containGroup || got.Reason == "" ||
				!strings.Contains(logs, `level=WARN msg="jobs are not contained in cgroups: falling back to process groups`) ||
				!strings.Contains(logs, "reason="+strconv.Quote(got.Reason)) {
				t.Fatalf("info %+v, log:\n%s", got, logs)
			}
		})
	}
}

// BenchmarkJobContainment is what a cgroup costs a job: "true" run over an
// open connection (start, wait, complete) and as "tentacle exec -- true",
// with process groups only, with cgroups as the agent makes them and, on
// cgroup v1, with cgroups made at each start (no spares: as before them),
// interleaved in the same run. Jobs come one at a time, each exec between
// two (about what a client running jobs in turn does); -burst runs the
// open-connection jobs back to back instead, in blocks of 20 per agent,
// faster than spares are made.
// Run: go test -run '^$' -bench JobContainment -benchtime 1x
func BenchmarkJobContainment(b *testing.B) {
	h := needCgroups(b)
	bin := buildTentacle(b)
	type variant struct {
		name        string
		agent       *testAgent
		conn        *clientConn
		open, execT []time.Duration
	}
	vs := []*variant{{name: "process groups", agent: startAgentLogging(b, io.Discard, func(c *config) { c.noCgroups = true })}}
	if h.v2 == "" {
		saved := cgroupSpares
		cgroupSpares = 0
		vs = append(vs, &variant{name: "cgroup v1 without spares", agent: startAgentLogging(b, io.Discard)})
		cgroupSpares = saved
		vs = append(vs, &variant{name: "cgroup v1 with spares", agent: startAgentLogging(b, io.Discard)})
	} else {
		vs = append(vs, &variant{name: containV2, agent: startAgentLogging(b, io.Discard)})
	}
	for _, v := range vs {
		v.conn = v.agent.dial(b)
	}
	rounds, block := 100, 1
	if *burst {
		rounds, block = 300, 20
	}
	for range b.N {
		for range rounds / block {
			for _, v := range vs {
				for range block {
					runTrue(b, v.conn, &v.open)
					if *burst {
						continue
					}
					start := time.Now()
					a := v.agent
					if out, err := exec.Command(bin, "exec", "-home", a.clientHome, "-pin", a.thumbprint, a.addr, "--", "true").CombinedOutput(); err != nil {
						b.Fatalf("exec: %v\n%s", err, out)
					}
					v.execT = append(v.execT, time.Since(start))
				}
			}
		}
		base := vs[0]
		for i, v := range vs {
			o := median(v.open)
			b.ReportMetric(float64(o.Microseconds())/1000, fmt.Sprintf("v%d-open-ms", i))
			msg := fmt.Sprintf("medians of %d, %s: true on an open connection %v (ratio %.2f to process groups)",
				rounds, v.name, o.Round(10*time.Microsecond), float64(o)/float64(median(base.open)))
			if len(v.execT) > 0 {
				e := median(v.execT)
				b.ReportMetric(float64(e.Microseconds())/1000, fmt.Sprintf("v%d-exec-ms", i))
				msg += fmt.Sprintf("; tentacle exec -- true %v (ratio %.2f)", e.Round(10*time.Microsecond), float64(e)/float64(median(base.execT)))
			}
			b.Log(msg)
		}
	}
}

// needSpares skips a test where the agent keeps no spare cgroups: where
// there are no cgroups, and on v2 (a process is cloned into its cgroup).
func needSpares(t testing.TB) *cgroupHost {
	t.Helper()
	h := needCgroups(t)
	if h.v2 != "" {
		t.Skip("spare cgroups are made on cgroup v1 only")
	}
	return h
}

// sparesOf lists the spare cgroups of process pid in h's hierarchy dir
// ("" for all of them).
func sparesOf(h *cgroupHost, dir string, pid int) []string {
	var out []string
	for _, p := range []string{h.pids, h.memory, h.freezer} {
		if p != "" && (dir == "" || dir == p) {
			m, _ := filepath.Glob(filepath.Join(p, spareCgroupPrefix+strconv.Itoa(pid)+".*"))
			out = append(out, m...)
		}
	}
	return out
}

// waitSpares waits until process pid has want spare cgroups in the pids
// hierarchy, each holding one thread of pid's and nothing else.
func waitSpares(t *testing.T, h *cgroupHost, pid, want int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d spare cgroups of process %d, each with one thread of it", want, pid), 20*time.Second, func() bool {
		got := sparesOf(h, h.pids, pid)
		return len(got) == want && !slices.ContainsFunc(got, func(d string) bool {
			b, _ := os.ReadFile(filepath.Join(d, "tasks"))
			tids := strings.Fields(string(b)) // a spare being made has none yet
			return len(tids) != 1 || !dirExists(fmt.Sprintf("/proc/%d/task/%s", pid, tids[0]))
		})
	})
}

// TestCgroupSpares (cgroup v1): a job starts in a spare cgroup renamed for
// it, with its limits exact (the thread it was forked from not counted);
// the spares are made again as they are taken, none is leaked by 200 quick
// jobs, an agent that stops removes its own, and one killed leaves spares
// that the next start removes.
func TestCgroupSpares(t *testing.T) {
	h := needSpares(t)
	self := os.Getpid()
	t.Run("limits are the job's", func(t *testing.T) {
		tests := []struct {
			name, script string
			procs        int
			outcome      string
			out          []string
		}{
			// The process alone: the thread it was forked from must not take
			// the one slot.
			{"one process", "echo ok", 1, outcomeSuccess, []string{"ok"}},
			// sh and two children reach a limit of 3: the third fork fails.
			// First the script waits until it is alone in its cgroup: the
			// agent's thread that forked it takes a slot until it has ended
			// (microseconds, longer on a busy machine).
			{"three processes", `n=2; while [ $n -gt 1 ]; do n=0; while read -r t; do n=$((n+1)); done <"` + h.pids + `/tentacle-$TENTACLE_TICKET/tasks"; done
s() { sleep 1000 >/dev/null 2>&1 & }; s; s; echo two; s; echo three`, 3, outcomeFailed, []string{"two"}},
			// Where it runs, from its first instruction: the cgroup bears the
			// job's name in every hierarchy, and nothing of the agent is in it.
			{"in its cgroup", `cat /proc/self/cgroup; cat "/sys/fs/cgroup/pids$(sed -n 's/^[0-9]*:pids://p' /proc/self/cgroup)/cgroup.procs"`, 64, outcomeSuccess, nil},
		}
		// Without spares (all taken) the cgroup is made at the start, and the
		// same must hold.
		for _, spares := range []int{cgroupSpares, 0} {
			for _, tt := range tests {
				t.Run(fmt.Sprintf("%s, %d spares", tt.name, spares), func(t *testing.T) {
					saved := cgroupSpares
					cgroupSpares = spares
					a := startAgent(t, func(c *config) { c.JobMaxProcs, c.JobMaxMemory, c.KillGrace = tt.procs, 256<<20, 300*time.Millisecond })
					cgroupSpares = saved
					waitSpares(t, h, self, spares)
					c := a.dial(t)
					ticket := startJob(t, c, map[string]any{"script": tt.script})
					st, logs := followJob(t, c, ticket)
					out := texts(logs, "stdout")
					if outcomeOf(st) != tt.outcome || (tt.out != nil && !slices.Equal(out, tt.out)) {
						t.Fatalf("outcome %s, stdout %q; want %s, %q; log %v", outcomeOf(st), out, tt.outcome, tt.out, logs)
					}
					if tt.out != nil {
						return
					}
					inside := 0
					for _, line := range out {
						if strings.HasSuffix(line, "/tentacle-"+ticket) {
							inside++
						}
						if line == strconv.Itoa(self) {
							t.Fatalf("the agent is in the job's cgroup: %q", out)
						}
					}
					if inside != len(slices.DeleteFunc([]string{h.pids, h.memory, h.freezer}, func(s string) bool { return s == "" })) {
						t.Fatalf("the job is not in tentacle-%s in every hierarchy:\n%s", ticket, strings.Join(out, "\n"))
					}
				})
			}
		}
	})
	t.Run("refilled, and nothing leaked by 200 jobs", func(t *testing.T) {
		a := startAgent(t)
		waitSpares(t, h, self, cgroupSpares)
		c := a.dial(t)
		made := spareSeq.Load()
		deadline := time.Now().Add(2 * time.Minute)
		for i := range 200 {
			if time.Now().After(deadline) {
				t.Fatalf("only %d jobs in 2 minutes", i)
			}
			ticket := startJob(t, c, map[string]any{"script": "true"})
			if st, logs := followJob(t, c, ticket); outcomeOf(st) != outcomeSuccess {
				t.Fatalf("job %d: %s %v", i, outcomeOf(st), logs)
			}
			if left := cgroupsOf(h, ticket); len(left) > 0 {
				t.Fatalf("job %d left its cgroups: %v", i, left)
			}
		}
		if n := spareSeq.Load() - made; n < int64(cgroupSpares) {
			t.Fatalf("%d spares made during 200 jobs: the jobs did not take them", n)
		}
		waitSpares(t, h, self, cgroupSpares)
		if all := sparesOf(h, "", self); len(all) != cgroupSpares*len(slices.DeleteFunc([]string{h.pids, h.freezer}, func(s string) bool { return s == "" })) {
			t.Fatalf("spares after 200 jobs: %v", all)
		}
	})
	t.Run("an agent that stops removes its spares", func(t *testing.T) {
		a := startAgent(t, func(c *config) { c.JobMaxMemory = 256 << 20 })
		waitSpares(t, h, self, cgroupSpares)
		a.stop()
		if left := sparesOf(h, "", self); len(left) > 0 {
			t.Fatalf("spares left after the agent stopped: %v", left)
		}
	})
	t.Run("a crash leaves spares that the next start removes", func(t *testing.T) {
		bin := buildTentacle(t)
		home := t.TempDir()
		p := startProcAgent(t, bin, home)
		pid := p.cmd.Process.Pid
		waitSpares(t, h, pid, cgroupSpares)
		p.cmd.Process.Kill()
		p.cmd.Wait()
		left := sparesOf(h, h.pids, pid)
		if len(left) == 0 {
			t.Fatal("the killed agent left no spares: nothing to clean up")
		}
		p2 := startProcAgent(t, bin, home)
		if still := sparesOf(h, "", pid); len(still) > 0 {
			t.Fatalf("spares of the killed agent still there once the next one listens: %v", still)
		}
		if want := fmt.Sprintf(`msg="removed spare job cgroups an earlier agent left" spares=%d`, len(left)); !strings.Contains(p2.logs.String(), want) {
			t.Fatalf("no %q in the log:\n%s", want, p2.logs)
		}
		waitSpares(t, h, p2.cmd.Process.Pid, cgroupSpares)
	})
}
