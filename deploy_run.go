package main

// deploy_run.go: one deploy job, in named phases (PROTOCOL §5 "Deploys",
// steps 1–5): prepare records the release as running; extract, PreDeploy,
// Deploy, switch and PostDeploy make it current; on an error fail undoes
// what was done; settle records the outcome and the job's result together
// and runs retention (deploy_retain.go).

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// failedScriptLimit bounds DeployFailed.sh when the deploy was cancelled or
// timed out, since the job's own time is over by then.
const failedScriptLimit = 60 * time.Second

// deploySpec is a checked deploy.start request.
type deploySpec struct {
	app, version, sha, format string
	vars                      map[string]string
	retain                    int
	interp, ext               string
	origin                    jobOrigin // ticket, client, parameters' fingerprint
}

// start checks the package is in the cache, keeps it from pruning until the
// deploy ends, and starts the deploy job.
func (d *deployManager) start(spec deploySpec, timeout time.Duration) (*job, bool, error) {
	if _, ok := d.pkgs.path(spec.sha); !ok {
		return nil, false, errorf(kindNotFound, "package %s is not in the agent's cache: push it first (tentacle push, or tentacle deploy does it)", spec.sha)
	}
	h := d.hold(spec.sha)
	j, fresh, err := d.jobs.start(jobSpec{
		jobOrigin: spec.origin,
		Kind:      "deploy",
		Mutex:     "deploy:" + spec.app,
		Full:      true,
		Timeout:   timeout,
		Run: func(j *job) error {
			defer d.unhold(h)
			return d.run(j, spec)
		},
		LogAttrs:    []any{"app", spec.app, "version", spec.version},
		BodyDecides: true, // the release record says how it went
	})
	if err != nil || !fresh { // nothing started (a retried start answers with the first one's job)
		d.unhold(h)
		return j, fresh, err
	}
	d.bindHold(h, j)
	return j, true, nil
}

// deployError is a failed deploy's error, naming the phase it failed in.
type deployError struct {
	phase string
	err   error
}

func (e *deployError) Error() string { return fmt.Sprintf("deploy failed at %s: %v", e.phase, e.err) }

func (e *deployError) Unwrap() error { return e.err }

// deployRun is one deploy job as it goes through its phases.
type deployRun struct {
	d     *deployManager
	j     *job
	spec  deploySpec
	st    *appState
	dir   string  // the app's folder
	rel   release // the release's record, once prepare has made it
	env   []string
	phase string // the phase running, or the one that failed
	whole bool   // the release is extracted, synced and marked whole
}

// run is the deploy job's body: prepare, the phases, then on an error fail,
// and in every case settle.
func (d *deployManager) run(j *job, spec deploySpec) error {
	r := &deployRun{d: d, j: j, spec: spec, st: d.app(spec.app), dir: d.appDir(spec.app)}
	err := r.prepare()
	if err == nil {
		err = r.phases()
		if err != nil {
			r.fail()
		}
	}
	return r.settle(err)
}

func (r *deployRun) relDir() string { return filepath.Join(r.dir, r.rel.Release) }

// prepare records the release as running, with the current it found,
// before anything of it is made, so that a crash from here on is found at
// the next start.
func (r *deployRun) prepare() error {
	r.phase = "prepare"
	for _, p := range []string{filepath.Join(r.dir, "shared"), filepath.Join(r.dir, wholeDir)} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			return err
		}
	}
	if err := prepareNote(r.dir); err != nil {
		return fmt.Errorf("failed to make %q: %v", filepath.Join(r.dir, noteName), err)
	}
	r.st.mu.Lock()
	defer r.st.mu.Unlock()
	meta, err := loadMeta(r.dir)
	if err != nil {
		return err
	}
	// Deploys of an app run one at a time, so a release still running
	// here ended before without a record of how (see settle).
	for i := range meta.Releases {
		if o := &meta.Releases[i]; o.Outcome == releaseRunning {
			o.Outcome, o.Phase = outcomeLost, "unrecorded: the agent could not write its outcome"
		}
	}
	name := pickRelease(r.dir, meta, r.spec.version)
	os.Remove(filepath.Join(r.dir, wholeDir, name)) // a marker left by a removal cut short
	rel := release{Release: name, Version: r.spec.version, Package: r.spec.sha, Deployed: time.Now().UTC().Truncate(time.Second),
		Outcome: releaseRunning, Ticket: r.j.ticket(), Previous: readCurrent(r.dir)}
	meta.Releases = append(meta.Releases, rel)
	if err := saveMeta(r.dir, meta); err != nil {
		return fmt.Errorf("failed to record the release in %q: %v", filepath.Join(r.dir, metaName), err)
	}
	r.rel = rel
	r.st.running = r.j.ticket()
	r.env = r.environment()
	return nil
}

// environment is the scripts' environment: the agent's, the deploy's
// variables, and the TENTACLE_* names of PROTOCOL §5 step 2.
func (r *deployRun) environment() []string {
	prevDir := ""
	if r.rel.Previous != "" {
		prevDir = filepath.Join(r.dir, r.rel.Previous)
	}
	env := os.Environ()
	for _, k := range slices.Sorted(maps.Keys(r.spec.vars)) {
		env = append(env, k+"="+r.spec.vars[k])
	}
	return append(env, "TENTACLE_APP="+r.spec.app, "TENTACLE_VERSION="+r.spec.version, "TENTACLE_RELEASE_DIR="+r.relDir(),
		"TENTACLE_PREVIOUS_RELEASE_DIR="+prevDir, "TENTACLE_SHARED_DIR="+filepath.Join(r.dir, "shared"))
}

// phases runs the deploy's steps in order, each named as the result's
// "phase", and each only while the job is still wanted: a cancel, a timeout
// or a shutdown stops the deploy before its next step.
func (r *deployRun) phases() error {
	ext := r.spec.ext
	for _, s := range []struct {
		name string
		do   func() error
	}{
		{"extract", r.extract},
		{"PreDeploy" + ext, r.script},
		{"Deploy" + ext, r.script},
		{"switch", r.switchOver},
		{"PostDeploy" + ext, r.script},
	} {
		r.phase = s.name
		if err := r.j.context().Err(); err != nil {
			return context.Cause(r.j.context())
		}
		if err := s.do(); err != nil {
			return err
		}
	}
	return nil
}

// extract unpacks the package into the release folder, syncs it, and marks
// the release whole.
func (r *deployRun) extract() error {
	if err := os.Mkdir(r.relDir(), 0o755); err != nil {
		return err
	}
	pkg, ok := r.d.pkgs.path(r.spec.sha)
	if !ok {
		return errorf(kindNotFound, "package %s is no longer in the cache", r.spec.sha)
	}
	r.j.logf("extracting package %s into %q", r.spec.sha, r.relDir())
	t0 := time.Now()
	stats, err := extractPackage(r.j.context(), pkg, r.spec.format, r.relDir(),
		extractLimits{MaxSize: r.d.cfg.ExtractMaxSize, MaxFiles: r.d.cfg.ExtractMaxFile, Reserve: r.d.cfg.DiskReserve})
	if err == nil {
		err = syncTree(r.relDir())
	}
	if err != nil {
		return err
	}
	if err := markWhole(r.dir, r.rel.Release, r.spec.sha); err != nil {
		return fmt.Errorf("failed to mark the release whole: %v", err)
	}
	r.whole = true
	r.j.logf("extracted %d files, %d folders, %d symlinks, %d bytes in %s", stats.Files, stats.Dirs, stats.Links,
		stats.Bytes, time.Since(t0).Round(time.Millisecond))
	return nil
}

// script runs the convention script the phase is named for, if the package
// has it.
func (r *deployRun) script() error {
	return r.d.script(r.j, r.spec, r.relDir(), r.phase, r.env)
}

// switchOver points current at the new release.
func (r *deployRun) switchOver() error {
	r.st.mu.Lock()
	err := switchCurrent(r.dir, r.rel.Release)
	r.st.mu.Unlock()
	if err != nil {
		return err
	}
	if r.rel.Previous == "" {
		r.j.logf("current -> %s (the app's first release)", r.rel.Release)
	} else {
		r.j.logf("current -> %s (was %s)", r.rel.Release, r.rel.Previous)
	}
	return nil
}

// fail undoes a deploy that went wrong: current goes back to where it was;
// a release that never became whole is removed, so that what a bomb or a
// full disk left does not stay; a whole one runs its DeployFailed.sh.
func (r *deployRun) fail() {
	r.st.mu.Lock()
	if readCurrent(r.dir) != r.rel.Previous {
		if err := switchCurrent(r.dir, r.rel.Previous); err != nil {
			r.j.logf("failed to put current back to %s: %v", cmp.Or(r.rel.Previous, "(none)"), err)
		} else {
			r.j.logf("current -> %s (put back)", cmp.Or(r.rel.Previous, "(none)"))
		}
	}
	r.st.mu.Unlock()
	if r.whole {
		r.d.failedScript(r.j, r.spec, r.relDir(), r.env)
		return
	}
	switch gone, err := discardRelease(r.dir, r.rel.Release); {
	case err != nil:
		r.j.logf("failed to remove the partly extracted release %s: %v", r.rel.Release, err)
	case gone:
		r.j.logf("removed the partly extracted release %s", r.rel.Release)
	}
}

// settle ends the deploy in one place: the release's record and the job's
// result are made from the same values (ended), then retention runs. A
// deploy that took effect but whose outcome cannot be recorded anywhere is
// undone and fails, since the next start would find its release running
// and undo it then, later and without a word.
func (r *deployRun) settle(err error) error {
	if rerr := r.record(err); rerr != nil {
		if err == nil {
			r.phase, err = "record", rerr
			r.j.logf("%v: undoing the deploy", rerr)
			r.fail()
			r.record(err) // most likely fails too: the next deploy or start reads the release lost
		} else {
			err = fmt.Errorf("%w; and %v", err, rerr)
		}
	}
	r.st.mu.Lock()
	if r.st.running == r.j.ticket() {
		r.st.running = ""
	}
	cur := readCurrent(r.dir)
	r.st.mu.Unlock()
	r.j.setResult(deployResult(r.spec.app, r.dir, r.ended(err), cur))
	if r.rel.Release == "" {
		return &deployError{r.phase, err}
	}
	if err == nil {
		r.j.logf("deployed %s %s as release %s", r.spec.app, r.spec.version, r.rel.Release)
	}
	r.d.retain(r.j, r.spec.app, r.spec.retain, r.rel.Release)
	var ec exitCodeError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ec):
		return err // the job's log already says which script exited how
	}
	return &deployError{r.phase, err}
}

// ended is the release's record as the deploy ends with err.
func (r *deployRun) ended(err error) release {
	rec := r.rel
	rec.Version, rec.Outcome = r.spec.version, outcomeSuccess
	if err != nil {
		rec.Outcome, rec.Phase, rec.Error = deployOutcome(r.j), r.phase, err.Error()
	}
	return rec
}

// record writes the release's outcome into .releases.json or, when that
// cannot be written (a full disk), over the app's .outcome note.
func (r *deployRun) record(err error) error {
	if r.rel.Release == "" {
		return nil // prepare recorded nothing
	}
	rec := r.ended(err)
	r.st.mu.Lock()
	defer r.st.mu.Unlock()
	meta, merr := loadMeta(r.dir)
	if merr == nil {
		if m := meta.find(rec.Release); m != nil {
			*m = rec
		}
		merr = saveMeta(r.dir, meta)
	}
	if merr == nil {
		return nil
	}
	metaPath, notePath := filepath.Join(r.dir, metaName), filepath.Join(r.dir, noteName)
	if nerr := writeNote(r.dir, rec); nerr != nil {
		return fmt.Errorf("failed to record the release's outcome in %q (%v) or in %q (%v)", metaPath, merr, notePath, nerr)
	}
	r.j.logf("failed to update %q (%v): the outcome is recorded in %q", metaPath, merr, notePath)
	return nil
}

// deployResult is a deploy job's result (PROTOCOL §5) made from its
// release's record, with current as it is now.
func deployResult(app, dir string, r release, cur string) map[string]any {
	res := map[string]any{"app": app, "version": r.Version, "release": strPtr(r.Release), "release_dir": nil,
		"previous_release_dir": nil, "current": strPtr(cur)}
	if r.Release != "" {
		res["release_dir"] = filepath.Join(dir, r.Release)
	}
	if r.Previous != "" {
		res["previous_release_dir"] = filepath.Join(dir, r.Previous)
	}
	if r.Outcome != outcomeSuccess {
		res["phase"], res["error"] = r.Phase, r.Error
	}
	return res
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
