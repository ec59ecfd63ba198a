package main

// deploy.go: packages become releases (PROTOCOL §5 "Deploys").
//
// Layout of one app, under <home>/apps/<app>/:
//
//	<version>, <version>_1, …  release folders, one per deploy
//	shared/                    persists across releases; never touched here
//	current                    symlink to a release folder (a relative name)
//	.releases.json             every release: version, package, outcome, …
//	.whole/<release>           the release is whole on disk (see markWhole)
//	.outcome                   the last outcome when .releases.json could not take it
//	.removing-<release>-<hex>  a release being removed, out of sight
//
// A deploy is a job in the mutex "deploy:<app>", isolation full, so deploys
// of one app run one at a time and different apps in parallel. Its release
// is recorded as "running" (with the current it found) before anything is
// extracted, so an agent that dies mid-deploy finds it at start-up (see
// deploy_recover.go). current only ever changes by renaming a new symlink
// over it, and only to a release that is whole, so it always names one;
// a release leaves by being renamed out of sight first (deploy_retain.go),
// so no reader ever sees half of one.

import (
	"bytes"
	"cmp"
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

// Names in an app's folder besides its releases, shared and current. A
// release name never starts with ".", so none of them can be a release.
const (
	metaName       = ".releases.json"
	wholeDir       = ".whole"
	noteName       = ".outcome"
	removingPrefix = ".removing-"
)

// metaFormat is the .releases.json format: 1 has whole markers. A file
// without it was written by an agent that made none (see recoverApp).
const metaFormat = 1

// deployManager deploys packages as releases of apps.
type deployManager struct {
	cfg  *config
	log  *slog.Logger
	jobs *jobManager
	pkgs *packageCache

	mu    sync.Mutex // guards apps and holds
	apps  map[string]*appState
	holds []*packageHold // packages of deploys not finished yet
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
	Error    string    `json:"error,omitempty"`    // why it failed
}

// appMeta is the content of .releases.json, oldest release first.
type appMeta struct {
	Format   int       `json:"format,omitempty"`
	Releases []release `json:"releases"`
}

// find returns the record of release name, or nil.
func (m *appMeta) find(name string) *release {
	for i := range m.Releases {
		if m.Releases[i].Release == name {
			return &m.Releases[i]
		}
	}
	return nil
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
	d := &deployManager{cfg: cfg, log: log, jobs: jobs, pkgs: pkgs, apps: map[string]*appState{}}
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

// loadMeta reads dir's release record. A release still "running" there
// whose outcome the note holds (see writeNote) reads with that outcome, so
// every reader sees it, and the next save keeps it.
func loadMeta(dir string) (*appMeta, error) {
	m := &appMeta{Format: metaFormat}
	b, err := os.ReadFile(filepath.Join(dir, metaName))
	if errors.Is(err, os.ErrNotExist) {
		return m, nil
	}
	if err != nil {
		return nil, err
	}
	m.Format = 0
	if err := json.Unmarshal(b, m); err != nil {
		return nil, fmt.Errorf("%q is damaged: %v", filepath.Join(dir, metaName), err)
	}
	if n, ok := readNote(dir); ok {
		if r := m.find(n.Release); r != nil && r.Outcome == releaseRunning && r.Ticket == n.Ticket {
			r.Outcome, r.Phase, r.Error = n.Outcome, n.Phase, n.Error
		}
	}
	return m, nil
}

func saveMeta(dir string, m *appMeta) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, metaName), append(b, '\n'), 0o644)
}

// noteSize is the size of an app's .outcome file, made before each deploy
// so that its outcome can be written over it in place: on a full disk,
// where the temporary file a new .releases.json needs cannot be written,
// rewriting blocks the file already has still works.
const noteSize = 1024

// prepareNote makes sure dir/.outcome exists with its full size.
func prepareNote(dir string) error {
	p := filepath.Join(dir, noteName)
	if fi, err := os.Stat(p); err == nil && fi.Size() == noteSize {
		return nil
	}
	return writeFileAtomic(p, append(bytes.Repeat([]byte{' '}, noteSize-1), '\n'), 0o644)
}

// writeNote writes r's outcome over dir/.outcome in place, and syncs it.
// In place on purpose, where every other record is replaced whole: that
// would need the free space there is not. A write torn by a crash reads as
// no note (it is not JSON), and the release then reads lost.
func writeNote(dir string, r release) error {
	n := release{Release: r.Release, Ticket: r.Ticket, Outcome: r.Outcome, Phase: r.Phase, Error: r.Error}
	b, err := json.Marshal(n)
	for err == nil && len(b) >= noteSize {
		n.Error = n.Error[:cutUTF8([]byte(n.Error), len(n.Error)/2)] + "…"
		b, err = json.Marshal(n)
	}
	if err != nil {
		return err
	}
	b = append(b, bytes.Repeat([]byte{' '}, noteSize-1-len(b))...)
	f, err := os.OpenFile(filepath.Join(dir, noteName), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteAt(append(b, '\n'), 0)
	return errors.Join(err, f.Sync(), f.Close())
}

// readNote reads dir/.outcome; false if there is none, or it is blank.
func readNote(dir string) (release, bool) {
	var n release
	b, err := os.ReadFile(filepath.Join(dir, noteName))
	if err != nil || json.Unmarshal(bytes.TrimSpace(b), &n) != nil {
		return n, false
	}
	return n, n.Release != ""
}

// markWhole records that release rel of dir is whole on disk: written once
// its extraction has finished and been synced, holding the package's
// SHA-256. It lives outside the release, so a package cannot bring one.
func markWhole(dir, rel, sha string) error {
	return writeFileAtomic(filepath.Join(dir, wholeDir, rel), []byte(sha+"\n"), 0o644)
}

// isWhole reports whether r is on disk in full: its folder is there and its
// marker names its package. Only a whole release can become current.
func isWhole(dir string, r release) bool {
	b, err := os.ReadFile(filepath.Join(dir, wholeDir, r.Release))
	if err != nil || strings.TrimSpace(string(b)) != r.Package {
		return false
	}
	return isDir(filepath.Join(dir, r.Release))
}

// isDir reports whether path is a folder (not a link to one).
func isDir(path string) bool {
	fi, err := os.Lstat(path)
	return err == nil && fi.IsDir()
}

// isGood reports whether r is a release current may point at: successful
// and whole.
func isGood(dir string, r release) bool { return r.Outcome == outcomeSuccess && isWhole(dir, r) }

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
	tmp := filepath.Join(dir, ".current.tmp"+randomHex(6))
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
	if to == "" {
		idx := slices.IndexFunc(meta.Releases, func(r release) bool { return r.Release == cur })
		if idx < 0 {
			idx = len(meta.Releases)
		}
		for i := idx - 1; i >= 0; i-- {
			if r := meta.Releases[i]; isGood(dir, r) {
				to = r.Release
				break
			}
		}
		if to == "" {
			return "", "", errorf(kindNotFound, "app %q has no successful release before %s to roll back to", app, cmp.Or(cur, "(none)"))
		}
	} else {
		r := meta.find(to)
		switch {
		case r == nil:
			return "", "", errorf(kindNotFound, "app %q has no release %q (tentacle releases lists them)", app, to)
		case r.Outcome != outcomeSuccess:
			return "", "", errorf(kindConflict, "release %q of %q did not deploy successfully (outcome %s): only a successful release can be current", to, app, r.Outcome)
		case !isDir(filepath.Join(dir, to)):
			return "", "", errorf(kindNotFound, "release %q of %q is recorded but its folder is gone", to, app)
		case !isWhole(dir, *r):
			return "", "", errorf(kindConflict, "release %q of %q is not whole on disk (its extraction or its removal was cut short): roll back to another release", to, app)
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
