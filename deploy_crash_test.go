package main

// deploy_crash_test.go: deploys and retention when the disk fills up and
// when the agent is killed (SIGKILL) at any point, in particular while
// retention deletes a release: after a restart every release recorded
// successful is whole, current names a whole release, nothing reads
// running, and job and release records agree.

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

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

// startAgentAt is startAgent on a given home (a tmpfs, say).
func startAgentAt(t testing.TB, home string, opts ...func(*config)) *testAgent {
	t.Helper()
	a := &testAgent{t: t, home: home, clientHome: t.TempDir()}
	var err error
	a.client, err = newIdentity(filepath.Join(a.clientHome, "tentacle.key"), filepath.Join(a.clientHome, "tentacle.crt"))
	if err != nil {
		t.Fatal(err)
	}
	writeTrust(t, home, a.client.thumbprint+" test-client\n")
	a.cfg = testConfig(t, home)
	for _, o := range opts {
		o(a.cfg)
	}
	a.start()
	t.Cleanup(a.stop)
	return a
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
	a := startAgentAt(t, home, func(c *config) { c.PackageGrace = 0 })
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
	needSh(t)
	a := startAgent(t)
	c := a.dial(t)
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
	needSh(t)
	a := startAgent(t)
	c := a.dial(t)
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

// procClient is a client of a process agent.
type procClient struct {
	home   string
	client *identity
}

func newProcClient(t testing.TB, home string) *procClient {
	t.Helper()
	ch := t.TempDir()
	id, err := newIdentity(filepath.Join(ch, "tentacle.key"), filepath.Join(ch, "tentacle.crt"))
	if err != nil {
		t.Fatal(err)
	}
	writeTrust(t, home, id.thumbprint+" test-client\n")
	return &procClient{home: home, client: id}
}

func (pc *procClient) dial(t testing.TB, p *procAgent) *clientConn {
	t.Helper()
	c, err := dialAgent(p.addr, pc.client, p.thumbprint, "", 10*time.Second, nil)
	if err != nil {
		t.Fatalf("dial: %v\n%s", err, p.logs)
	}
	t.Cleanup(func() { c.Close() })
	return c
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
	pc := newProcClient(t, home)
	p := startProcAgent(t, bin, home)
	c := pc.dial(t, p)
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
	c = pc.dial(t, p)
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
	pc := newProcClient(t, home)
	pkgs := map[string]treePkg{}
	tickets := map[string]string{}
	var full time.Duration // how long a whole deploy took
	for round := range rounds {
		p := startProcAgent(t, bin, home)
		c := pc.dial(t, p)
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
	checkAfterCrash(t, pc.dial(t, p), home, "app", pkgs, tickets)
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
