package main

// fleet_netns_test.go: a fleet across hosts with their own addresses: a
// network namespace per agent and one for the client, joined by a bridge
// in a namespace of its own (no address is added outside them), the agents
// and the client real processes of the built binary. One host is cut off
// mid-rollout: the rollout reports it, stops per -max-failures, rolls back
// what it deployed, and leaves nothing half-deployed.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

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
	id, err := newIdentity(filepath.Join(clientHome, "tentacle.key"), filepath.Join(clientHome, "tentacle.crt"))
	if err != nil {
		t.Fatal(err)
	}
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
