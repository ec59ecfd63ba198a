package main

// fleet_deploy_test.go: rolling deploys over several real agents (push
// first, batches, -max-failures, -rollback-on-failure, the summary naming
// each agent's current release), and Ctrl-C in fan-out mode.

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
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
	needSh(t)
	if runtime.GOOS == "windows" {
		t.Skip("no SIGINT to send on Windows")
	}
	bin := buildTentacle(t)
	fl := startFleet(t, 3, nil)
	var stdout, stderr syncBuffer
	cmd := exec.Command(bin, "exec", "-home", fl.home, "-parallel", "2", "all", "--", `sleep 1000 & echo "pid $!"; wait`)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
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
