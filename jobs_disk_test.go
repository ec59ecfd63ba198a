package main

// jobs_disk_test.go: jobs and the disk: a full disk (on a tmpfs the test
// mounts) neither tears the journal nor lets a job whose output was lost
// read success; the log cap; start-up that does not read kept logs; job
// files that are not opened through links.

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

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
	needSh(t)
	a := startAgent(t)
	c := a.dial(t)
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
