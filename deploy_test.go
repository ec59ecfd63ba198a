package main

// deploy_test.go: deploys through a real agent over real TLS, with packages
// made in the tests: scripts and their variables, current on success and on
// every kind of failure, retention, rollback, queueing, the CLI, and the
// agent killed mid-deploy; then, each in a section of its own, the
// retention rule in detail, and deploys when the disk fills up or the agent
// is killed at any point.

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// scriptPkg is a package whose four scripts append their name (and the
// variables) to $TENTACLE_SHARED_DIR/trace; fail names scripts that exit 3.
func scriptPkg(t testing.TB, version string, fail ...string) []byte {
	t.Helper()
	var entries []tEntry
	for _, s := range []string{"PreDeploy.sh", "Deploy.sh", "PostDeploy.sh", "DeployFailed.sh"} {
		body := `echo "` + s + ` $TENTACLE_VERSION" >> "$TENTACLE_SHARED_DIR/trace"` + "\n"
		if s == "Deploy.sh" {
			body += `printf '%s|%s|%s|%s|%s|%s|%s\n' "$GREETING" "$TENTACLE_APP" "$TENTACLE_VERSION" "$TENTACLE_RELEASE_DIR" "$TENTACLE_PREVIOUS_RELEASE_DIR" "$TENTACLE_SHARED_DIR" "$(pwd)" > "$TENTACLE_SHARED_DIR/vars"` + "\n"
		}
		if slices.Contains(fail, s) {
			body += "echo " + s + " fails >&2; exit 3\n"
		}
		entries = append(entries, file(s, body))
	}
	entries = append(entries, file("VERSION", version+"\n"))
	return gz(t, makeTar(t, entries))
}

// push puts pkg in the agent's cache and returns its digest.
func push(t testing.TB, c *clientConn, pkg []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pkg")
	if err := os.WriteFile(p, pkg, 0o644); err != nil {
		t.Fatal(err)
	}
	sha, err := pushPackage(c, p, nil)
	if err != nil {
		t.Fatalf("push: %v", err)
	}
	return sha
}

// startDeploy starts a deploy and returns its ticket.
func startDeploy(t testing.TB, c *clientConn, params map[string]any) string {
	t.Helper()
	var r startReply
	if err := c.call("deploy.start", params, &r); err != nil {
		t.Fatalf("deploy.start: %v", err)
	}
	return r.Ticket
}

// deploy pushes pkg and deploys it as app version, to its end.
func deploy(t testing.TB, c *clientConn, app, version string, pkg []byte, extra map[string]any) (*statusReply, []logEntry) {
	t.Helper()
	params := map[string]any{"app": app, "version": version, "package": push(t, c, pkg)}
	for k, v := range extra {
		params[k] = v
	}
	return followJob(t, c, startDeploy(t, c, params))
}

// listing is deploy.list's answer for one app.
type listing struct {
	App      string        `json:"app"`
	Current  *string       `json:"current"`
	Releases []releaseInfo `json:"releases"`
}

func list(t testing.TB, c *clientConn, app string) listing {
	t.Helper()
	var l listing
	if err := c.call("deploy.list", map[string]any{"app": app}, &l); err != nil {
		t.Fatalf("deploy.list: %v", err)
	}
	return l
}

// current reads <home>/apps/<app>/current as the file system sees it.
func current(t testing.TB, home, app string) string {
	t.Helper()
	target, err := os.Readlink(filepath.Join(home, "apps", app, "current"))
	if err != nil {
		return ""
	}
	return target
}

func readTrace(t testing.TB, home, app string) []string {
	b, _ := os.ReadFile(filepath.Join(home, "apps", app, "shared", "trace"))
	return strings.Fields(strings.ReplaceAll(string(b), "\n", " "))
}

func TestDeployScriptsSuccess(t *testing.T) {
	a, c := startShAgent(t)
	// A value that would break out if it were pasted into script text.
	greeting := `it's "quoted" $HOME; exit 9`
	st, logs := deploy(t, c, "shop", "1.0", scriptPkg(t, "1.0"), map[string]any{"variables": map[string]string{"GREETING": greeting}})
	if outcomeOf(st) != outcomeSuccess {
		t.Fatalf("outcome %s: %v", outcomeOf(st), logs)
	}
	if got := readTrace(t, a.home, "shop"); !slices.Equal(got, []string{"PreDeploy.sh", "1.0", "Deploy.sh", "1.0", "PostDeploy.sh", "1.0"}) {
		t.Fatalf("scripts ran %q", got)
	}
	rel := filepath.Join(a.home, "apps", "shop", "1.0")
	vars, _ := os.ReadFile(filepath.Join(a.home, "apps", "shop", "shared", "vars"))
	want := strings.Join([]string{greeting, "shop", "1.0", rel, "", filepath.Join(a.home, "apps", "shop", "shared"), rel}, "|") + "\n"
	if string(vars) != want {
		t.Fatalf("variables seen by Deploy.sh:\n got %q\nwant %q", vars, want)
	}
	if current(t, a.home, "shop") != "1.0" {
		t.Fatalf("current = %q", current(t, a.home, "shop"))
	}
	agent := strings.Join(texts(logs, "agent"), "\n")
	for _, w := range []string{"extracting package", "running PreDeploy.sh", "running Deploy.sh", "current -> 1.0", "running PostDeploy.sh"} {
		if !strings.Contains(agent, w) {
			t.Errorf("log lacks %q:\n%s", w, agent)
		}
	}
	// The audit log has the variables' names, never their values.
	audit, _ := os.ReadFile(a.cfg.auditPath())
	if !strings.Contains(string(audit), `"method":"deploy.start"`) || !strings.Contains(string(audit), `"variables":["GREETING"]`) || strings.Contains(string(audit), "quoted") {
		t.Fatalf("audit log: %s", audit)
	}
	// The second deploy sees the first as its previous release.
	st, logs = deploy(t, c, "shop", "1.1", scriptPkg(t, "1.1"), nil)
	if outcomeOf(st) != outcomeSuccess || current(t, a.home, "shop") != "1.1" {
		t.Fatalf("1.1: %s, current %q: %v", outcomeOf(st), current(t, a.home, "shop"), logs)
	}
	vars, _ = os.ReadFile(filepath.Join(a.home, "apps", "shop", "shared", "vars"))
	if !strings.Contains(string(vars), "|"+rel+"|") {
		t.Fatalf("TENTACLE_PREVIOUS_RELEASE_DIR not the 1.0 release: %q", vars)
	}
	// The same version again gets its own folder.
	deploy(t, c, "shop", "1.1", scriptPkg(t, "1.1"), nil)
	l := list(t, c, "shop")
	var names []string
	for _, r := range l.Releases {
		names = append(names, r.Release+":"+r.Outcome)
	}
	if !slices.Equal(names, []string{"1.0:success", "1.1:success", "1.1_1:success"}) || *l.Current != "1.1_1" || !l.Releases[2].Current {
		t.Fatalf("deploy.list = %+v", l)
	}
}

// TestDeployFailureKeepsCurrent: each kind of failure leaves current at the
// previous release, runs DeployFailed.sh when the package was extracted, and
// records the release's outcome.
func TestDeployFailureKeepsCurrent(t *testing.T) {
	needSh(t)
	slow := gz(t, makeTar(t, []tEntry{
		// The pid file is the test's sign that Deploy.sh runs: its trace
		// line is written first, so a cancel then cannot beat it.
		file("Deploy.sh", `echo Deploy.sh >> "$TENTACLE_SHARED_DIR/trace"; echo "$$" > "$TENTACLE_SHARED_DIR/pid"; sleep 30`),
		file("DeployFailed.sh", `echo "DeployFailed.sh $TENTACLE_VERSION" >> "$TENTACLE_SHARED_DIR/trace"`),
	}))
	tests := []struct {
		name    string
		pkg     []byte
		params  map[string]any
		cancel  bool
		outcome string
		phase   string
		trace   []string // after the first deploy's lines
	}{
		{"PreDeploy fails", scriptPkg(t, "2", "PreDeploy.sh"), nil, false, outcomeFailed, "PreDeploy.sh",
			[]string{"PreDeploy.sh", "2", "DeployFailed.sh", "2"}},
		{"Deploy fails", scriptPkg(t, "2", "Deploy.sh"), nil, false, outcomeFailed, "Deploy.sh",
			[]string{"PreDeploy.sh", "2", "Deploy.sh", "2", "DeployFailed.sh", "2"}},
		{"PostDeploy fails after the switch", scriptPkg(t, "2", "PostDeploy.sh"), nil, false, outcomeFailed, "PostDeploy.sh",
			[]string{"PreDeploy.sh", "2", "Deploy.sh", "2", "PostDeploy.sh", "2", "DeployFailed.sh", "2"}},
		{"refused entry", gz(t, makeTar(t, []tEntry{file("DeployFailed.sh", "echo no"), file("../escape", "x")})), nil, false, outcomeFailed, "extract", nil},
		{"too large", gz(t, makeTar(t, []tEntry{file("big", strings.Repeat("x", 2<<20))})), nil, false, outcomeFailed, "extract", nil},
		{"corrupt", []byte("not a package at all"), nil, false, outcomeFailed, "extract", nil},
		{"timeout", slow, map[string]any{"timeout_s": 1.5}, false, outcomeTimedOut, "Deploy.sh", []string{"Deploy.sh", "DeployFailed.sh", "2"}},
		{"cancel", slow, nil, true, outcomeCancelled, "Deploy.sh", []string{"Deploy.sh", "DeployFailed.sh", "2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := startAgent(t, func(c *config) { c.ExtractMaxSize = 1 << 20; c.KillGrace = 500 * time.Millisecond })
			c := a.dial(t)
			if st, logs := deploy(t, c, "app", "1", scriptPkg(t, "1"), nil); outcomeOf(st) != outcomeSuccess {
				t.Fatalf("first deploy: %v", logs)
			}
			params := map[string]any{"app": "app", "version": "2", "package": push(t, c, tt.pkg)}
			for k, v := range tt.params {
				params[k] = v
			}
			ticket := startDeploy(t, c, params)
			if tt.cancel {
				waitFor(t, "Deploy.sh to start", 10*time.Second, func() bool {
					_, err := os.Stat(filepath.Join(a.home, "apps", "app", "shared", "pid"))
					return err == nil
				})
				if err := c.call("job.cancel", map[string]any{"ticket": ticket}, nil); err != nil {
					t.Fatal(err)
				}
			}
			st, logs := followJob(t, c, ticket)
			if outcomeOf(st) != tt.outcome {
				t.Fatalf("outcome %s, want %s: %v", outcomeOf(st), tt.outcome, logs)
			}
			if cur := current(t, a.home, "app"); cur != "1" {
				t.Fatalf("current = %q, want 1", cur)
			}
			if got := readTrace(t, a.home, "app")[6:]; !slices.Equal(got, tt.trace) {
				t.Fatalf("scripts after the first deploy: %q, want %q", got, tt.trace)
			}
			if !strings.Contains(string(st.Result), `"phase":"`+tt.phase+`"`) || !strings.Contains(string(st.Result), `"current":"1"`) {
				t.Fatalf("result = %s, want phase %s", st.Result, tt.phase)
			}
			l := list(t, c, "app")
			if len(l.Releases) != 2 || l.Releases[1].Outcome != tt.outcome || *l.Current != "1" {
				t.Fatalf("deploy.list = %+v", l)
			}
			if _, err := os.Stat(filepath.Join(a.home, "apps", "escape")); err == nil {
				t.Fatal("an entry escaped the release")
			}
			// Still serving, and a good deploy goes through.
			if st, logs := deploy(t, c, "app", "3", scriptPkg(t, "3"), nil); outcomeOf(st) != outcomeSuccess || current(t, a.home, "app") != "3" {
				t.Fatalf("deploy after the failure: %s %v", outcomeOf(st), logs)
			}
		})
	}
}

func TestDeployExecBit(t *testing.T) {
	_, c := startShAgent(t)
	pkg := gz(t, makeTar(t, []tEntry{
		{name: "bin/tool", body: "#!/bin/sh\necho tool ran\n", mode: 0o755},
		file("Deploy.sh", "./bin/tool"),
	}))
	st, logs := deploy(t, c, "tools", "1", pkg, nil)
	if outcomeOf(st) != outcomeSuccess || !slices.Contains(texts(logs, "stdout"), "tool ran") {
		t.Fatalf("%s: %v", outcomeOf(st), logs)
	}
	// The same from a zip.
	pkg = makeZip(t, []tEntry{{name: "bin/tool", body: "#!/bin/sh\necho zip tool ran\n", mode: 0o755}, file("Deploy.sh", "./bin/tool")})
	st, logs = deploy(t, c, "tools", "2", pkg, nil)
	if outcomeOf(st) != outcomeSuccess || !slices.Contains(texts(logs, "stdout"), "zip tool ran") {
		t.Fatalf("zip: %s: %v", outcomeOf(st), logs)
	}
}

func TestDeployRetention(t *testing.T) {
	a, c := startShAgent(t, func(c *config) { c.PackageGrace = 0 })
	var shas []string
	for _, v := range []string{"1", "2", "3", "4"} {
		pkg := scriptPkg(t, v)
		shas = append(shas, push(t, c, pkg))
		st, logs := deploy(t, c, "web", v, pkg, map[string]any{"retain": 2})
		if outcomeOf(st) != outcomeSuccess {
			t.Fatalf("%s: %v", v, logs)
		}
	}
	l := list(t, c, "web")
	if len(l.Releases) != 2 || l.Releases[0].Release != "3" || l.Releases[1].Release != "4" {
		t.Fatalf("kept %+v, want 3 and 4", l.Releases)
	}
	for i, sha := range shas {
		var ps struct {
			Present bool `json:"present"`
		}
		if err := c.call("package.stat", map[string]any{"sha256": sha}, &ps); err != nil {
			t.Fatal(err)
		}
		if ps.Present != (i >= 2) {
			t.Errorf("package of release %d present = %v", i+1, ps.Present)
		}
		_, err := os.Stat(filepath.Join(a.home, "apps", "web", string(rune('1'+i))))
		if (err == nil) != (i >= 2) {
			t.Errorf("folder of release %d: %v", i+1, err)
		}
	}
	if _, err := os.Stat(filepath.Join(a.home, "apps", "web", "shared", "trace")); err != nil {
		t.Fatalf("shared was touched: %v", err)
	}
	// With retain 1 and a failed deploy, current (an older release) stays.
	st, _ := deploy(t, c, "web", "5", scriptPkg(t, "5", "Deploy.sh"), map[string]any{"retain": 1})
	l = list(t, c, "web")
	if outcomeOf(st) != outcomeFailed || len(l.Releases) != 2 || l.Releases[0].Release != "4" || !l.Releases[0].Current || l.Releases[1].Outcome != outcomeFailed {
		t.Fatalf("after a failed deploy with retain 1: %+v", l)
	}
}

func TestDeployRollback(t *testing.T) {
	a, c := startShAgent(t)
	deploy(t, c, "api", "1", scriptPkg(t, "1"), nil)
	deploy(t, c, "api", "2", scriptPkg(t, "2"), nil)
	deploy(t, c, "api", "3", scriptPkg(t, "3", "Deploy.sh"), nil) // failed
	deploy(t, c, "api", "4", scriptPkg(t, "4"), nil)
	trace := len(readTrace(t, a.home, "api"))
	tests := []struct {
		name, to, want, kind, previous string
	}{
		{"default: the newest success before current", "", "2", "", "4"},
		{"again skips nothing newer", "", "1", "", "2"},
		{"nothing earlier", "", "", kindNotFound, ""},
		{"forward to a named release", "4", "4", "", "1"},
		{"a failed release", "3", "", kindConflict, ""},
		{"a missing release", "9", "", kindNotFound, ""},
		{"a bad name", "../1", "", kindNotFound, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			params := map[string]any{"app": "api"}
			if tt.to != "" {
				params["to"] = tt.to
			}
			var r struct {
				Current  string `json:"current"`
				Previous string `json:"previous"`
			}
			before := current(t, a.home, "api")
			err := c.call("deploy.rollback", params, &r)
			if rpcKind(err) != tt.kind {
				t.Fatalf("err = %v, want kind %q", err, tt.kind)
			}
			if err != nil {
				if current(t, a.home, "api") != before {
					t.Fatal("current moved on a refused rollback")
				}
				return
			}
			if r.Current != tt.want || r.Previous != tt.previous || current(t, a.home, "api") != tt.want {
				t.Fatalf("rollback = %+v, current %q; want %s (was %s)", r, current(t, a.home, "api"), tt.want, tt.previous)
			}
		})
	}
	if len(readTrace(t, a.home, "api")) != trace {
		t.Fatal("rollback ran a script")
	}
	if err := c.call("deploy.rollback", map[string]any{"app": "nope"}, nil); rpcKind(err) != kindNotFound {
		t.Fatalf("rollback of an unknown app: %v", err)
	}
}

func TestDeployBadParams(t *testing.T) {
	a := startAgent(t)
	c := a.dial(t)
	sha := push(t, c, scriptPkg(t, "1"))
	tests := []struct {
		name   string
		params map[string]any
		kind   string
		msg    string
	}{
		{"no app", map[string]any{"version": "1", "package": sha}, kindInvalidParams, `"app"`},
		{"bad app", map[string]any{"app": "../x", "version": "1", "package": sha}, kindInvalidParams, `"../x"`},
		{"dot app", map[string]any{"app": ".hidden", "version": "1", "package": sha}, kindInvalidParams, "starting"},
		{"long version", map[string]any{"app": "a", "version": strings.Repeat("v", 65), "package": sha}, kindInvalidParams, "64"},
		{"reserved version", map[string]any{"app": "a", "version": "current", "package": sha}, kindInvalidParams, "reserved"},
		{"bad variable", map[string]any{"app": "a", "version": "1", "package": sha, "variables": map[string]string{"1X": "y"}}, kindInvalidParams, `"1X"`},
		{"agent variable", map[string]any{"app": "a", "version": "1", "package": sha, "variables": map[string]string{"TENTACLE_APP": "y"}}, kindInvalidParams, "TENTACLE_"},
		{"unknown package", map[string]any{"app": "a", "version": "1", "package": strings.Repeat("ab", 32)}, kindNotFound, "push it first"},
		{"bad package", map[string]any{"app": "a", "version": "1", "package": "xyz"}, kindInvalidParams, "SHA-256"},
		{"bad format", map[string]any{"app": "a", "version": "1", "package": sha, "format": "rar"}, kindInvalidParams, `"rar"`},
		{"retain 0", map[string]any{"app": "a", "version": "1", "package": sha, "retain": 0}, kindInvalidParams, "retain"},
		{"bad shell", map[string]any{"app": "a", "version": "1", "package": sha, "shell": "fish-nope"}, kindInvalidParams, "shell"},
		{"negative timeout", map[string]any{"app": "a", "version": "1", "package": sha, "timeout_s": -1}, kindInvalidParams, "timeout_s"},
		{"unknown field", map[string]any{"app": "a", "version": "1", "package": sha, "env": map[string]string{}}, kindInvalidParams, `"env"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := c.call("deploy.start", tt.params, nil)
			if rpcKind(err) != tt.kind || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("err = %v, want %s naming %s", err, tt.kind, tt.msg)
			}
		})
	}
	if err := c.call("deploy.list", map[string]any{"app": "nope"}, nil); rpcKind(err) != kindNotFound {
		t.Fatalf("deploy.list of an unknown app: %v", err)
	}
	var apps struct {
		Apps []appInfo `json:"apps"`
	}
	if err := c.call("deploy.list", nil, &apps); err != nil || len(apps.Apps) != 0 {
		t.Fatalf("deploy.list = %+v, %v (nothing was deployed)", apps, err)
	}
}

// TestDeployQueueAndParallel: a second deploy of one app waits for the
// first; a deploy of another app runs meanwhile.
func TestDeployQueueAndParallel(t *testing.T) {
	a, c := startShAgent(t)
	gate := filepath.Join(t.TempDir(), "go")
	blocking := gz(t, makeTar(t, []tEntry{file("Deploy.sh",
		`echo "start $TENTACLE_APP $TENTACLE_VERSION" >> "$GATE.log"; while [ ! -e "$GATE" ]; do sleep 0.02; done; echo "end $TENTACLE_APP $TENTACLE_VERSION" >> "$GATE.log"`)}))
	sha := push(t, c, blocking)
	vars := map[string]string{"GATE": gate}
	t1 := startDeploy(t, c, map[string]any{"app": "one", "version": "1", "package": sha, "variables": vars})
	waitFor(t, "one 1 to start", 10*time.Second, func() bool { b, _ := os.ReadFile(gate + ".log"); return strings.Contains(string(b), "start one 1") })
	t2 := startDeploy(t, c, map[string]any{"app": "one", "version": "2", "package": sha, "variables": vars})
	t3 := startDeploy(t, c, map[string]any{"app": "two", "version": "1", "package": sha, "variables": vars})
	waitFor(t, "two 1 to start beside one 1", 10*time.Second, func() bool { b, _ := os.ReadFile(gate + ".log"); return strings.Contains(string(b), "start two 1") })
	if st := statusOf(t, c, t2); st.State != stateQueued {
		t.Fatalf("second deploy of one app is %s, want queued", st.State)
	}
	os.WriteFile(gate, nil, 0o644)
	for _, tk := range []string{t1, t2, t3} {
		if st, logs := followJob(t, c, tk); outcomeOf(st) != outcomeSuccess {
			t.Fatalf("%s: %v", tk, logs)
		}
	}
	b, _ := os.ReadFile(gate + ".log")
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	i1, i2 := slices.Index(lines, "end one 1"), slices.Index(lines, "start one 2")
	if i1 < 0 || i2 < i1 {
		t.Fatalf("one 2 started before one 1 ended: %q", lines)
	}
	if current(t, a.home, "one") != "2" || current(t, a.home, "two") != "1" {
		t.Fatal("wrong current after the queue")
	}
}

func TestDeployCLI(t *testing.T) {
	needSh(t)
	a := startAgent(t)
	pkgFile := filepath.Join(t.TempDir(), "shop.tar.gz")
	os.WriteFile(pkgFile, scriptPkg(t, "1"), 0o644)
	out, errOut, code := a.cli("deploy", "-var", "GREETING=hi there", a.addr, "shop", "1.0", pkgFile)
	if code != 0 || !strings.Contains(out, "deployed shop 1.0 as release 1.0: current -> 1.0") {
		t.Fatalf("deploy: code %d\n%s\n%s", code, out, errOut)
	}
	if !strings.Contains(errOut, "tentacle: running Deploy.sh") {
		t.Fatalf("log not streamed: %s", errOut)
	}
	bad := filepath.Join(t.TempDir(), "bad.tar.gz")
	os.WriteFile(bad, scriptPkg(t, "2", "Deploy.sh"), 0o644)
	out, errOut, code = a.cli("deploy", a.addr, "shop", "2.0", bad)
	if code != 3 && code != 1 || !strings.Contains(errOut, "failed at Deploy.sh") || !strings.Contains(errOut, "current is 1.0") {
		t.Fatalf("failed deploy: code %d\n%s\n%s", code, out, errOut)
	}
	os.WriteFile(pkgFile, scriptPkg(t, "3"), 0o644)
	if _, errOut, code = a.cli("deploy", a.addr, "shop", "3.0", pkgFile); code != 0 {
		t.Fatalf("deploy 3.0: %s", errOut)
	}
	out, _, code = a.cli("releases", a.addr, "shop")
	if code != 0 || !strings.Contains(out, "*  3.0") || !strings.Contains(out, "2.0      2.0") || !strings.Contains(out, "failed") {
		t.Fatalf("releases:\n%s", out)
	}
	out, _, code = a.cli("releases", a.addr)
	if code != 0 || !strings.Contains(out, "shop  3.0") {
		t.Fatalf("releases (apps):\n%s", out)
	}
	out, errOut, code = a.cli("rollback", a.addr, "shop")
	if code != 0 || strings.TrimSpace(out) != "shop: current -> 1.0 (was 3.0)" {
		t.Fatalf("rollback: %d %q %q", code, out, errOut)
	}
	_, errOut, code = a.cli("rollback", a.addr, "shop", "2.0")
	if code != 1 || !strings.Contains(errOut, "did not deploy successfully") {
		t.Fatalf("rollback to failed: %d %q", code, errOut)
	}
	for _, args := range [][]string{
		{"deploy", a.addr, "shop", "1"},
		{"deploy", "-retain", "0", a.addr, "shop", "1", pkgFile},
		{"deploy", "-var", "1=2", a.addr, "shop", "1", pkgFile},
		{"deploy", a.addr, "../shop", "1", pkgFile},
		{"releases"},
		{"rollback", a.addr},
	} {
		if _, errOut, code := a.cli(args[0], args[1:]...); code != 2 || errOut == "" {
			t.Errorf("%q: code %d, %s", args, code, errOut)
		}
	}
	if _, errOut, code := a.cli("deploy", a.addr, "shop", "4", filepath.Join(t.TempDir(), "missing")); code == 0 || !strings.Contains(errOut, "missing") {
		t.Fatalf("missing package file: %d %s", code, errOut)
	}
}

// TestDeployCLIReportsCause: a deploy that fails before anything is made
// (here: a damaged release record) still tells the user where, why, and
// what current really is.
func TestDeployCLIReportsCause(t *testing.T) {
	needSh(t)
	a := startAgent(t)
	pkgFile := filepath.Join(t.TempDir(), "shop.tar.gz")
	os.WriteFile(pkgFile, scriptPkg(t, "1"), 0o644)
	if _, errOut, code := a.cli("deploy", a.addr, "shop", "1", pkgFile); code != 0 {
		t.Fatalf("deploy 1: %s", errOut)
	}
	meta := filepath.Join(a.home, "apps", "shop", ".releases.json")
	os.WriteFile(meta, []byte("{damaged"), 0o644)
	_, errOut, code := a.cli("deploy", a.addr, "shop", "2", pkgFile)
	want := "tentacle deploy: shop 2 failed at prepare: " + strconv.Quote(meta) + " is damaged: "
	if code != 1 || !strings.Contains(errOut, want) || !strings.HasSuffix(errOut, "; current is 1\n") {
		t.Fatalf("code %d, stderr:\n%s\nwant %q … \"; current is 1\"", code, errOut, want)
	}
}

// TestDeployAgentKilled kills the agent (SIGKILL) mid-extraction, mid-script
// and after the switch (in PostDeploy.sh); after a restart current is the
// previous, complete release and the half-made one reads lost.
func TestDeployAgentKilled(t *testing.T) {
	needSh(t)
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildTentacle(t)
	// Many small files so that extraction takes a while.
	var many []tEntry
	for i := range 20000 {
		many = append(many, file("data/"+strings.Repeat("d", i%7+1)+"/f"+strconv.Itoa(i), strings.Repeat("x", 2000)))
	}
	hang := func(script string) []byte {
		return gz(t, makeTar(t, []tEntry{file(script, `echo "$$" > "$TENTACLE_SHARED_DIR/pid.tmp" && mv "$TENTACLE_SHARED_DIR/pid.tmp" "$TENTACLE_SHARED_DIR/pid"; exec sleep 60`)}))
	}
	tests := []struct {
		name  string
		pkg   []byte
		ready func(home string) bool
	}{
		{"mid-extraction", gz(t, makeTar(t, many)), func(home string) bool {
			des, _ := os.ReadDir(filepath.Join(home, "apps", "app", "2", "data"))
			return len(des) > 0
		}},
		{"mid-script", hang("Deploy.sh"), nil},
		{"after the switch", hang("PostDeploy.sh"), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			home := t.TempDir()
			client, clientHome := trustedClient(t, home, "test-client")
			p := startProcAgent(t, bin, home)
			c := p.dial(t, client)
			if st, logs := deploy(t, c, "app", "1", scriptPkg(t, "1"), nil); outcomeOf(st) != outcomeSuccess {
				t.Fatalf("first deploy: %v", logs)
			}
			ticket := startDeploy(t, c, map[string]any{"app": "app", "version": "2", "package": push(t, c, tt.pkg)})
			ready := tt.ready
			if ready == nil {
				ready = func(home string) bool {
					_, err := os.Stat(filepath.Join(home, "apps", "app", "shared", "pid"))
					return err == nil
				}
			}
			waitFor(t, "the deploy to get going", 20*time.Second, func() bool { return ready(home) })
			c.Close()
			p.cmd.Process.Kill()
			p.cmd.Wait()
			if tt.name == "after the switch" && current(t, home, "app") != "2" {
				t.Fatalf("current = %q before the restart: the test did not kill after the switch", current(t, home, "app"))
			}
			if pid, err := os.ReadFile(filepath.Join(home, "apps", "app", "shared", "pid")); err == nil {
				if n, err := strconv.Atoi(strings.TrimSpace(string(pid))); err == nil {
					if proc, err := os.FindProcess(n); err == nil {
						t.Cleanup(func() { proc.Kill() })
					}
				}
			}

			a := &testAgent{t: t, home: home, clientHome: clientHome, client: client}
			a.cfg = testConfig(t, home)
			a.start()
			t.Cleanup(a.stop)
			if cur := current(t, home, "app"); cur != "1" {
				t.Fatalf("current = %q after the restart, want 1", cur)
			}
			if !strings.Contains(a.logs.String(), "found an interrupted deploy") {
				t.Fatalf("restart did not say so:\n%s", a.logs)
			}
			c2 := a.dial(t)
			l := list(t, c2, "app")
			if len(l.Releases) != 2 || l.Releases[1].Outcome != outcomeLost || *l.Current != "1" {
				t.Fatalf("deploy.list = %+v", l)
			}
			// The lost job's result says where current is.
			if st := statusOf(t, c2, ticket); outcomeOf(st) != outcomeLost || !strings.Contains(string(st.Result), `"current":"1"`) ||
				!strings.Contains(string(st.Result), `"phase":"interrupted: the agent stopped"`) {
				t.Fatalf("the interrupted deploy's job: %s %s", outcomeOf(st), st.Result)
			}
			if err := c2.call("deploy.rollback", map[string]any{"app": "app", "to": "2"}, nil); rpcKind(err) != kindConflict {
				t.Fatalf("rollback to the lost release: %v", err)
			}
			if st, logs := deploy(t, c2, "app", "3", scriptPkg(t, "3"), nil); outcomeOf(st) != outcomeSuccess || current(t, home, "app") != "3" {
				t.Fatalf("deploy after the restart: %v", logs)
			}
		})
	}
}

// BenchmarkDeployTarGz deploys a tar.gz of 10,000 small files (~100 MB, no
// scripts) through a real agent, timed from deploy.start to the job's end,
// beside tar -xzf of the same archive into a fresh folder, alternately.
func BenchmarkDeployTarGz(b *testing.B) {
	if _, err := exec.LookPath("tar"); err != nil {
		b.Skip("no tar to compare with")
	}
	pkg := benchArchive(b, formatTarGz)
	a := startAgent(b)
	c := a.dial(b)
	sha, err := pushPackage(c, pkg, nil)
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	apps := filepath.Join(a.home, "apps", "bench")
	var ours, base []time.Duration
	runOurs := func(i int) {
		os.RemoveAll(filepath.Join(apps, strconv.Itoa(i-1)))
		syncTree(a.home)
		t0 := time.Now()
		st, logs := followJob(b, c, startDeploy(b, c, map[string]any{"app": "bench", "version": strconv.Itoa(i), "package": sha, "retain": 1000}))
		ours = append(ours, time.Since(t0))
		if outcomeOf(st) != outcomeSuccess {
			b.Fatalf("deploy: %v", logs)
		}
	}
	runBase := func() {
		d := filepath.Join(dir, "tar")
		os.RemoveAll(d)
		os.Mkdir(d, 0o755)
		syncTree(dir)
		t0 := time.Now()
		if out, err := exec.Command("tar", "-xzf", pkg, "-C", d).CombinedOutput(); err != nil {
			b.Fatalf("tar: %v\n%s", err, out)
		}
		base = append(base, time.Since(t0))
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%2 == 0 {
			runOurs(i)
			runBase()
		} else {
			runBase()
			runOurs(i)
		}
	}
	b.StopTimer()
	mo, mb := medianDur(ours), medianDur(base)
	b.ReportMetric(float64(mo.Milliseconds()), "deploy-ms")
	b.ReportMetric(float64(mb.Milliseconds()), "tar-ms")
	b.ReportMetric(float64(mo)/float64(mb), "ratio")
	b.Logf("deploy of 10,000 files (no scripts, incl. syncfs, current switch, metadata): %v; tar -xzf: %v; ratio %.2f (medians of %d)",
		mo.Round(time.Millisecond), mb.Round(time.Millisecond), float64(mo)/float64(mb), len(ours))
}

func TestNameShapes(t *testing.T) {
	for _, tt := range []struct {
		check func(string) bool
		in    string
		want  bool
	}{
		{validName, "1.4.0", true}, {validName, "shop_web-2", true}, {validName, strings.Repeat("a", 64), true},
		{validName, "", false}, {validName, ".hidden", false}, {validName, strings.Repeat("a", 65), false},
		{validName, "a/b", false}, {validName, "a b", false}, {validName, "é", false},
		{validVarName, "DB_HOST", true}, {validVarName, "_x1", true},
		{validVarName, "", false}, {validVarName, "1X", false}, {validVarName, "A-B", false}, {validVarName, "A.B", false},
		{validUserName, "tentacle", true}, {validUserName, "_svc-1", true},
		{validUserName, "", false}, {validUserName, "Root", false}, {validUserName, "-x", false}, {validUserName, "1x", false},
		{validUserName, strings.Repeat("a", 33), false},
	} {
		if got := tt.check(tt.in); got != tt.want {
			t.Errorf("check(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

// The retention rule of PROTOCOL §5 step 6 (failed attempts never push the
// successful releases out), packages pruned as their last release goes, and
// holds that end with the deploy however it ends.

func present(t testing.TB, c *clientConn, sha string) bool {
	t.Helper()
	var ps struct {
		Present bool `json:"present"`
	}
	if err := c.call("package.stat", map[string]any{"sha256": sha}, &ps); err != nil {
		t.Fatal(err)
	}
	return ps.Present
}

func releaseNames(l listing) []string {
	var names []string
	for _, r := range l.Releases {
		names = append(names, r.Release+":"+r.Outcome)
	}
	return names
}

// TestDeployRetentionKeepsSuccesses: failed, timed-out and cancelled tries
// while debugging a script never push the successful releases out; they
// stay only while among the newest retain of any outcome.
func TestDeployRetentionKeepsSuccesses(t *testing.T) {
	a, c := startShAgent(t)
	for _, v := range []string{"1", "2"} {
		deploy(t, c, "api", v, scriptPkg(t, v), map[string]any{"retain": 3})
	}
	hang := gz(t, makeTar(t, []tEntry{file("Deploy.sh", "sleep 30")}))
	tries := []map[string]any{{}, {}, {"timeout_s": 0.2}, {}, {}, {}}
	for i, extra := range tries {
		pkg := scriptPkg(t, "bad", "Deploy.sh")
		if extra["timeout_s"] != nil {
			pkg = hang
		}
		params := map[string]any{"retain": 3}
		for k, v := range extra {
			params[k] = v
		}
		deploy(t, c, "api", "f"+string(rune('3'+i)), pkg, params)
	}
	l := list(t, c, "api")
	want := []string{"1:success", "2:success", "f6:failed", "f7:failed", "f8:failed"}
	if got := releaseNames(l); !slices.Equal(got, want) {
		t.Fatalf("releases %q, want %q", got, want)
	}
	if err := c.call("deploy.rollback", map[string]any{"app": "api"}, nil); err != nil || current(t, a.home, "api") != "1" {
		t.Fatalf("rollback: %v, current %q", err, current(t, a.home, "api"))
	}
	// Successes again: the newest three of them stay, and the failures
	// leave the window of the newest three of any outcome.
	for _, v := range []string{"9", "10", "11"} {
		deploy(t, c, "api", v, scriptPkg(t, v), map[string]any{"retain": 3})
	}
	want = []string{"9:success", "10:success", "11:success"}
	if got := releaseNames(list(t, c, "api")); !slices.Equal(got, want) {
		t.Fatalf("releases %q, want %q", got, want)
	}
}

func TestRetentionPlan(t *testing.T) {
	rels := func(spec string) []release {
		var rs []release
		for _, f := range strings.Fields(spec) {
			name, outcome, _ := strings.Cut(f, ":")
			rs = append(rs, release{Release: name, Outcome: map[string]string{"s": outcomeSuccess, "f": outcomeFailed,
				"c": outcomeCancelled, "t": outcomeTimedOut, "l": outcomeLost, "r": releaseRunning, "h": outcomeSuccess}[outcome]})
		}
		return rs
	}
	tests := []struct {
		name, rels, cur, self string
		keep                  int
		kept                  string
	}{
		{"newest successes", "1:s 2:s 3:s 4:s", "4", "4", 2, "3 4"},
		{"failures never push successes out", "1:s 2:s 3:f 4:c 5:t 6:f", "2", "6", 2, "1 2 5 6"},
		{"failures beyond the window go", "1:f 2:s 3:f 4:s", "4", "4", 2, "2 3 4"},
		{"current stays whatever its age", "1:s 2:s 3:s 4:s", "1", "4", 2, "1 3 4"},
		{"the release being deployed stays", "1:s 2:s 3:f", "2", "3", 1, "2 3"},
		{"a stale running record is not good", "1:s 2:r 3:s 4:s", "4", "4", 2, "3 4"},
		{"a success not whole is not good", "1:s 2:s 3:h 4:s 5:s", "5", "5", 2, "4 5"},
		{"lost counts as failed", "1:l 2:s 3:l", "2", "3", 5, "1 2 3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			all := rels(tt.rels)
			notWhole := map[string]bool{}
			for _, f := range strings.Fields(tt.rels) {
				if strings.HasSuffix(f, ":h") {
					notWhole[strings.TrimSuffix(f, ":h")] = true
				}
			}
			kept, removed := retentionPlan(all, tt.cur, tt.self, tt.keep, func(r release) bool {
				return r.Outcome == outcomeSuccess && !notWhole[r.Release]
			})
			var names []string
			for _, r := range kept {
				names = append(names, r.Release)
			}
			if strings.Join(names, " ") != tt.kept || len(kept)+len(removed) != len(all) {
				t.Fatalf("kept %q, removed %d; want %q", names, len(removed), tt.kept)
			}
		})
	}
}

// TestDeployPrunesPackagesOfRemovedReleases: with the default grace of a
// day, the package of a release that retention removes goes at once; a
// package pushed and not yet deployed stays.
func TestDeployPrunesPackagesOfRemovedReleases(t *testing.T) {
	needSh(t)
	a := startAgent(t)
	if a.cfg.PackageGrace < time.Hour {
		t.Fatalf("package grace %s: the test needs the default", a.cfg.PackageGrace)
	}
	c := a.dial(t)
	waiting := push(t, c, scriptPkg(t, "later"))
	var shas []string
	for _, v := range []string{"1", "2", "3"} {
		pkg := scriptPkg(t, v)
		shas = append(shas, push(t, c, pkg))
		deploy(t, c, "web", v, pkg, map[string]any{"retain": 1})
	}
	for i, sha := range shas {
		if got := present(t, c, sha); got != (i == 2) {
			t.Errorf("package of release %d present = %v", i+1, got)
		}
	}
	if !present(t, c, waiting) {
		t.Error("a package pushed and not yet deployed was pruned within its grace")
	}
}

// TestDeployCancelledQueuedReleasesPackage: a deploy cancelled while
// queued lets go of its package at once, so it is pruned like any other.
func TestDeployCancelledQueuedReleasesPackage(t *testing.T) {
	_, c := startShAgent(t, func(c *config) { c.PackageGrace = 0 })
	gate := filepath.Join(t.TempDir(), "go")
	blocking := gz(t, makeTar(t, []tEntry{file("Deploy.sh", `touch "$GATE.started"; while [ ! -e "$GATE" ]; do sleep 0.02; done`)}))
	first := startDeploy(t, c, map[string]any{"app": "one", "version": "1", "package": push(t, c, blocking), "variables": map[string]string{"GATE": gate}})
	waitFor(t, "the first deploy to run", 10*time.Second, func() bool { _, err := os.Stat(gate + ".started"); return err == nil })
	sha := push(t, c, scriptPkg(t, "2"))
	queued := startDeploy(t, c, map[string]any{"app": "one", "version": "2", "package": sha})
	if st := statusOf(t, c, queued); st.State != stateQueued {
		t.Fatalf("second deploy is %s, want queued", st.State)
	}
	if err := c.call("job.cancel", map[string]any{"ticket": queued}, nil); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(gate, nil, 0o644)
	if st, logs := followJob(t, c, first); outcomeOf(st) != outcomeSuccess {
		t.Fatalf("first deploy: %v", logs)
	}
	if present(t, c, sha) {
		t.Fatal("the package of the cancelled queued deploy was kept: its hold outlived the deploy")
	}
}

// TestDeployUnreadableRecordPrunesNothing: while another app's release
// record cannot be read, no package is pruned (it might be in use).
func TestDeployUnreadableRecordPrunesNothing(t *testing.T) {
	a, c := startShAgent(t, func(c *config) { c.PackageGrace = 0 })
	pkgB := scriptPkg(t, "b")
	deploy(t, c, "b", "1", pkgB, nil)
	writeFile(t, filepath.Join(a.home, "apps", "b", ".releases.json"), []byte("{damaged"))
	loose := push(t, c, scriptPkg(t, "loose"))
	deploy(t, c, "a", "1", scriptPkg(t, "a"), nil)
	if !present(t, c, shaOf(pkgB)) || !present(t, c, loose) {
		t.Fatal("packages were pruned while an app's release record was unreadable")
	}
}

// Deploys and retention when the disk fills up and when the agent is killed
// (SIGKILL) at any point, in particular while retention deletes a release:
// after a restart every release recorded successful is whole, current names
// a whole release, nothing reads running, and job and release records
// agree.

// treePkg is a package and the files it holds.
type treePkg struct {
	pkg   []byte
	files map[string]string // name → content
}

// manyFilesPkg is a tar.gz of dirs folders of n files each, plus a quick
// Deploy.sh and a VERSION file, so that extracting and deleting it take a
// while.
func manyFilesPkg(t testing.TB, version string, dirs, n int) treePkg {
	tp := treePkg{files: map[string]string{"Deploy.sh": "echo deploying " + version + "\n", "VERSION": version + "\n"}}
	for d := range dirs {
		for i := range n {
			tp.files[fmt.Sprintf("data/d%02d/f%04d", d, i)] = strings.Repeat(version, 40)
		}
	}
	var entries []tEntry
	for name, body := range tp.files {
		entries = append(entries, file(name, body))
	}
	tp.pkg = gz(t, makeTar(t, entries))
	return tp
}

// sameTree says how release folder dir differs from tp's files ("" if not).
func sameTree(dir string, tp treePkg) string {
	seen := 0
	var diff []string
	err := filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		want, ok := tp.files[filepath.ToSlash(rel)]
		if b, err := os.ReadFile(p); !ok || err != nil || string(b) != want {
			diff = append(diff, rel)
		}
		seen++
		return nil
	})
	switch {
	case err != nil:
		return err.Error()
	case len(diff) > 0:
		return fmt.Sprintf("%d files differ or are extra, e.g. %q", len(diff), diff[0])
	case seen != len(tp.files):
		return fmt.Sprintf("%d of %d files", seen, len(tp.files))
	}
	return ""
}

// result is the part of a deploy job's result the tests read.
type result struct {
	Release string  `json:"release"`
	Current *string `json:"current"`
	Phase   string  `json:"phase"`
	Error   string  `json:"error"`
}

func resultOf(t testing.TB, st *statusReply) result {
	t.Helper()
	var r result
	if err := json.Unmarshal(st.Result, &r); err != nil {
		t.Fatalf("result %s: %v", st.Result, err)
	}
	return r
}

func (r result) current() string {
	if r.Current == nil {
		return ""
	}
	return *r.Current
}

// TestDeployFullDisk fills the agent's disk (a small tmpfs) with a package
// that expands past it and with a script, then restarts: the debris of the
// failed extraction is gone at once, the outcome is recorded although
// .releases.json cannot be written, a later restart neither dangles current
// nor undoes later deploys, and no release reads running.
func TestDeployFullDisk(t *testing.T) {
	needSh(t)
	home := mountTmpfs(t, "12m")
	if home == "" {
		t.Skip("needs a small tmpfs to fill: mount -t tmpfs works as root on Linux only")
	}
	a := startAgentAt(t, home, nil, func(c *config) { c.PackageGrace = 0 })
	c := a.dial(t)
	if st, logs := deploy(t, c, "shop", "1", scriptPkg(t, "1"), nil); outcomeOf(st) != outcomeSuccess {
		t.Fatalf("1: %v", logs)
	}
	free, err := freeSpace(home)
	if err != nil {
		t.Fatal(err)
	}

	// A package that expands past the disk: what it wrote goes at once.
	bomb := filepath.Join(t.TempDir(), "bomb.tar.gz")
	writeFile(t, bomb, gz(t, makeTar(t, []tEntry{file("Deploy.sh", "true"), file("zeros", strings.Repeat("\x00", 16<<20))})))
	_, errOut, code := a.cli("deploy", a.addr, "shop", "2", bomb)
	if code != 1 || !strings.Contains(errOut, "shop 2 failed at extract: ") || !strings.Contains(errOut, "; current is 1\n") {
		t.Fatalf("bomb: code %d\n%s", code, errOut)
	}
	if _, err := os.Stat(filepath.Join(home, "apps", "shop", "2")); err == nil {
		t.Fatal("the failed extraction's release folder stayed")
	}
	if now, _ := freeSpace(home); now < free-(1<<20) {
		t.Fatalf("%d bytes free after the failed extraction, %d before: its debris stayed", now, free)
	}

	// A script fills the disk and fails: .releases.json cannot take the
	// outcome, which must still be recorded, and reported.
	fill := gz(t, makeTar(t, []tEntry{file("Deploy.sh", `dd if=/dev/zero of="$TENTACLE_SHARED_DIR/fill" bs=64k 2>/dev/null; echo filled; exit 7`)}))
	ticket := startDeploy(t, c, map[string]any{"app": "shop", "version": "3", "package": push(t, c, fill)})
	st, _ := followJob(t, c, ticket)
	if r := resultOf(t, st); outcomeOf(st) != outcomeFailed || r.Phase != "Deploy.sh" || r.current() != "1" || r.Error == "" {
		t.Fatalf("filled: %s %s", outcomeOf(st), st.Result)
	}
	checkReleases := func(when string, want ...string) {
		t.Helper()
		l := list(t, c, "shop")
		var got []string
		for _, r := range l.Releases {
			got = append(got, r.Release+":"+r.Outcome)
		}
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Fatalf("%s: releases %q, want %q", when, got, want)
		}
	}
	checkReleases("with the disk full", "1:success", "2:failed", "3:failed")
	os.Remove(filepath.Join(home, "apps", "shop", "shared", "fill"))

	// The job could not record its end either: after a restart it takes
	// the release's outcome rather than reading lost.
	a.restart()
	c = a.dial(t)
	checkReleases("after a restart", "1:success", "2:failed", "3:failed")
	if st := statusOf(t, c, ticket); outcomeOf(st) != outcomeFailed {
		t.Fatalf("the filling deploy's job reads %s after a restart, its release failed", outcomeOf(st))
	}

	// Later deploys succeed and retention removes 1; a restart keeps them.
	for _, v := range []string{"4", "5"} {
		if st, logs := deploy(t, c, "shop", v, scriptPkg(t, v), map[string]any{"retain": 1}); outcomeOf(st) != outcomeSuccess {
			t.Fatalf("%s: %v", v, logs)
		}
	}
	checkReleases("after retain 1", "5:success")
	a.restart()
	c = a.dial(t)
	if cur := current(t, home, "shop"); cur != "5" {
		t.Fatalf("current = %q after the restart, want 5", cur)
	}
	checkReleases("after the last restart", "5:success")
}

// TestDeployStaleRunningRecord: a release left "running" by a deploy that
// ended (as an agent that could not record an outcome left it) neither
// blocks retention nor keeps its folder.
func TestDeployStaleRunningRecord(t *testing.T) {
	a, c := startShAgent(t)
	deploy(t, c, "web", "1", scriptPkg(t, "1"), nil)
	dir := filepath.Join(a.home, "apps", "web")
	meta, err := loadMeta(dir)
	if err != nil {
		t.Fatal(err)
	}
	meta.Releases = append(meta.Releases, release{Release: "1.5", Version: "1.5", Package: meta.Releases[0].Package,
		Deployed: time.Now().UTC(), Outcome: releaseRunning, Ticket: newTicket(), Previous: "1"})
	if err := saveMeta(dir, meta); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "1.5", "half"), []byte("debris"))
	for _, v := range []string{"2", "3"} {
		if st, logs := deploy(t, c, "web", v, scriptPkg(t, v), map[string]any{"retain": 1}); outcomeOf(st) != outcomeSuccess {
			t.Fatalf("%s: %v", v, logs)
		}
	}
	if l := list(t, c, "web"); len(l.Releases) != 1 || l.Releases[0].Release != "3" {
		t.Fatalf("releases %+v, want 3 alone", l.Releases)
	}
	if _, err := os.Stat(filepath.Join(dir, "1.5")); err == nil {
		t.Fatal("the stale release's folder stayed")
	}
}

// TestDeployRecoversOldState: a record written before whole markers
// existed keeps its releases usable, a success whose folder is gone is
// dropped, and a current left dangling (as the agent before issue 13 could
// leave it) is pointed at the newest whole successful release.
func TestDeployRecoversOldState(t *testing.T) {
	a, c := startShAgent(t)
	for _, v := range []string{"1", "2", "3"} {
		deploy(t, c, "web", v, scriptPkg(t, v), nil)
	}
	a.stop()
	dir := filepath.Join(a.home, "apps", "web")
	b, _ := os.ReadFile(filepath.Join(dir, ".releases.json"))
	legacy := strings.Replace(string(b), `"format": 1,`, "", 1)
	if legacy == string(b) {
		t.Fatalf("no format in %s", b)
	}
	writeFile(t, filepath.Join(dir, ".releases.json"), []byte(legacy))
	os.RemoveAll(filepath.Join(dir, ".whole"))
	os.RemoveAll(filepath.Join(dir, "3"))
	os.Remove(filepath.Join(dir, "current"))
	os.Symlink("0", filepath.Join(dir, "current"))

	a.cfg.Listen = "127.0.0.1:0"
	a.start()
	c = a.dial(t)
	if got := releaseNames(list(t, c, "web")); strings.Join(got, " ") != "1:success 2:success" {
		t.Fatalf("releases %q, want 1 and 2", got)
	}
	if cur := current(t, a.home, "web"); cur != "2" {
		t.Fatalf("current = %q, want 2 (the newest whole successful release)", cur)
	}
	if err := c.call("deploy.rollback", map[string]any{"app": "web"}, nil); err != nil || current(t, a.home, "web") != "1" {
		t.Fatalf("rollback to a release of the old record: %v", err)
	}
}

// killAgent SIGKILLs a process agent and waits for it.
func killAgent(p *procAgent) {
	p.cmd.Process.Kill()
	p.cmd.Wait()
}

// dataDirs counts the folders left under data/ of release rel of app,
// under its own name or the hidden one of its removal.
func dataDirs(home, app, rel string) int {
	dirs, _ := filepath.Glob(filepath.Join(home, "apps", app, removingPrefix+rel+"-*", "data"))
	dirs = append(dirs, filepath.Join(home, "apps", app, rel, "data"))
	n := 0
	for _, d := range dirs {
		des, _ := os.ReadDir(d)
		n += len(des)
	}
	return n
}

// checkAfterCrash checks what must hold after any crash and restart:
// every release recorded successful is whole (its files are its
// package's), current names one, nothing reads running, nothing of a
// removal is left, and each deploy job in tickets (ticket → release) that
// the agent still knows has its release's outcome.
func checkAfterCrash(t testing.TB, c *clientConn, home, app string, pkgs map[string]treePkg, tickets map[string]string) {
	t.Helper()
	l := listOrNone(t, c, app)
	outcomes := map[string]string{}
	for _, r := range l.Releases {
		outcomes[r.Release] = r.Outcome
		switch {
		case r.Outcome == releaseRunning:
			t.Fatalf("release %s reads running after recovery", r.Release)
		case r.Outcome == outcomeSuccess:
			if d := sameTree(filepath.Join(home, "apps", app, r.Release), pkgs[r.Package]); d != "" {
				t.Fatalf("release %s recorded successful is not whole: %s", r.Release, d)
			}
		}
	}
	if cur := current(t, home, app); cur != "" {
		if outcomes[cur] != outcomeSuccess {
			t.Fatalf("current names %s, recorded %q", cur, outcomes[cur])
		}
	}
	if left, _ := filepath.Glob(filepath.Join(home, "apps", app, removingPrefix+"*")); len(left) > 0 {
		t.Fatalf("removals left after recovery: %q", left)
	}
	for ticket, rel := range tickets {
		var st statusReply
		if err := c.call("job.status", map[string]any{"ticket": ticket}, &st); err != nil {
			continue // completed
		}
		if o, ok := outcomes[rel]; ok && outcomeOf(&st) != o {
			t.Fatalf("job %s reads %s, its release %s %s", ticket, outcomeOf(&st), rel, o)
		}
	}
}

// listOrNone is list, or no releases for an app not deployed yet.
func listOrNone(t testing.TB, c *clientConn, app string) listing {
	t.Helper()
	var l listing
	if err := c.call("deploy.list", map[string]any{"app": app}, &l); err != nil && rpcKind(err) != kindNotFound {
		t.Fatalf("deploy.list: %v", err)
	}
	return l
}

// TestDeployKilledDuringRetention kills the agent while retention deletes
// an old release of 5,000 files: after the restart the release is either
// whole or gone (never half there and recorded), rollback refuses it if it
// is not whole, the deploy whose retention it was reads success like its
// release, and nothing of the removal is left.
func TestDeployKilledDuringRetention(t *testing.T) {
	needSh(t)
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildTentacle(t)
	home := t.TempDir()
	client, _ := trustedClient(t, home, "test-client")
	p := startProcAgent(t, bin, home)
	c := p.dial(t, client)
	big, small := manyFilesPkg(t, "1", 20, 250), manyFilesPkg(t, "2", 1, 1)
	pkgs := map[string]treePkg{push(t, c, big.pkg): big, push(t, c, small.pkg): small}
	// Deploy big as old, then small with retain 1, whose retention deletes
	// old; kill the agent once old is partly deleted. Should the deletion
	// go by unseen (this goroutine not scheduled meanwhile), again.
	var old, cur, ticket string
	for attempt := 0; old == ""; attempt++ {
		if attempt == 3 {
			t.Fatal("the deletion of a release went by unseen three times")
		}
		name := fmt.Sprintf("big%d", attempt)
		if st, logs := deploy(t, c, "app", name, big.pkg, nil); outcomeOf(st) != outcomeSuccess {
			t.Fatalf("%s: %v", name, logs)
		}
		cur = fmt.Sprintf("small%d", attempt)
		ticket = startDeploy(t, c, map[string]any{"app": "app", "version": cur, "package": shaOf(small.pkg), "retain": 1})
		deadline := time.Now().Add(20 * time.Second)
		for n := dataDirs(home, "app", name); n == 20 || n == 0; n = dataDirs(home, "app", name) {
			if n == 0 {
				followJob(t, c, ticket) // gone already: try again
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("release %s was not being deleted within 20s\n%s", name, p.logs)
			}
			time.Sleep(100 * time.Microsecond)
		}
		if dataDirs(home, "app", name) > 0 {
			old = name
		}
	}
	killAgent(p)
	if n := dataDirs(home, "app", old); n == 0 || n == 20 {
		t.Fatalf("killed with %d of 20 folders of release %s left: not mid-deletion", n, old)
	}

	p = startProcAgent(t, bin, home)
	c = p.dial(t, client)
	checkAfterCrash(t, c, home, "app", pkgs, map[string]string{ticket: cur})
	if st := statusOf(t, c, ticket); outcomeOf(st) != outcomeSuccess || current(t, home, "app") != cur {
		t.Fatalf("the deploy killed in its retention: job %s, current %q; want success and %s", outcomeOf(st), current(t, home, "app"), cur)
	}
	if err := c.call("deploy.rollback", map[string]any{"app": "app", "to": old}, nil); err == nil {
		if d := sameTree(filepath.Join(home, "apps", "app", old), big); d != "" {
			t.Fatalf("rollback accepted release %s, which is not whole: %s", old, d)
		}
	}
}

// TestDeployCrashLoop deploys again and again with retain 2, so that
// retention runs every time, and SIGKILLs the agent at a random point of
// each round: during the deploy, or while retention deletes a release.
// After every restart checkAfterCrash must hold.
func TestDeployCrashLoop(t *testing.T) {
	needSh(t)
	if testing.Short() {
		t.Skip("builds the binary and runs ten rounds")
	}
	const rounds = 10
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 13))
	bin := buildTentacle(t)
	home := t.TempDir()
	client, _ := trustedClient(t, home, "test-client")
	pkgs := map[string]treePkg{}
	tickets := map[string]string{}
	var full time.Duration // how long a whole deploy took
	for round := range rounds {
		p := startProcAgent(t, bin, home)
		c := p.dial(t, client)
		checkAfterCrash(t, c, home, "app", pkgs, tickets)
		v := fmt.Sprintf("r%d", round)
		goods := 0 // whole successful releases: retention deletes one if this deploy succeeds
		for _, r := range listOrNone(t, c, "app").Releases {
			if r.Outcome == outcomeSuccess {
				goods++
			}
		}
		tp := manyFilesPkg(t, v, 8, 150)
		sha := push(t, c, tp.pkg)
		pkgs[sha] = tp
		ticket := startDeploy(t, c, map[string]any{"app": "app", "version": v, "package": sha, "retain": 2})
		tickets[ticket] = v
		t0 := time.Now()
		var where string
		switch {
		case goods < 2:
			// Two releases to delete first: this deploy runs to its end.
			where = "nothing: it ran to its end"
			if st, logs := followJob(t, c, ticket); outcomeOf(st) != outcomeSuccess {
				t.Fatalf("round %d: %s %v", round, outcomeOf(st), logs)
			}
			full = time.Since(t0)
		case rng.IntN(2) == 0:
			// Inside retention: once an older release is being deleted.
			where = "retention"
			deadline := time.Now().Add(20 * time.Second)
			for !deleting(home, "app", v) {
				if st := statusOf(t, c, ticket); st.State == stateDone {
					t.Fatalf("round %d: the deploy ended without deleting a release", round)
				}
				if time.Now().After(deadline) {
					t.Fatalf("round %d: no retention within 20s", round)
				}
				time.Sleep(200 * time.Microsecond)
			}
			time.Sleep(time.Duration(rng.Int64N(int64(3 * time.Millisecond))))
		default:
			// Anywhere in the deploy: extraction, a script, the switch,
			// the record, retention, or just after.
			where = "deploy"
			time.Sleep(time.Duration(rng.Int64N(int64(full))))
		}
		c.Close()
		killAgent(p)
		t.Logf("round %d: killed after %s, during %s", round, time.Since(t0).Round(time.Millisecond), where)
	}
	p := startProcAgent(t, bin, home)
	checkAfterCrash(t, p.dial(t, client), home, "app", pkgs, tickets)
}

// deleting reports whether a release of app other than the one being
// deployed is being deleted: hidden for its removal, or part gone.
func deleting(home, app, deploying string) bool {
	if m, _ := filepath.Glob(filepath.Join(home, "apps", app, removingPrefix+"*")); len(m) > 0 {
		return true
	}
	rels, _ := filepath.Glob(filepath.Join(home, "apps", app, "*", "data"))
	for _, d := range rels {
		if filepath.Base(filepath.Dir(d)) == deploying {
			continue
		}
		if des, _ := os.ReadDir(d); len(des) < 8 {
			return true
		}
	}
	return false
}
