package main

// sys_linux_test.go: the orphan reaper, in this process and with the
// agent as PID 1 of its own pid namespace (unshare), as in a container;
// starting and killing job cgroups; the agent where it may make none.

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
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

	bin := buildTentacle(t)
	client := newTestIdentity(t)
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
	if out, err := runChild(leave); err != nil {
		t.Fatalf("nsenter: %v: %s", err, out)
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
		pid1Contain(t, cc)
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

// scratchV2 makes a cgroup for a test under this process's own cgroup in
// the v2 hierarchy (on a v1 host, its unified mount, which holds no
// controllers but does cgroup.procs, cgroup.kill and CLONE_INTO_CGROUP),
// and returns a host that makes job cgroups in it.
func scratchV2(t testing.TB) *cgroupHost {
	t.Helper()
	if err := cgroupV2Support(); err != nil {
		t.Skip(err)
	}
	own, err := readOwnCgroups("/proc/self/cgroup")
	mounts, err2 := readCgroupMounts("/proc/self/mountinfo")
	if err != nil || err2 != nil || own[""] == "" {
		t.Skip("no cgroup v2 hierarchy here")
	}
	dir, err := cgroupDir(mounts, own[""], func(m cgroupMount) bool { return m.v2 })
	if err != nil {
		t.Skipf("no cgroup v2 hierarchy here: %v", err)
	}
	p := filepath.Join(dir, "tentacle.test."+strconv.Itoa(os.Getpid()))
	if err := os.Mkdir(p, 0o755); err != nil {
		t.Skipf("cannot make a cgroup in %q: %v", dir, err)
	}
	t.Cleanup(func() { os.Remove(p) })
	return &cgroupHost{v2: p, v2Kill: true, mounts: mounts}
}

// TestCgroupStartAndKill starts processes inside a job cgroup the ways the
// agent does (clone3 into it on v2, a thread moved in for the fork on v1):
// the process is inside before it runs anything, and so is what it starts,
// setsid or not. Then the cgroup is killed, each way there is, and removed.
func TestCgroupStartAndKill(t *testing.T) {
	needSh(t)
	type hostCase struct {
		name string
		host func(t *testing.T) *cgroupHost
	}
	v1 := func(freezer bool) func(t *testing.T) *cgroupHost {
		return func(t *testing.T) *cgroupHost {
			h, reason := sharedCgroups()
			if h == nil || h.v2 != "" {
				t.Skipf("no cgroup v1 for jobs here (%s)", cmp.Or(reason, "cgroup v2"))
			}
			c := *h
			if !freezer {
				c.freezer = ""
			} else if c.freezer == "" {
				t.Skip("no v1 freezer hierarchy here")
			}
			return &c
		}
	}
	v2 := func(kill bool) func(t *testing.T) *cgroupHost {
		return func(t *testing.T) *cgroupHost {
			h := scratchV2(t)
			if h.v2Kill = kill; kill && !isFile(filepath.Join(h.v2, "cgroup.kill")) {
				t.Skip("no cgroup.kill in this kernel")
			}
			return h
		}
	}
	for _, hc := range []hostCase{
		{"v1 freezer", v1(true)}, {"v1 SIGKILL rounds", v1(false)},
		{"v2 cgroup.kill", v2(true)}, {"v2 SIGKILL rounds", v2(false)},
	} {
		t.Run(hc.name, func(t *testing.T) {
			h := hc.host(t)
			ticket := newTicket()
			// First, what the process sees as its first act.
			g, err := h.create(ticket, 0, 0)
			if err != nil {
				t.Fatal(err)
			}
			cat := exec.Command("cat", "/proc/self/cgroup")
			var out syncBuffer
			cat.Stdout = &out
			setProcessGroup(cat)
			if err := startInCgroup(cat, g); err != nil {
				t.Fatal(err)
			}
			waitChild(cat)
			inside := 0
			for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
				f := strings.SplitN(line, ":", 3)
				if len(f) == 3 && strings.HasSuffix(f[2], "/"+g.name) {
					inside++
				}
			}
			if inside != len(g.dirs) {
				t.Fatalf("the process started inside %d hierarchies, want %s in all %d:\n%s", inside, g, len(g.dirs), out.String())
			}
			if notes, left := g.close(nil); left {
				t.Fatalf("close: %v", notes)
			}

			// Then a tree that forks on and off into sessions of its own.
			if g, err = h.create(ticket, 0, 0); err != nil {
				t.Fatal(err)
			}
			sh := exec.Command("sh", "-c", `setsid sh -c 'while :; do sleep 1000 & sleep 0.02; done' & while :; do sleep 1000 & sleep 0.02; done`)
			setProcessGroup(sh)
			if err := startInCgroup(sh, g); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- waitChild(sh) }()
			var pids []int
			waitFor(t, "the tree to grow", 10*time.Second, func() bool { pids, _ = g.live(nil); return len(pids) >= 20 })
			if slices.Contains(pids, os.Getpid()) {
				t.Fatal("the agent is in the job's cgroup")
			}
			if err := g.signal(true, nil); err != nil {
				t.Fatal(err)
			}
			<-done
			if notes, left := g.close(nil); left {
				t.Fatalf("close after the kill: %v", notes)
			}
			for _, d := range g.dirs {
				if dirExists(d) {
					t.Fatalf("%q is still there", d)
				}
			}
			waitGone(t, pids)
		})
	}
}

// TestAgentWithoutCgroups runs the built agent as an unprivileged user
// (nobody), who may not make cgroups: it says so at start and in info,
// falls back to process groups, and caps a job's processes with
// RLIMIT_NPROC, so a fork flood fails that job while the agent serves on.
func TestAgentWithoutCgroups(t *testing.T) {
	needSh(t)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil || os.Getuid() != 0 {
		t.Skip("needs root and setpriv (util-linux) to run the agent as another user")
	}
	const nobody = 65534
	bin := buildTentacle(t)
	home := filepath.Join(t.TempDir(), "home")
	// The test's temporary folders are 0700 root: let nobody through.
	for _, d := range []string{filepath.Dir(filepath.Dir(home)), filepath.Dir(home), filepath.Dir(bin)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(home, 0o700); err != nil || os.Chown(home, nobody, nobody) != nil {
		t.Fatal("cannot make a home for nobody")
	}
	client := newTestIdentity(t)
	env := baseEnv("TENTACLE_HOME="+home, "TENTACLE_LISTEN=127.0.0.1:0", "TENTACLE_TRUST="+client.thumbprint)
	p := startEnvAgent(t, env, setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", bin, "run", "-job-max-procs", "32", "-kill-grace", "500ms")
	t.Cleanup(func() { p.stop(15 * time.Second) })
	logs := p.logs.String()
	if !strings.Contains(logs, `level=WARN msg="jobs are not contained in cgroups`) || !strings.Contains(logs, "uid 65534 may not make cgroups in") ||
		!strings.Contains(logs, `process_limit="RLIMIT_NPROC of uid 65534"`) {
		t.Fatalf("no WARN line with the reason at start:\n%s", logs)
	}
	c, err := dialAgent(p.addr, client, p.thumbprint, "", 5*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var info struct {
		Containment struct{ Mode, Reason string } `json:"containment"`
	}
	if err := c.call("info", nil, &info); err != nil || info.Containment.Mode != containGroup || !strings.Contains(info.Containment.Reason, "uid 65534 may not make cgroups") {
		t.Fatalf("info: %+v, %v", info.Containment, err)
	}
	st, logEntries := runScript(t, c, map[string]any{"script": `while :; do sleep 1000 & done`, "timeout_s": 30})
	if outcomeOf(st) != outcomeFailed || !slices.ContainsFunc(texts(logEntries, "stderr"), func(s string) bool { return strings.Contains(s, "Cannot fork") }) {
		t.Fatalf("fork flood as nobody: %s %v", outcomeOf(st), logEntries)
	}
	if st, _ := runScript(t, c, map[string]any{"script": "echo fine"}); outcomeOf(st) != outcomeSuccess {
		t.Fatalf("a job after the flood: %s", outcomeOf(st))
	}
}

// pid1Contain runs a job on the agent as PID 1 (host pid agent) whose
// detached child (setsid) must go with its cancel: the agent reads and
// signals its cgroup in its own pid namespace.
func pid1Contain(t *testing.T, cc *clientConn) {
	t.Helper()
	h, _ := sharedCgroups()
	var info struct {
		Containment struct{ Mode string } `json:"containment"`
	}
	if err := cc.call("info", nil, &info); err != nil {
		t.Fatal(err)
	}
	if h == nil {
		t.Logf("no cgroups here: containment %q", info.Containment.Mode)
		return
	}
	if info.Containment.Mode != containV1 && info.Containment.Mode != containV2 {
		t.Fatalf("the agent as PID 1 contains jobs by %q", info.Containment.Mode)
	}
	ticket := startJob(t, cc, map[string]any{"script": detached("exec sleep 1000") + " & sleep 1000"})
	waitFor(t, "the detached child", 10*time.Second, func() bool { return len(texts(statusOf(t, cc, ticket).Logs, "stdout")) > 0 })
	if len(cgroupsOf(h, ticket)) == 0 {
		t.Fatal("the job has no cgroup")
	}
	if err := cc.call("job.cancel", map[string]any{"ticket": ticket}, nil); err != nil {
		t.Fatal(err)
	}
	if st, logs := followJob(t, cc, ticket); outcomeOf(st) != outcomeCancelled {
		t.Fatalf("cancel under PID 1: %s %v", outcomeOf(st), logs)
	}
	// The cgroup goes only once it is empty: the detached child is dead.
	if left := cgroupsOf(h, ticket); len(left) > 0 {
		t.Fatalf("cgroups left under PID 1: %v", left)
	}
}

// BenchmarkJobCgroupStart is what putting one process in a cgroup costs,
// each way: "true" started, waited for and its cgroup removed, without a
// cgroup; in a v1 cgroup made for it (a thread moved in for the fork: the
// kernel's migration waits for an RCU grace period when none is under way,
// so the runs are spaced); in a v1 spare made ahead (during the spacing)
// and renamed for it, as an agent does (jobs_cgroup_pool.go); and in a v2
// cgroup (clone3 into it: no migration).
// Run: go test -run '^$' -bench JobCgroupStart -benchtime 1x
func BenchmarkJobCgroupStart(b *testing.B) {
	v1, _ := sharedCgroups()
	if v1 != nil && v1.v2 != "" {
		v1 = nil
	}
	v2 := scratchV2(b)
	type way struct {
		name string
		make func() (*cgroup, error) // made before the clock starts; nil: made after
		host *cgroupHost
		took []time.Duration
	}
	ways := []*way{{name: "without a cgroup"}}
	if v1 != nil {
		ways = append(ways, &way{name: "cgroup v1 made at the start", host: v1},
			&way{name: "cgroup v1 spare", host: v1, make: func() (*cgroup, error) { return v1.makeSpare(0, 0) }})
	}
	ways = append(ways, &way{name: "cgroup v2", host: v2})
	one := func(w *way) time.Duration {
		var spare *cgroup
		var err error
		if w.make != nil {
			if spare, err = w.make(); err != nil {
				b.Fatal(err)
			}
		}
		time.Sleep(20 * time.Millisecond) // let the kernel's rcu_sync go idle, as between jobs
		start := time.Now()
		cmd := exec.Command("true")
		setProcessGroup(cmd)
		if w.host == nil {
			if err := startChild(cmd); err != nil {
				b.Fatal(err)
			}
			waitChild(cmd)
			return time.Since(start)
		}
		g := spare
		if g != nil {
			err = g.rename(newTicket())
		} else {
			g, err = w.host.create(newTicket(), 0, 0)
		}
		if err == nil {
			err = startInCgroup(cmd, g)
		}
		if err != nil {
			b.Fatal(err)
		}
		waitChild(cmd)
		if notes, left := g.close(nil); left {
			b.Fatal(notes)
		}
		return time.Since(start)
	}
	const rounds = 60
	for range b.N {
		for range rounds {
			for _, w := range ways {
				w.took = append(w.took, one(w))
			}
		}
		var msg []string
		for _, w := range ways {
			msg = append(msg, fmt.Sprintf("%s %v (%.2f)", w.name, median(w.took).Round(10*time.Microsecond), float64(median(w.took))/float64(median(ways[0].took))))
		}
		b.Logf("medians of %d, spaced 20ms, start+wait+remove of true (ratio to no cgroup): %s", rounds, strings.Join(msg, ", "))
	}
}

// TestUnwritableHome: a home the agent's user cannot write stops it at
// once with one line whose fix fits the cause: another owner (chown), its
// own owner without write permission (chmod), a read-only file system
// (a writable volume). Run as nobody, and in a mount namespace for the
// read-only case.
func TestUnwritableHome(t *testing.T) {
	setpriv, err := exec.LookPath("setpriv")
	unshare, uerr := exec.LookPath("unshare")
	if err != nil || uerr != nil || os.Getuid() != 0 {
		t.Skip("needs root, setpriv and unshare (util-linux)")
	}
	const nobody = 65534
	bin := buildTentacle(t)
	base := t.TempDir()
	for _, d := range []string{filepath.Dir(base), base, filepath.Dir(bin)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	rootsHome, ownHome, roMount := filepath.Join(base, "roots"), filepath.Join(base, "own"), filepath.Join(base, "ro")
	for _, d := range []string{rootsHome, ownHome, roMount} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(ownHome, nobody, nobody); err != nil || os.Chmod(ownHome, 0o555) != nil {
		t.Fatal("cannot make a read-only home for nobody")
	}
	asNobody := []string{setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", bin, "run", "-listen", "127.0.0.1:0", "-home"}
	for _, tc := range []struct {
		name string
		argv []string
		want string
	}{
		{"owned by root", append(asNobody, rootsHome), `home "` + rootsHome + `" is not writable by uid 65534 (gid 65534): give it to that user with "chown -R 65534:65534 ` + rootsHome + `"`},
		{"own, mode 0555", append(asNobody, ownHome), `home "` + ownHome + `" is not writable by uid 65534, its owner (mode 0555): fix it with "chmod u+w ` + ownHome + `"`},
		{"read-only file system", []string{unshare, "--mount", "sh", "-c", `mount -t tmpfs -o ro tmpfs "$1" && exec "$2" run -listen 127.0.0.1:0 -home "$1/home"`, "sh", roMount, bin},
			`home "` + roMount + `/home" is on a read-only file system: mount a writable volume there (docker run -v NAME:` + roMount + `/home)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(tc.argv[0], tc.argv[1:]...)
			cmd.Env = baseEnv()
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("exit %v, want 1:\n%s", err, out)
			}
			if lines := strings.Split(strings.TrimSpace(string(out)), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], "tentacle run: "+tc.want) {
				t.Fatalf("output:\n%s\nwant one line starting %q", out, "tentacle run: "+tc.want)
			}
		})
	}
}
