package main

// sys_linux_test.go: the orphan reaper, in this process and with the
// agent as PID 1 of its own pid namespace (unshare), as in a container.

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// strayZombies lists pid's zombie children other than keep.
func strayZombies(pid int, keep ...int) []int {
	var out []int
	for _, z := range zombieChildren(pid) {
		if !slices.Contains(keep, z) {
			out = append(out, z)
		}
	}
	return out
}

func TestReaperKeepsExitStatuses(t *testing.T) {
	stop := startReaper(slog.New(slog.NewTextHandler(io.Discard, nil)))
	t.Cleanup(stop)
	me := os.Getpid()

	// A job that leaves 50 children behind and exits 7.
	job := exec.Command("sh", "-c", `for i in $(seq 50); do sleep 1 >/dev/null 2>&1 & echo $!; done; exit 7`)
	var out syncBuffer // written by os/exec's copying goroutine
	job.Stdout = &out
	if err := startChild(job); err != nil {
		t.Fatal(err)
	}
	// A child some other code started directly, bypassing the registry: its
	// pidfd protects it.
	direct := exec.Command("sh", "-c", "exit 5")
	if err := direct.Start(); err != nil {
		t.Fatal(err)
	}
	jobPid, directPid := job.Process.Pid, direct.Process.Pid

	waitFor(t, "the job to exit (as a zombie nobody has waited for yet)", 10*time.Second, func() bool {
		p, ok := readProcStat(jobPid)
		return ok && p.state == 'Z' && strings.Count(out.String(), "\n") == 50
	})
	var orphans []int
	for _, f := range strings.Fields(out.String()) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			t.Fatal(err)
		}
		orphans = append(orphans, pid)
	}
	// The subreaper got them: they are this process's children now.
	adopted := 0
	for _, pid := range orphans {
		if p, ok := readProcStat(pid); ok && p.ppid == me {
			adopted++
		}
	}
	if adopted == 0 {
		t.Fatal("no orphan was handed to this process: PR_SET_CHILD_SUBREAPER did not take")
	}
	// They exit after a second; none may stay a zombie.
	waitFor(t, "the orphans to exit and be reaped", 20*time.Second, func() bool {
		for _, pid := range orphans {
			if p, ok := readProcStat(pid); ok && p.ppid == me {
				return false
			}
		}
		return len(strayZombies(me, jobPid, directPid)) == 0
	})
	// The job and the direct child were left for their owners, many sweeps
	// later, with their exit statuses.
	for _, pid := range []int{jobPid, directPid} {
		if p, ok := readProcStat(pid); !ok || p.state != 'Z' {
			t.Fatalf("pid %d was reaped by the reaper (state %c, found %v)", pid, p.state, ok)
		}
	}
	if err := waitChild(job); job.ProcessState.ExitCode() != 7 {
		t.Fatalf("job: %v, exit code %d, want 7", err, job.ProcessState.ExitCode())
	}
	if err := direct.Wait(); direct.ProcessState.ExitCode() != 5 {
		t.Fatalf("direct child: %v, exit code %d, want 5", err, direct.ProcessState.ExitCode())
	}
	reaper.mu.Lock()
	registered := reaper.pids[jobPid]
	reaper.mu.Unlock()
	if registered {
		t.Fatal("waitChild did not forget the job's pid")
	}
}

// TestReaperFastExits starts many children that exit at once, through
// startChild, while the reaper sweeps: every exit status must arrive.
func TestReaperFastExits(t *testing.T) {
	stop := startReaper(slog.New(slog.NewTextHandler(io.Discard, nil)))
	t.Cleanup(stop)
	errs := make(chan error, 40)
	for i := range 40 {
		go func() {
			cmd := exec.Command("sh", "-c", "exit "+strconv.Itoa(i%7))
			if err := startChild(cmd); err != nil {
				errs <- err
				return
			}
			waitChild(cmd)
			if got := cmd.ProcessState.ExitCode(); got != i%7 {
				errs <- &exec.ExitError{ProcessState: cmd.ProcessState}
				return
			}
			errs <- nil
		}()
	}
	for range 40 {
		if err := <-errs; err != nil {
			t.Fatalf("a child's exit status was lost: %v", err)
		}
	}
}

// TestAgentAsPID1 runs the built agent as PID 1 of a new pid namespace, the
// way a container runs its entrypoint, leaves 50 orphans in that
// namespace, and stops it with SIGTERM.
func TestAgentAsPID1(t *testing.T) {
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("unshare (util-linux) is not installed: cannot run the agent as PID 1 without a container")
	}
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		t.Skip("nsenter (util-linux) is not installed: cannot leave orphans in the agent's pid namespace")
	}
	probe := exec.Command(unshare, "--pid", "--fork", "--kill-child", "--mount-proc", "true")
	var probeOut bytes.Buffer
	probe.Stderr = &probeOut
	if err := startChild(probe); err == nil {
		err = waitChild(probe)
	}
	if err != nil {
		if strings.Contains(probeOut.String(), "Operation not permitted") {
			t.Skipf("unshare --pid is not permitted here (EPERM: not root, or a restricted container): %s", strings.TrimSpace(probeOut.String()))
		}
		t.Fatalf("unshare --pid --fork --mount-proc true: %v: %s", err, probeOut.String())
	}

	bin := buildOpsBinary(t)
	clientHome := t.TempDir()
	client, err := newIdentity(filepath.Join(clientHome, "tentacle.key"), filepath.Join(clientHome, "tentacle.crt"))
	if err != nil {
		t.Fatal(err)
	}
	env := baseEnv("TENTACLE_HOME="+t.TempDir(), "TENTACLE_LISTEN=127.0.0.1:0", "TENTACLE_TRUST="+client.thumbprint)
	// --kill-child: if the test fails and kills unshare, PID 1 goes too, and
	// with it the namespace.
	p := startEnvAgent(t, env, unshare, "--pid", "--fork", "--kill-child", "--mount-proc", bin, "run")
	if !strings.Contains(p.logs.String(), `msg="reaping orphaned processes" pid=1 `) {
		t.Fatalf("the agent does not say it reaps as PID 1:\n%s", p.logs)
	}
	kids := childPids(p.cmd.Process.Pid)
	if len(kids) != 1 {
		t.Fatalf("unshare has children %v, want the agent alone", kids)
	}
	agent := kids[0] // its pid out here
	// If the test fails before it stops the agent:
	t.Cleanup(func() { syscall.Kill(agent, syscall.SIGKILL) })

	cc, err := dialAgent(p.addr, client, p.thumbprint, "", 5*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if err := cc.call("ping", nil, nil); err != nil {
		t.Fatal(err)
	}

	// 50 orphans in the agent's namespace: a shell started there backgrounds
	// them and exits, so they pass to the namespace's PID 1, the agent.
	leave := exec.Command(nsenter, "-t", strconv.Itoa(agent), "-p", "-m",
		"sh", "-c", `for i in $(seq 50); do sleep 2 >/dev/null 2>&1 & done`)
	var leaveOut bytes.Buffer
	leave.Stdout, leave.Stderr = &leaveOut, &leaveOut
	if err := startChild(leave); err != nil {
		t.Fatal(err)
	}
	if err := waitChild(leave); err != nil {
		t.Fatalf("nsenter: %v: %s", err, leaveOut.String())
	}
	if n := len(childPids(agent)); n < 50 {
		t.Fatalf("the agent has %d children, want the 50 orphans", n)
	}
	waitFor(t, "the orphans to exit and be reaped by PID 1", 20*time.Second, func() bool {
		return len(childPids(agent)) == 0
	})
	if z := strayZombies(agent); len(z) != 0 {
		t.Fatalf("zombies left under PID 1: %v", z)
	}
	if err := cc.call("ping", nil, nil); err != nil {
		t.Fatalf("agent stopped serving: %v", err)
	}
	if _, ok := protocolMethods()["script.start"]; ok {
		pid1Job(t, cc, agent)
	} else {
		t.Log("no script.start in this build (the jobs issue is not merged): orphans left by nsenter only")
	}

	// docker stop sends SIGTERM to PID 1.
	start := time.Now()
	if err := syscall.Kill(agent, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		t.Fatalf("the agent as PID 1 did not stop within 15s of SIGTERM\n%s", p.logs)
	}
	if p.err != nil {
		t.Fatalf("the agent as PID 1 exited with %v, want status 0\n%s", p.err, p.logs)
	}
	if !strings.Contains(p.logs.String(), "msg=stopped") {
		t.Fatalf("no clean stop in the log:\n%s", p.logs)
	}
	t.Logf("stopped %v after SIGTERM", time.Since(start).Round(time.Millisecond))
}

// pid1Job runs a script job on the agent (PID 1, host pid agent) that
// leaves 50 children behind and exits 3: the job must read exit code 3 (the
// reaper did not steal it), and the orphans must not stay zombies.
func pid1Job(t *testing.T, cc *clientConn, agent int) {
	t.Helper()
	var started struct {
		Ticket string `json:"ticket"`
	}
	script := `for i in $(seq 50); do sleep 1 >/dev/null 2>&1 & done; exit 3`
	if err := cc.call("script.start", map[string]any{"script": script}, &started); err != nil {
		t.Fatal(err)
	}
	var st struct {
		State    string  `json:"state"`
		Outcome  *string `json:"outcome"`
		ExitCode *int    `json:"exit_code"`
	}
	waitFor(t, "the job to finish", 20*time.Second, func() bool {
		if err := cc.call("job.status", map[string]any{"ticket": started.Ticket, "wait_ms": 1000}, &st); err != nil {
			t.Fatal(err)
		}
		return st.State == "done"
	})
	if st.ExitCode == nil || *st.ExitCode != 3 || st.Outcome == nil || *st.Outcome != "failed" {
		t.Fatalf("job under PID 1: outcome %v, exit code %v; want failed, 3", st.Outcome, st.ExitCode)
	}
	waitFor(t, "the job's orphans to exit and be reaped by PID 1", 20*time.Second, func() bool {
		return len(childPids(agent)) == 0
	})
	if z := strayZombies(agent); len(z) != 0 {
		t.Fatalf("zombies left under PID 1 after the job: %v", z)
	}
}
