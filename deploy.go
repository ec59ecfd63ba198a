package main

// deploy.go: packages become releases (PROTOCOL §5 "Deploys").
//
// Layout of one app, under <home>/apps/<app>/:
//
//	<version>, <version>_1, …  release folders, one per deploy
//	shared/                    persists across releases; never touched here
//	current                    symlink to a release folder (a relative name)
//	.releases.json             every release: version, package, outcome, …
//
// A deploy is a job in the mutex "deploy:<app>", isolation full, so deploys
// of one app run one at a time and different apps in parallel. Its release
// is recorded as "running" (with the current it found) before anything is
// extracted, so an agent that dies mid-deploy finds it at start-up, puts
// current back and marks the release lost. current only ever changes by
// renaming a new symlink over it, so it always names a whole release.

import (
	"cmp"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Release outcomes besides the job outcomes (success, failed, cancelled,
// timed_out, lost) that a finished deploy records.
const releaseRunning = "running"

// deployManager deploys packages as releases of apps.
type deployManager struct {
	cfg  *config
	log  *slog.Logger
	jobs *jobManager
	pkgs *packageCache

	mu      sync.Mutex // guards apps and pending
	apps    map[string]*appState
	pending map[string]int // package → deploys started and not yet finished
}

// appState serialises the changes to one app's release list and current.
type appState struct {
	mu      sync.Mutex // guards the app's .releases.json, current, and running
	running string     // the ticket of the deploy in progress, if any
}

// release is one entry of .releases.json.
type release struct {
	Release  string    `json:"release"`
	Version  string    `json:"version"`
	Package  string    `json:"package"`
	Deployed time.Time `json:"deployed"`
	Outcome  string    `json:"outcome"`
	Ticket   string    `json:"ticket,omitempty"`
	Previous string    `json:"previous,omitempty"` // current when the deploy began
	Phase    string    `json:"phase,omitempty"`    // where a failed deploy failed
}

// appMeta is the content of .releases.json, oldest release first.
type appMeta struct {
	Releases []release `json:"releases"`
}

// validName reports whether s has the shape of an app or version name: 1–64
// of A-Z a-z 0-9 . _ -, not starting with "." (PROTOCOL §5). Hand-written
// rather than a regexp: compiling one at start-up costs every client
// command a few hundred microseconds.
func validName(s string) bool {
	if len(s) == 0 || len(s) > 64 || s[0] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

// validVarName reports whether s is a variable name: [A-Za-z_][A-Za-z0-9_]*.
func validVarName(s string) bool {
	if len(s) == 0 || s[0] >= '0' && s[0] <= '9' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '_' {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func newDeployManager(cfg *config, log *slog.Logger, jobs *jobManager, pkgs *packageCache) (*deployManager, error) {
	d := &deployManager{cfg: cfg, log: log, jobs: jobs, pkgs: pkgs, apps: map[string]*appState{}, pending: map[string]int{}}
	if err := os.MkdirAll(cfg.appsDir(), 0o755); err != nil {
		return nil, fmt.Errorf("failed to create %q: %v", cfg.appsDir(), err)
	}
	d.recover()
	return d, nil
}

func (d *deployManager) appDir(app string) string { return filepath.Join(d.cfg.appsDir(), app) }

func (d *deployManager) app(name string) *appState {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.apps[name]
	if st == nil {
		st = &appState{}
		d.apps[name] = st
	}
	return st
}

// recover finishes what an agent that died mid-deploy left: a release still
// "running" is marked lost and current put back to the release it named
// before; leftover temporary links and metadata files are removed.
func (d *deployManager) recover() {
	des, _ := os.ReadDir(d.cfg.appsDir())
	for _, de := range des {
		if !de.IsDir() || !validName(de.Name()) {
			continue
		}
		app, dir := de.Name(), d.appDir(de.Name())
		if tmps, _ := filepath.Glob(filepath.Join(dir, ".*.tmp*")); len(tmps) > 0 {
			for _, t := range tmps {
				os.Remove(t)
			}
		}
		meta, err := loadMeta(dir)
		if err != nil {
			d.log.Error("failed to read an app's releases", "app", app, "err", err)
			continue
		}
		changed := false
		for i := range meta.Releases {
			r := &meta.Releases[i]
			if r.Outcome != releaseRunning {
				continue
			}
			cur := readCurrent(dir)
			if cur != r.Previous {
				if err := switchCurrent(dir, r.Previous); err != nil {
					d.log.Error("failed to put current back after an interrupted deploy", "app", app, "release", r.Release, "current", r.Previous, "err", err)
					continue
				}
			}
			r.Outcome, r.Phase, changed = outcomeLost, "interrupted: the agent stopped", true
			d.log.Warn("found an interrupted deploy: marked its release lost", "app", app, "release", r.Release,
				"ticket", r.Ticket, "current", cmp.Or(r.Previous, "(none)"), "current_was", cmp.Or(cur, "(none)"))
		}
		if changed {
			if err := saveMeta(dir, meta); err != nil {
				d.log.Error("failed to save an app's releases", "app", app, "err", err)
			}
		}
	}
}

func loadMeta(dir string) (*appMeta, error) {
	m := &appMeta{}
	b, err := os.ReadFile(filepath.Join(dir, ".releases.json"))
	if errors.Is(err, os.ErrNotExist) {
		return m, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, m); err != nil {
		return nil, fmt.Errorf("%q is damaged: %v", filepath.Join(dir, ".releases.json"), err)
	}
	return m, nil
}

func saveMeta(dir string, m *appMeta) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, ".releases.json"), append(b, '\n'), 0o644)
}

// readCurrent is the release current points at, or "" if none.
func readCurrent(dir string) string {
	t, err := os.Readlink(filepath.Join(dir, "current"))
	if err != nil {
		return ""
	}
	return filepath.Base(t)
}

// switchCurrent points dir/current at release atomically: a new symlink is
// made beside it and renamed over it, so current never goes missing. An
// empty release removes current (there was none before a first deploy).
func switchCurrent(dir, release string) error {
	cur := filepath.Join(dir, "current")
	if release == "" {
		if err := os.Remove(cur); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		syncDir(dir)
		return nil
	}
	var rnd [6]byte
	rand.Read(rnd[:])
	tmp := filepath.Join(dir, ".current.tmp"+hex.EncodeToString(rnd[:]))
	if err := os.Symlink(release, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, cur); err != nil {
		os.Remove(tmp)
		return err
	}
	syncDir(dir)
	return nil
}

func (d *deployManager) hold(sha string, n int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pending[sha] += n; d.pending[sha] <= 0 {
		delete(d.pending, sha)
	}
}

// retain keeps the newest keep releases of app (never current, never one
// being deployed) and prunes packages no remaining release of any app uses.
func (d *deployManager) retain(j *job, app string, keep int) {
	dir := d.appDir(app)
	st := d.app(app)
	st.mu.Lock()
	meta, err := loadMeta(dir)
	if err != nil {
		st.mu.Unlock()
		j.logf("retention skipped: %v", err)
		return
	}
	cur := readCurrent(dir)
	var kept []release
	var removed []string
	for i := len(meta.Releases) - 1; i >= 0; i-- {
		r := meta.Releases[i]
		if len(kept) < keep || r.Release == cur || r.Outcome == releaseRunning {
			kept = append(kept, r)
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, r.Release)); err != nil {
			j.logf("retention: failed to remove release %s: %v", r.Release, err)
			kept = append(kept, r)
			continue
		}
		removed = append(removed, r.Release)
	}
	slices.Reverse(kept)
	meta.Releases = kept
	if len(removed) > 0 {
		if err := saveMeta(dir, meta); err != nil {
			j.logf("retention: failed to save the release list: %v", err)
		}
		syncDir(dir)
		slices.Reverse(removed)
		j.logf("retention: kept %d releases, removed %s", len(kept), strings.Join(removed, ", "))
	}
	st.mu.Unlock()

	used := d.usedPackages()
	if gone := d.pkgs.prune(used); len(gone) > 0 {
		j.logf("retention: pruned %d packages no kept release uses: %s", len(gone), strings.Join(gone, ", "))
	}
}

// usedPackages are the packages of every recorded release of every app and
// of every deploy not finished yet.
func (d *deployManager) usedPackages() map[string]bool {
	used := map[string]bool{}
	d.mu.Lock()
	for sha := range d.pending {
		used[sha] = true
	}
	d.mu.Unlock()
	des, _ := os.ReadDir(d.cfg.appsDir())
	for _, de := range des {
		if !de.IsDir() {
			continue
		}
		meta, err := loadMeta(d.appDir(de.Name()))
		if err != nil {
			// Unreadable: keep every package rather than guess.
			d.log.Error("not pruning packages: an app's release list is unreadable", "app", de.Name(), "err", err)
			return nil
		}
		for _, r := range meta.Releases {
			used[r.Package] = true
		}
	}
	return used
}

// releases returns app's release record and current, read together.
func (d *deployManager) releases(app string) (*appMeta, string, error) {
	dir := d.appDir(app)
	if _, err := os.Stat(dir); err != nil {
		return nil, "", errorf(kindNotFound, "no app %q on this agent", app)
	}
	st := d.app(app)
	st.mu.Lock()
	defer st.mu.Unlock()
	meta, err := loadMeta(dir)
	if err != nil {
		return nil, "", ioError(err)
	}
	return meta, readCurrent(dir), nil
}

// rollback points app's current at release to (default: the newest
// successful release before current), atomically. It returns the release
// now current and the one current was.
func (d *deployManager) rollback(app, to string) (now, was string, err error) {
	dir := d.appDir(app)
	if _, err := os.Stat(dir); err != nil {
		return "", "", errorf(kindNotFound, "no app %q on this agent", app)
	}
	st := d.app(app)
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.running != "" {
		return "", "", errorf(kindConflict, "a deploy of %q is in progress (job %s): wait for it, or cancel it, then roll back", app, st.running)
	}
	meta, err := loadMeta(dir)
	if err != nil {
		return "", "", ioError(err)
	}
	cur := readCurrent(dir)
	exists := func(r release) bool {
		fi, err := os.Stat(filepath.Join(dir, r.Release))
		return err == nil && fi.IsDir()
	}
	if to == "" {
		idx := slices.IndexFunc(meta.Releases, func(r release) bool { return r.Release == cur })
		if idx < 0 {
			idx = len(meta.Releases)
		}
		for i := idx - 1; i >= 0; i-- {
			if r := meta.Releases[i]; r.Outcome == outcomeSuccess && exists(r) {
				to = r.Release
				break
			}
		}
		if to == "" {
			return "", "", errorf(kindNotFound, "app %q has no successful release before %s to roll back to", app, cmp.Or(cur, "(none)"))
		}
	} else {
		i := slices.IndexFunc(meta.Releases, func(r release) bool { return r.Release == to })
		switch {
		case i < 0:
			return "", "", errorf(kindNotFound, "app %q has no release %q (tentacle releases lists them)", app, to)
		case meta.Releases[i].Outcome != outcomeSuccess:
			return "", "", errorf(kindConflict, "release %q of %q did not deploy successfully (outcome %s): only a successful release can be current", to, app, meta.Releases[i].Outcome)
		case !exists(meta.Releases[i]):
			return "", "", errorf(kindNotFound, "release %q of %q is recorded but its folder is gone", to, app)
		}
	}
	if to != cur {
		if err := switchCurrent(dir, to); err != nil {
			return "", "", ioError(err)
		}
		d.log.Info("rolled back", "app", app, "current", to, "previous", cmp.Or(cur, "(none)"))
	}
	return to, cur, nil
}
