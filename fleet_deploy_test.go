package main

// fleet_deploy_test.go: rolling deploys over several real agents (push
// first, batches, -max-failures, -rollback-on-failure, the summary naming
// each agent's current release), and Ctrl-C in fan-out mode; then, each in
// a section of its own, a rollout across hosts in network namespaces with
// one host cut off, and the fan-out benchmark on 100 agent processes.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// breakablePkg is a package whose Deploy.sh fails on an agent where the
// app's shared folder holds a file "broken" (and sleeps first if it holds
// "slow", so that a deploy can be caught running).
func breakablePkg(t *testing.T, version string) string {
	t.Helper()
	deploy := `echo "deploying $TENTACLE_VERSION"
if [ -e "$TENTACLE_SHARED_DIR/slow" ]; then sleep 1000; fi
if [ -e "$TENTACLE_SHARED_DIR/broken" ]; then echo "config check failed" >&2; exit 1; fi
`
	return writeFileIn(t.TempDir(), "site-"+version+".tar.gz", gz(t, makeTar(t, []tEntry{file("Deploy.sh", deploy), file("VERSION", version+"\n")})))
}

// breakAgent makes app's deploys fail (or hang, with "slow") on agent a.
func breakAgent(t *testing.T, a *testAgent, app, how string) {
	t.Helper()
	dir := filepath.Join(a.home, "apps", app, "shared")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, how), nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// currents reads each agent's current release of app from its disk.
func currents(t *testing.T, fl *testFleet, app string) string {
	var cs []string
	for _, a := range fl.agents {
		cs = append(cs, current(t, a.home, app))
	}
	return strings.Join(cs, " ")
}

// An agent that deployed, then became unreachable before the rollback, is
// left on the new release: it is a failure, not "ok", and -json does not
// say it was rolled back.
func TestRollbackOnFailureUnreachable(t *testing.T) {
	needSh(t)
	fl := startFleet(t, 2, nil)
	v1 := breakablePkg(t, "1.0")
	if _, stderr, code := fl.cli("deploy", "all", "site", "1.0", v1); code != 0 {
		t.Fatalf("v1: %q", stderr)
	}
	// Deploy.sh says it is running, waits while "hold" is there, then
	// fails where "broken" is: on a2, held until a1 is gone.
	deploy := `touch "$TENTACLE_SHARED_DIR/running"
while [ -e "$TENTACLE_SHARED_DIR/hold" ]; do sleep 0.01; done
if [ -e "$TENTACLE_SHARED_DIR/broken" ]; then echo "config check failed" >&2; exit 1; fi
`
	v2 := writeFileIn(t.TempDir(), "site-2.0.tar.gz", gz(t, makeTar(t, []tEntry{file("Deploy.sh", deploy)})))
	shared := filepath.Join(fl.agents[1].home, "apps", "site", "shared")
	breakAgent(t, fl.agents[1], "site", "hold")
	breakAgent(t, fl.agents[1], "site", "broken")
	type res struct {
		stdout, stderr string
		code           int
	}
	done := make(chan res, 1)
	go func() {
		o, e, c := fl.cli("deploy", "-batch", "1", "-rollback-on-failure", "-json", "all", "site", "2.0", v2)
		done <- res{o, e, c}
	}()
	waitFor(t, "a2's deploy to run", 30*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(shared, "running"))
		return err == nil
	})
	fl.agents[0].stop() // a1 deployed 2.0 in the first batch; now it is gone
	os.Remove(filepath.Join(shared, "hold"))
	r := <-done
	if r.code != 1 || current(t, fl.agents[0].home, "site") != "2.0" || current(t, fl.agents[1].home, "site") != "1.0" {
		t.Fatalf("code %d, currents %s %s\nstdout %s\nstderr %q", r.code, current(t, fl.agents[0].home, "site"), current(t, fl.agents[1].home, "site"), r.stdout, r.stderr)
	}
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var ev map[string]any
		json.Unmarshal([]byte(l), &ev)
		if ev["agent"] != "a1" || ev["outcome"] == nil {
			continue
		}
		if ev["outcome"] != "failed" || ev["rolled_back"] != false || ev["release"] != "2.0" || !strings.Contains(ev["error"].(string), "rollback failed") {
			t.Fatalf("a1's end: %v", ev)
		}
		return
	}
	t.Fatalf("no end event for a1:\n%s", r.stdout)
}

func TestRollingDeploy(t *testing.T) {
	needSh(t)
	fl := startFleet(t, 4, nil)
	v1, v2 := breakablePkg(t, "1.0"), breakablePkg(t, "2.0")
	if _, stderr, code := fl.cli("deploy", "all", "site", "1.0", v1); code != 0 || currents(t, fl, "site") != "1.0 1.0 1.0 1.0" {
		t.Fatalf("v1: code %d, stderr %q", code, stderr)
	}
	breakAgent(t, fl.agents[1], "site", "broken")

	// One at a time, no failure allowed: a2 fails, a3 and a4 never start.
	stdout, stderr, code := fl.cli("deploy", "-batch", "1", "all", "site", "2.0", v2)
	if code != 1 || currents(t, fl, "site") != "2.0 1.0 1.0 1.0" {
		t.Fatalf("code %d, currents %s\nstderr %q", code, currents(t, fl, "site"), stderr)
	}
	for _, want := range []string{
		"a1  ok           current 2.0\n",
		"a2  failed       failed at Deploy.sh: exit code 1; current 1.0\n",
		"a3  skipped      not started: 1 agent failed, more than -max-failures 0; current 1.0\n",
		"a4  skipped      not started: 1 agent failed, more than -max-failures 0; current 1.0\n",
		"4 agents: 1 ok, 1 failed, 2 skipped (",
		"a2 | config check failed\n",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	if !strings.Contains(stdout, "a1 | deployed site 2.0 as release 2.0: current -> 2.0\n") || strings.Contains(stdout, "a3 |") {
		t.Errorf("stdout %q", stdout)
	}
	if _, _, code := fl.cli("rollback", "a1", "site", "1.0"); code != 0 {
		t.Fatal("rollback a1")
	}

	// With -rollback-on-failure the fleet ends where it started.
	stdout, stderr, code = fl.cli("deploy", "-batch", "1", "-rollback-on-failure", "all", "site", "2.0", v2)
	if code != 1 || currents(t, fl, "site") != "1.0 1.0 1.0 1.0" {
		t.Fatalf("code %d, currents %s\nstderr %q", code, currents(t, fl, "site"), stderr)
	}
	if !strings.Contains(stderr, "a1  ok           deployed 2.0_1, then rolled back: current 1.0\n") || !strings.Contains(stdout, "a1 | rolled back site: current -> 1.0 (was 2.0_1)\n") {
		t.Fatalf("stdout %q\nstderr %q", stdout, stderr)
	}

	// Batches of half, one failure allowed: the second batch goes on.
	_, stderr, code = fl.cli("deploy", "-batch", "50%", "-max-failures", "1", "all", "site", "2.0", v2)
	if code != 1 || currents(t, fl, "site") != "2.0_2 1.0 2.0 2.0" || !strings.Contains(stderr, "4 agents: 3 ok, 1 failed (") {
		t.Fatalf("code %d, currents %s\nstderr %q", code, currents(t, fl, "site"), stderr)
	}

	// -json: one end event per agent, with what is current.
	stdout, stderr, code = fl.cli("deploy", "-json", "-rollback-on-failure", "a1,a2", "site", "3.0", breakablePkg(t, "3.0"))
	if code != 1 || stderr != "" {
		t.Fatalf("code %d, stderr %q", code, stderr)
	}
	ends := map[string]map[string]any{}
	for _, l := range strings.Split(strings.TrimSpace(stdout), "\n") {
		var ev map[string]any
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		if _, ok := ev["outcome"]; ok {
			ends[ev["agent"].(string)] = ev
		}
	}
	if e := ends["a1"]; e["outcome"] != "ok" || e["release"] != "3.0" || e["current"] != "2.0_2" || e["previous"] != "2.0_2" || e["rolled_back"] != true {
		t.Fatalf("a1 %v", e)
	}
	if e := ends["a2"]; e["outcome"] != "failed" || e["release"] != nil || e["current"] != "1.0" || e["rolled_back"] != false {
		t.Fatalf("a2 %v", e)
	}

	// An agent that cannot take the package counts as a failure before any
	// batch starts.
	stranger := startAgent(t)
	fl.writeAgents(fl.readAgents() + "stranger " + stranger.addr + " " + stranger.thumbprint + "\n")
	_, stderr, code = fl.cli("deploy", "all", "site", "4.0", breakablePkg(t, "4.0"))
	if code != 1 || !strings.Contains(stderr, "stranger  refused") || !strings.Contains(stderr, "5 agents: 0 ok, 1 refused, 4 skipped (") || strings.Contains(currents(t, fl, "site"), "4.0") {
		t.Fatalf("code %d, currents %s\nstderr %q", code, currents(t, fl, "site"), stderr)
	}
}

func TestFanOutInterrupt(t *testing.T) {
	fl, cmd, stdout, stderr := startInterruptibleExec(t, 3, "-parallel", "2", "all", "--", `sleep 1000 & echo "pid $!"; wait`)
	waitFor(t, "two jobs' pids", 10*time.Second, func() bool { return strings.Count(stdout.String(), "pid ") == 2 })
	var pids []string
	for _, m := range regexp.MustCompile(`pid (\d+)`).FindAllStringSubmatch(stdout.String(), -1) {
		pids = append(pids, "pid "+m[1])
	}
	cmd.Process.Signal(os.Interrupt)
	err := cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code != 1 {
		t.Fatalf("exit %d (%v), stderr %q", code, err, stderr.String())
	}
	e := stderr.String()
	for _, want := range []string{
		"tentacle exec: cancelling the jobs running on 2 agents and starting no more (Ctrl-C again to stop waiting)",
		"a3  cancelled    not started (Ctrl-C)",
		"3 agents: 0 ok, 3 cancelled (",
	} {
		if !strings.Contains(e, want) {
			t.Errorf("stderr lacks %q:\n%s", want, e)
		}
	}
	waitGone(t, pidsIn(t, pids))
	for i := range fl.agents {
		var list struct {
			Jobs []jobListItem `json:"jobs"`
		}
		if err := fl.dial(i).call("job.list", nil, &list); err != nil || len(list.Jobs) != 0 {
			t.Fatalf("agent %d kept jobs %+v (%v)", i+1, list.Jobs, err)
		}
	}
}

// A fleet across hosts with their own addresses: a network namespace per
// agent and one for the client, joined by a bridge in a namespace of its
// own (no address is added outside them), the agents and the client real
// processes of the built binary. One host is cut off mid-rollout: the
// rollout reports it, stops per -max-failures, rolls back what it deployed,
// and leaves nothing half-deployed.

// netnsLab is a bridge namespace and a namespace per host, each host with
// one address on the bridge.
type netnsLab struct {
	t      *testing.T
	prefix string
	bridge string   // the bridge's namespace
	hosts  []string // the hosts' namespaces
}

// ip runs ip(8) and fails the test if it fails.
func (l *netnsLab) ip(args ...string) {
	l.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// newNetnsLab makes the bridge and n hosts with addresses 10.77.0.10+i, or
// skips the test where namespaces cannot be made.
func newNetnsLab(t *testing.T, n int) *netnsLab {
	if runtime.GOOS != "linux" {
		t.Skip("network namespaces are Linux's")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("no ip(8) to make network namespaces with")
	}
	l := &netnsLab{t: t, prefix: fmt.Sprintf("tfl%d", os.Getpid()%100000)}
	l.bridge = l.prefix + "br"
	if out, err := exec.Command("ip", "netns", "add", l.bridge).CombinedOutput(); err != nil {
		t.Skipf("ip netns add is not permitted here (%v: %s)", err, strings.TrimSpace(string(out)))
	}
	t.Cleanup(l.remove)
	l.ip("-n", l.bridge, "link", "add", "br0", "type", "bridge")
	l.ip("-n", l.bridge, "link", "set", "br0", "up")
	for i := range n {
		ns := fmt.Sprintf("%sh%d", l.prefix, i)
		l.ip("netns", "add", ns)
		l.hosts = append(l.hosts, ns)
		port := fmt.Sprintf("p%d", i)
		l.ip("-n", l.bridge, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
		l.ip("-n", l.bridge, "link", "set", port, "master", "br0", "up")
		l.ip("-n", ns, "addr", "add", l.addr(i)+"/24", "dev", "eth0")
		l.ip("-n", ns, "link", "set", "eth0", "up")
		l.ip("-n", ns, "link", "set", "lo", "up")
	}
	return l
}

func (l *netnsLab) addr(i int) string { return fmt.Sprintf("10.77.0.%d", 10+i) }

// link cuts host i off the bridge, or puts it back.
func (l *netnsLab) link(i int, up bool) {
	state := "down"
	if up {
		state = "up"
	}
	l.ip("-n", l.bridge, "link", "set", fmt.Sprintf("p%d", i), state)
}

// remove deletes the namespaces (their veths go with them).
func (l *netnsLab) remove() {
	for _, ns := range append(l.hosts, l.bridge) {
		exec.Command("ip", "netns", "del", ns).Run()
	}
}

// cmd is a command run inside host i's namespace.
func (l *netnsLab) cmd(ctx context.Context, i int, bin string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", l.hosts[i], bin}, args...)...)
}

// startAgent runs "tentacle run" in host i on home, trusting client, and
// returns its thumbprint once it listens; it is stopped by PID at the end.
func (l *netnsLab) startAgent(i int, bin, home string, client *identity) string {
	t := l.t
	t.Helper()
	out, err := exec.Command(bin, "show-thumbprint", "-home", home).Output()
	if err != nil {
		t.Fatal(err)
	}
	writeTrust(t, home, client.thumbprint+" lab-client\n")
	cmd := l.cmd(context.Background(), i, bin, "run", "-home", home, "-listen", l.addr(i)+":10933")
	logs := &syncBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	waitFor(t, "the agent in "+l.hosts[i]+" to listen", 20*time.Second, func() bool { return strings.Contains(logs.String(), "msg=listening") })
	return strings.TrimSpace(string(out))
}

func TestFleetAcrossHosts(t *testing.T) {
	needSh(t)
	if os.Geteuid() != 0 {
		t.Skip("making network namespaces needs root")
	}
	lab := newNetnsLab(t, 4) // host 0 is the client's
	bin := buildTentacle(t)
	clientHome := t.TempDir()
	id := newIdentityIn(t, clientHome)
	homes := make([]string, 4)
	var agents strings.Builder
	for i := 1; i <= 3; i++ {
		homes[i] = t.TempDir()
		tp := lab.startAgent(i, bin, homes[i], id)
		fmt.Fprintf(&agents, "h%d %s %s web\n", i, lab.addr(i), tp)
	}
	if err := os.WriteFile(agentsPath(clientHome), []byte(agents.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	// client runs "tentacle CMD -home <client home> ARGS" in host 0.
	client := func(timeout time.Duration, cmd string, args ...string) (stdout, stderr string, code int) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		c := lab.cmd(ctx, 0, bin, append(append(strings.Fields(cmd), "-home", clientHome), args...)...)
		var o, e strings.Builder
		c.Stdout, c.Stderr = &o, &e
		c.Run()
		return o.String(), e.String(), c.ProcessState.ExitCode()
	}
	stdout, stderr, code := client(30*time.Second, "exec", "@web", "--", "echo up")
	if code != 0 || strings.Count(stdout, "| up\n") != 3 {
		t.Fatalf("exec: code %d\nstdout %q\nstderr %q", code, stdout, stderr)
	}
	v1 := breakablePkg(t, "1.0")
	if _, stderr, code := client(60*time.Second, "deploy", "all", "site", "1.0", v1); code != 0 {
		t.Fatalf("deploy 1.0: code %d, stderr %q", code, stderr)
	}

	// h1's deploy of 2.0 waits for a gate; while it waits, h2 is cut off.
	deploy := `if [ -e "$TENTACLE_SHARED_DIR/hold" ]; then touch "$TENTACLE_SHARED_DIR/holding"; while [ -e "$TENTACLE_SHARED_DIR/hold" ]; do sleep 0.05; done; fi
echo "deployed $TENTACLE_VERSION"
`
	v2 := writeFileIn(t.TempDir(), "site-2.0.tar.gz", gz(t, makeTar(t, []tEntry{file("Deploy.sh", deploy)})))
	shared := filepath.Join(homes[1], "apps", "site", "shared")
	os.WriteFile(filepath.Join(shared, "hold"), nil, 0o644)
	type result struct {
		stdout, stderr string
		code           int
	}
	done := make(chan result)
	start := time.Now()
	go func() {
		o, e, c := client(90*time.Second, "deploy", "-batch", "1", "-rollback-on-failure", "-connect-timeout", "2s", "all", "site", "2.0", v2)
		done <- result{o, e, c}
	}()
	waitFor(t, "h1's deploy to hold", 30*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(shared, "holding"))
		return err == nil
	})
	lab.link(2, false)
	os.Remove(filepath.Join(shared, "hold"))
	r := <-done
	t.Logf("rollout with h2 cut off: %v\n%s", time.Since(start).Round(time.Millisecond), r.stderr)
	lab.link(2, true)
	if r.code != 1 {
		t.Fatalf("code %d\nstdout %q\nstderr %q", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{
		"h1  ok           deployed 2.0, then rolled back: current 1.0\n",
		"h2  unreachable  no connection within 2s; current unknown (it was 1.0 before)\n",
		"h3  skipped      not started: 1 agent failed, more than -max-failures 0; current 1.0\n",
		"3 agents: 1 ok, 1 unreachable, 1 skipped (",
	} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q", want)
		}
	}
	// Nothing half-deployed: every host is on 1.0, and h2 never started 2.0.
	for i := 1; i <= 3; i++ {
		if cur := current(t, homes[i], "site"); cur != "1.0" {
			t.Errorf("h%d: current %q", i, cur)
		}
	}
	if _, err := os.Stat(filepath.Join(homes[2], "apps", "site", "2.0")); err == nil {
		t.Error("h2 has a 2.0 release folder")
	}
	// Back on the bridge, h2 answers again.
	waitFor(t, "h2 to answer again", 30*time.Second, func() bool {
		_, _, code := client(10*time.Second, "agents status", "h2")
		return code == 0
	})
}

// "exec all -- true" on 100 agents in one client process, beside what a
// user would otherwise write: the same 100 single-mode exec processes
// started in parallel by a shell, in the same run, interleaved round by
// round; and the fan-out client's peak memory. Each agent is a process of
// its own, as deployed (one agent a machine). Run: go test -run '^$' -bench
// FleetExec -benchtime 1x

func BenchmarkFleetExec(b *testing.B) {
	needSh(b)
	const n, rounds = 100, 7
	bin := buildTentacle(b)
	home := b.TempDir()
	client, err := newIdentity(filepath.Join(home, "tentacle.key"), filepath.Join(home, "tentacle.crt"))
	if err != nil {
		b.Fatal(err)
	}
	var agents, shell strings.Builder
	var pids []int
	shell.WriteString("T=" + bin + "\nH=" + home + "\n")
	for i := range n {
		agentHome := b.TempDir()
		writeTrust(b, agentHome, client.thumbprint+" bench\n")
		a := startProcAgent(b, bin, agentHome)
		pids = append(pids, a.cmd.Process.Pid)
		fmt.Fprintf(&agents, "b%03d %s %s\n", i, a.addr, a.thumbprint)
		fmt.Fprintf(&shell, "\"$T\" exec -home \"$H\" -pin %s %s -- true &\n", a.thumbprint, a.addr)
	}
	shell.WriteString("wait\n")
	if err := os.WriteFile(agentsPath(home), []byte(agents.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	script := filepath.Join(home, "parallel.sh")
	if err := os.WriteFile(script, []byte(shell.String()), 0o755); err != nil {
		b.Fatal(err)
	}
	// timed runs cmd and returns how long it took, its peak memory, and
	// the CPU it and its children used.
	timed := func(cmd *exec.Cmd) (time.Duration, int64, time.Duration) {
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		start := time.Now()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		memory := peakMemory(cmd.Process.Pid)
		if err := cmd.Wait(); err != nil {
			b.Fatalf("%s: %v\n%s", cmd.Args, err, out.String())
		}
		return time.Since(start), memory(), cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	for range b.N {
		var fan, wide, sh, pings, fanCPU, shCPU, fanAgents, shAgents []time.Duration
		var peak int64
		timed(exec.Command(bin, "exec", "-home", home, "all", "--", "true")) // warm up
		timed(exec.Command("sh", script))
		for range rounds {
			before := agentsCPU(b, pids)
			d, kib, cpu := timed(exec.Command(bin, "exec", "-home", home, "all", "--", "true"))
			fan, fanCPU, fanAgents = append(fan, d), append(fanCPU, cpu), append(fanAgents, agentsCPU(b, pids)-before)
			peak = max(peak, kib)
			before = agentsCPU(b, pids)
			d, _, cpu = timed(exec.Command("sh", script))
			sh, shCPU, shAgents = append(sh, d), append(shCPU, cpu), append(shAgents, agentsCPU(b, pids)-before)
			d, _, _ = timed(exec.Command(bin, "call", "-home", home, "all", "ping"))
			pings = append(pings, d)
			d, _, _ = timed(exec.Command(bin, "exec", "-home", home, "-parallel", "100", "all", "--", "true"))
			wide = append(wide, d)
		}
		fm, sm := median(fan), median(sh)
		b.ReportMetric(fm.Seconds(), "fanout-s")
		b.ReportMetric(sm.Seconds(), "shell-s")
		b.ReportMetric(float64(fm)/float64(sm), "ratio")
		b.ReportMetric(float64(peak)/1024, "fanout-peak-MiB")
		b.ReportMetric(median(pings).Seconds(), "call-ping-s")
		b.ReportMetric(median(wide).Seconds(), "fanout-parallel100-s")
		b.ReportMetric(median(fanCPU).Seconds(), "fanout-client-cpu-s")
		b.ReportMetric(median(shCPU).Seconds(), "shell-clients-cpu-s")
		b.ReportMetric(median(fanAgents).Seconds(), "fanout-agents-cpu-s")
		b.ReportMetric(median(shAgents).Seconds(), "shell-agents-cpu-s")
		b.Logf("exec all -- true on %d agents: one fan-out process %v, %d single-mode processes from a shell %v, ratio %.2f (target ≤ 0.5, fan-out < 2s); fan-out peak RSS %.1f MiB (target < 100); with -parallel 100 %v; \"call all ping\" (connections alone, no job) %v; CPU of the client side: fan-out %v, the shell's %d processes %v; of the agents (jobs included): %v, %v; medians of %d rounds",
			n, fm.Round(time.Millisecond), n, sm.Round(time.Millisecond), float64(fm)/float64(sm), float64(peak)/1024, median(wide).Round(time.Millisecond), median(pings).Round(time.Millisecond),
			median(fanCPU).Round(time.Millisecond), n, median(shCPU).Round(time.Millisecond), median(fanAgents).Round(time.Millisecond), median(shAgents).Round(time.Millisecond), rounds)
	}
}

// agentsCPU is the CPU the agent processes and their reaped children
// (the jobs) have used so far, from /proc/PID/stat.
func agentsCPU(b *testing.B, pids []int) time.Duration {
	var ticks int64
	for _, pid := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			b.Fatal(err)
		}
		f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
		for _, i := range []int{11, 12, 13, 14} { // utime stime cutime cstime
			v, _ := strconv.ParseInt(f[i], 10, 64)
			ticks += v
		}
	}
	return time.Duration(ticks) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}
