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
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// Release outcomes besides the job outcomes (success, failed, cancelled,
// timed_out, lost) that a finished deploy records.
const releaseRunning = "running"

// failedScriptLimit bounds DeployFailed.sh when the deploy was cancelled or
// timed out, since the job's own time is over by then.
const failedScriptLimit = 60 * time.Second

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
				"ticket", r.Ticket, "current", orNone(r.Previous), "current_was", orNone(cur))
		}
		if changed {
			if err := saveMeta(dir, meta); err != nil {
				d.log.Error("failed to save an app's releases", "app", app, "err", err)
			}
		}
	}
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
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

// deploySpec is a checked deploy.start request.
type deploySpec struct {
	app, version, sha, format string
	vars                      map[string]string
	retain                    int
	interp, ext               string
}

func init() {
	register("deploy.start", method{groups: []string{"deploy"}, mutates: true, fn: handleDeployStart})
	register("deploy.list", method{groups: []string{"read"}, fn: handleDeployList})
	register("deploy.rollback", method{groups: []string{"deploy"}, mutates: true, fn: handleDeployRollback})
}

// checkName refuses an app or version name outside PROTOCOL §5's shape.
func checkName(field, s string) error {
	if !validName(s) || !filepath.IsLocal(s) {
		return errorf(kindInvalidParams, "%s %q: want 1 to 64 of A-Z a-z 0-9 . _ -, not starting with \".\"", field, s)
	}
	return nil
}

func handleDeployStart(c *call) (any, error) {
	var p struct {
		App       string            `json:"app,required"`
		Version   string            `json:"version,required"`
		Package   string            `json:"package,required"`
		Format    string            `json:"format"`
		Variables map[string]string `json:"variables"`
		Retain    *int              `json:"retain"`
		TimeoutS  float64           `json:"timeout_s"`
		Shell     string            `json:"shell"`
	}
	if err := decodeParams(c.params, &p); err != nil {
		return nil, err
	}
	if err := checkName("app", p.App); err != nil {
		return nil, err
	}
	if err := checkName("version", p.Version); err != nil {
		return nil, err
	}
	if p.Version == "current" || p.Version == "shared" {
		return nil, errorf(kindInvalidParams, "version %q is reserved (it names the app's %s folder)", p.Version, p.Version)
	}
	switch p.Format {
	case "", formatZip, formatTar, formatTarGz, formatTarBz2:
	default:
		return nil, errorf(kindInvalidParams, "format %q: want zip, tar, tar.gz or tar.bz2 (or leave it out to recognise it)", p.Format)
	}
	names := make([]string, 0, len(p.Variables))
	for k, v := range p.Variables {
		if !validVarName(k) || strings.HasPrefix(k, "TENTACLE_") || strings.ContainsRune(v, 0) {
			return nil, errorf(kindInvalidParams, "variable %q: names are [A-Za-z_][A-Za-z0-9_]* and not TENTACLE_*, values hold no NUL", k)
		}
		names = append(names, k)
	}
	sort.Strings(names)
	retain := 5
	if p.Retain != nil {
		if retain = *p.Retain; retain < 1 {
			return nil, errorf(kindInvalidParams, "retain must be at least 1 (the new release), not %d", retain)
		}
	}
	if !(p.TimeoutS >= 0 && p.TimeoutS <= 1e9) {
		return nil, errorf(kindInvalidParams, "timeout_s must be a number of seconds from 0 (none) to 1e9, not %v", p.TimeoutS)
	}
	interp, ext, err := resolveShell(p.Shell)
	if err != nil {
		return nil, err
	}
	if ext == "" {
		ext = ".sh"
	}
	sha := strings.ToLower(p.Package)
	if len(sha) != 64 || strings.Trim(sha, "0123456789abcdef") != "" {
		return nil, errorf(kindInvalidParams, "package %q: want a SHA-256 in hex", p.Package)
	}
	// Audit the request's shape: variable names, never their values.
	c.audit = map[string]any{"app": p.App, "version": p.Version, "package": sha, "format": p.Format,
		"retain": retain, "timeout_s": p.TimeoutS, "shell": p.Shell, "variables": names}
	spec := deploySpec{app: p.App, version: p.Version, sha: sha, format: p.Format, vars: p.Variables,
		retain: retain, interp: interp, ext: ext}
	j, err := c.srv.apps.start(spec, time.Duration(p.TimeoutS*float64(time.Second)))
	if err != nil {
		return nil, err
	}
	c.audit["ticket"] = j.ticket()
	j.mu.Lock()
	state := j.state
	j.mu.Unlock()
	if state == stateDone {
		state = stateRunning
	}
	return map[string]string{"ticket": j.ticket(), "state": state}, nil
}

// start checks the package is in the cache, keeps it from pruning until the
// deploy ends, and starts the deploy job.
func (d *deployManager) start(spec deploySpec, timeout time.Duration) (*job, error) {
	if _, ok := d.pkgs.path(spec.sha); !ok {
		return nil, errorf(kindNotFound, "package %s is not in the agent's cache: push it first (tentacle push, or tentacle deploy does it)", spec.sha)
	}
	d.hold(spec.sha, 1)
	j, err := d.jobs.start(jobSpec{
		Kind:    "deploy",
		Mutex:   "deploy:" + spec.app,
		Full:    true,
		Timeout: timeout,
		Run: func(j *job) error {
			defer d.hold(spec.sha, -1)
			return d.run(j, spec)
		},
	})
	if err != nil {
		d.hold(spec.sha, -1)
	}
	return j, err
}

func (d *deployManager) hold(sha string, n int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pending[sha] += n; d.pending[sha] <= 0 {
		delete(d.pending, sha)
	}
}

// deployError is a failed deploy's error, naming the phase it failed in.
type deployError struct {
	phase string
	err   error
}

func (e *deployError) Error() string { return fmt.Sprintf("deploy failed at %s: %v", e.phase, e.err) }
func (e *deployError) Unwrap() error { return e.err }

// run is the deploy job's body.
func (d *deployManager) run(j *job, spec deploySpec) (err error) {
	dir := d.appDir(spec.app)
	shared := filepath.Join(dir, "shared")
	if err := os.MkdirAll(shared, 0o755); err != nil {
		return &deployError{"prepare", err}
	}
	st := d.app(spec.app)
	st.mu.Lock()
	meta, err := loadMeta(dir)
	if err != nil {
		st.mu.Unlock()
		return &deployError{"prepare", err}
	}
	prev := readCurrent(dir)
	name := pickRelease(dir, meta, spec.version)
	rel := release{Release: name, Version: spec.version, Package: spec.sha, Deployed: time.Now().UTC().Truncate(time.Second),
		Outcome: releaseRunning, Ticket: j.ticket(), Previous: prev}
	meta.Releases = append(meta.Releases, rel)
	// Recorded before the folder exists, so a crash from here on is found.
	if err := saveMeta(dir, meta); err != nil {
		st.mu.Unlock()
		return &deployError{"prepare", err}
	}
	st.running = j.ticket()
	st.mu.Unlock()

	relDir := filepath.Join(dir, name)
	prevDir := ""
	if prev != "" {
		prevDir = filepath.Join(dir, prev)
	}
	env := os.Environ()
	for _, k := range slices.Sorted(mapsKeys(spec.vars)) {
		env = append(env, k+"="+spec.vars[k])
	}
	env = append(env, "TENTACLE_APP="+spec.app, "TENTACLE_VERSION="+spec.version, "TENTACLE_RELEASE_DIR="+relDir,
		"TENTACLE_PREVIOUS_RELEASE_DIR="+prevDir, "TENTACLE_SHARED_DIR="+shared)

	extracted := false
	phase := "extract"
	err = func() error {
		if err := os.Mkdir(relDir, 0o755); err != nil {
			return err
		}
		pkg, ok := d.pkgs.path(spec.sha)
		if !ok {
			return errorf(kindNotFound, "package %s is no longer in the cache", spec.sha)
		}
		j.logf("extracting package %s into %q", spec.sha, relDir)
		t0 := time.Now()
		stats, err := extractPackage(j.context(), pkg, spec.format, relDir,
			extractLimits{MaxSize: d.cfg.ExtractMaxSize, MaxFiles: d.cfg.ExtractMaxFile, Reserve: d.cfg.DiskReserve})
		if err == nil {
			err = syncTree(relDir)
		}
		if err != nil {
			return err
		}
		extracted = true
		j.logf("extracted %d files, %d folders, %d symlinks, %d bytes in %s", stats.Files, stats.Dirs, stats.Links,
			stats.Bytes, time.Since(t0).Round(time.Millisecond))
		for _, s := range []string{"PreDeploy", "Deploy"} {
			phase = s + spec.ext
			if err := d.script(j, spec, relDir, phase, env); err != nil {
				return err
			}
		}
		phase = "switch"
		if err := j.context().Err(); err != nil {
			return context.Cause(j.context())
		}
		st.mu.Lock()
		err = switchCurrent(dir, name)
		st.mu.Unlock()
		if err != nil {
			return err
		}
		if prev == "" {
			j.logf("current -> %s (the app's first release)", name)
		} else {
			j.logf("current -> %s (was %s)", name, prev)
		}
		phase = "PostDeploy" + spec.ext
		return d.script(j, spec, relDir, phase, env)
	}()

	outcome := outcomeSuccess
	cur := name
	if err != nil {
		outcome = deployOutcome(j)
		st.mu.Lock()
		if readCurrent(dir) != prev {
			if serr := switchCurrent(dir, prev); serr != nil {
				j.logf("failed to put current back to %s: %v", orNone(prev), serr)
			} else {
				j.logf("current -> %s (put back)", orNone(prev))
			}
		}
		cur = readCurrent(dir)
		st.mu.Unlock()
		if extracted {
			d.failedScript(j, spec, relDir, env)
		}
	} else {
		j.logf("deployed %s %s as release %s", spec.app, spec.version, name)
	}

	st.mu.Lock()
	if meta, lerr := loadMeta(dir); lerr == nil {
		for i := range meta.Releases {
			if meta.Releases[i].Release == name {
				meta.Releases[i].Outcome = outcome
				if err != nil {
					meta.Releases[i].Phase = phase
				}
			}
		}
		if serr := saveMeta(dir, meta); serr != nil {
			j.logf("failed to record the release's outcome: %v", serr)
		}
	}
	st.running = ""
	st.mu.Unlock()
	d.retain(j, spec.app, spec.retain)

	result := map[string]any{"app": spec.app, "version": spec.version, "release": name, "release_dir": relDir,
		"previous_release_dir": nilIfEmpty(prevDir), "current": nilIfEmpty(cur)}
	if err != nil {
		result["phase"] = phase
		result["error"] = err.Error()
	}
	j.setResult(result)
	if err != nil {
		var ec exitCodeError
		if errors.As(err, &ec) {
			return err // the job's log already says which script exited how
		}
		return &deployError{phase, err}
	}
	return nil
}

func mapsKeys(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func nilIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// deployOutcome is what the job's outcome will be, for the release record.
func deployOutcome(j *job) string {
	switch cause := context.Cause(j.context()); {
	case errors.Is(cause, errJobCancelled), errors.Is(cause, errAgentShutdown):
		return outcomeCancelled
	case errors.Is(cause, errJobTimedOut):
		return outcomeTimedOut
	}
	return outcomeFailed
}

// pickRelease names a new release: the version, or version_1, _2, … when a
// folder or a record of that name exists.
func pickRelease(dir string, meta *appMeta, version string) string {
	taken := func(n string) bool {
		if slices.ContainsFunc(meta.Releases, func(r release) bool { return r.Release == n }) {
			return true
		}
		_, err := os.Lstat(filepath.Join(dir, n))
		return err == nil
	}
	name := version
	for i := 1; taken(name); i++ {
		name = fmt.Sprintf("%s_%d", version, i)
	}
	return name
}

// scriptPath is the release's script name if the package has it at its root.
func scriptPath(relDir, name string) (string, bool, error) {
	p := filepath.Join(relDir, name)
	fi, err := os.Stat(p)
	if errors.Is(err, os.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	if !fi.Mode().IsRegular() {
		return "", false, fmt.Errorf("%s is not a regular file", name)
	}
	return p, true, nil
}

// script runs one convention script, if the package has it.
func (d *deployManager) script(j *job, spec deploySpec, relDir, name string, env []string) error {
	p, ok, err := scriptPath(relDir, name)
	if err != nil || !ok {
		return err
	}
	j.logf("running %s", name)
	code, err := j.runProcess(shellArgv(spec.interp, p, nil), relDir, env)
	if err != nil {
		return fmt.Errorf("failed to run %s: %v", name, err)
	}
	j.setExitCode(code)
	if code != 0 {
		if j.context().Err() != nil {
			return context.Cause(j.context())
		}
		j.logf("%s exited with code %d", name, code)
		return exitCodeError(code)
	}
	return nil
}

// failedScript runs DeployFailed.sh if the package has one. After a cancel
// or a timeout the job's context is over, so it runs on its own clock.
func (d *deployManager) failedScript(j *job, spec deploySpec, relDir string, env []string) {
	name := "DeployFailed" + spec.ext
	p, ok, err := scriptPath(relDir, name)
	if err != nil {
		j.logf("not running %s: %v", name, err)
	}
	if !ok {
		return
	}
	argv := shellArgv(spec.interp, p, nil)
	var code int
	if j.context().Err() == nil {
		j.logf("running %s", name)
		code, err = j.runProcess(argv, relDir, env)
	} else {
		limit := failedScriptLimit
		if errors.Is(context.Cause(j.context()), errAgentShutdown) {
			limit = d.cfg.KillGrace // the agent is on its way out
		}
		j.logf("running %s (at most %s)", name, limit)
		code, err = d.runOwnClock(j, argv, relDir, env, limit)
	}
	switch {
	case err != nil:
		j.logf("failed to run %s: %v", name, err)
	case code != 0:
		j.logf("%s exited with code %d", name, code)
	}
}

// runOwnClock is j.runProcess for a job whose context has ended: the same
// process group, output and kill sequence, bounded by limit instead.
func (d *deployManager) runOwnClock(j *job, argv []string, dir string, env []string, limit time.Duration) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			j.logf("still running after %s", limit)
		}
	})
	defer stop()
	return j.runProcessUntil(ctx, argv, dir, env)
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

// releaseInfo is one release as deploy.list shows it.
type releaseInfo struct {
	Release  string `json:"release"`
	Version  string `json:"version"`
	Deployed string `json:"deployed"`
	Outcome  string `json:"outcome"`
	Package  string `json:"package"`
	Current  bool   `json:"current"`
}

// appInfo is one app as deploy.list without app shows it.
type appInfo struct {
	App     string  `json:"app"`
	Current *string `json:"current"`
}

func handleDeployList(c *call) (any, error) {
	var p struct {
		App string `json:"app"`
	}
	if err := decodeParams(c.params, &p); err != nil {
		return nil, err
	}
	d := c.srv.apps
	if p.App == "" {
		apps := []appInfo{}
		des, err := os.ReadDir(d.cfg.appsDir())
		if err != nil {
			return nil, ioError(err)
		}
		for _, de := range des {
			if de.IsDir() && validName(de.Name()) {
				apps = append(apps, appInfo{App: de.Name(), Current: strPtr(readCurrent(d.appDir(de.Name())))})
			}
		}
		return map[string]any{"apps": apps}, nil
	}
	if err := checkName("app", p.App); err != nil {
		return nil, err
	}
	dir := d.appDir(p.App)
	if _, err := os.Stat(dir); err != nil {
		return nil, errorf(kindNotFound, "no app %q on this agent", p.App)
	}
	st := d.app(p.App)
	st.mu.Lock()
	meta, err := loadMeta(dir)
	cur := readCurrent(dir)
	st.mu.Unlock()
	if err != nil {
		return nil, ioError(err)
	}
	rels := []releaseInfo{}
	for _, r := range meta.Releases {
		rels = append(rels, releaseInfo{Release: r.Release, Version: r.Version, Deployed: r.Deployed.UTC().Format(time.RFC3339),
			Outcome: r.Outcome, Package: r.Package, Current: r.Release == cur})
	}
	return map[string]any{"app": p.App, "current": strPtr(cur), "releases": rels}, nil
}

func strPtr(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func handleDeployRollback(c *call) (any, error) {
	var p struct {
		App string `json:"app,required"`
		To  string `json:"to"`
	}
	if err := decodeParams(c.params, &p); err != nil {
		return nil, err
	}
	if err := checkName("app", p.App); err != nil {
		return nil, err
	}
	c.audit = map[string]any{"app": p.App, "to": p.To}
	d := c.srv.apps
	dir := d.appDir(p.App)
	if _, err := os.Stat(dir); err != nil {
		return nil, errorf(kindNotFound, "no app %q on this agent", p.App)
	}
	st := d.app(p.App)
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.running != "" {
		return nil, errorf(kindConflict, "a deploy of %q is in progress (job %s): wait for it, or cancel it, then roll back", p.App, st.running)
	}
	meta, err := loadMeta(dir)
	if err != nil {
		return nil, ioError(err)
	}
	cur := readCurrent(dir)
	exists := func(r release) bool {
		fi, err := os.Stat(filepath.Join(dir, r.Release))
		return err == nil && fi.IsDir()
	}
	to := p.To
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
			return nil, errorf(kindNotFound, "app %q has no successful release before %s to roll back to", p.App, orNone(cur))
		}
	} else {
		i := slices.IndexFunc(meta.Releases, func(r release) bool { return r.Release == to })
		switch {
		case i < 0:
			return nil, errorf(kindNotFound, "app %q has no release %q (tentacle releases lists them)", p.App, to)
		case meta.Releases[i].Outcome != outcomeSuccess:
			return nil, errorf(kindConflict, "release %q of %q did not deploy successfully (outcome %s): only a successful release can be current", to, p.App, meta.Releases[i].Outcome)
		case !exists(meta.Releases[i]):
			return nil, errorf(kindNotFound, "release %q of %q is recorded but its folder is gone", to, p.App)
		}
	}
	c.audit["to"], c.audit["previous"] = to, cur
	if to != cur {
		if err := switchCurrent(dir, to); err != nil {
			return nil, ioError(err)
		}
		d.log.Info("rolled back", "app", p.App, "current", to, "previous", orNone(cur))
	}
	return map[string]any{"app": p.App, "current": to, "previous": nilIfEmpty(cur)}, nil
}
