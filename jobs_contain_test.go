package main

// jobs_contain_test.go: jobs in cgroups (jobs_contain.go): a fork flood
// fails its job and never the agent, a memory limit holds, detached and
// double-forked processes go with cancel, timeout and the job's end (unless
// kept), and what it costs (leftovers of a lost job: TestCrashMarksRunningJobsLost).
// Where this process cannot make cgroups the tests that need them skip and
// say why.

import (
	"flag"
	"fmt"
	"io"
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
	modes := []struct {
		name      string
		noCgroups bool
	}{{"cgroup", false}, {"process group", true}}
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

// TestContainmentReported: the agent says at start how it contains jobs,
// with a WARN line and the reason where it is not cgroups, and info says
// the same.
func TestContainmentReported(t *testing.T) {
	h, _ := sharedCgroups()
	tests := []struct {
		name      string
		noCgroups bool
	}{{"as found here", false}, {"without cgroups", true}}
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
