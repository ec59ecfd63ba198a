package main

// deploy_retain_test.go: the retention rule of PROTOCOL §5 step 6 (failed
// attempts never push the successful releases out), packages pruned as
// their last release goes, and holds that end with the deploy however it
// ends.

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

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
	needSh(t)
	a := startAgent(t)
	c := a.dial(t)
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
	needSh(t)
	a := startAgent(t, func(c *config) { c.PackageGrace = 0 })
	c := a.dial(t)
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
	needSh(t)
	a := startAgent(t, func(c *config) { c.PackageGrace = 0 })
	c := a.dial(t)
	pkgB := scriptPkg(t, "b")
	deploy(t, c, "b", "1", pkgB, nil)
	writeFile(t, filepath.Join(a.home, "apps", "b", ".releases.json"), []byte("{damaged"))
	loose := push(t, c, scriptPkg(t, "loose"))
	deploy(t, c, "a", "1", scriptPkg(t, "a"), nil)
	if !present(t, c, shaOf(pkgB)) || !present(t, c, loose) {
		t.Fatal("packages were pruned while an app's release record was unreadable")
	}
}
