package main

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
	d.hold(spec.sha, 1)
	j, fresh, err := d.jobs.start(jobSpec{
		jobOrigin: spec.origin,
		Kind:      "deploy",
		Mutex:     "deploy:" + spec.app,
		Full:      true,
		Timeout:   timeout,
		Run: func(j *job) error {
			defer d.hold(spec.sha, -1)
			return d.run(j, spec)
		},
		LogAttrs: []any{"app", spec.app, "version", spec.version},
	})
	if err != nil || !fresh { // nothing started (a retried start answers with the first one's job)
		d.hold(spec.sha, -1)
	}
	return j, fresh, err
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
	for _, k := range slices.Sorted(maps.Keys(spec.vars)) {
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
			extractLimits{MaxSize: d.cfg.ExtractMaxSize, MaxFiles: d.cfg.ExtractMaxFile})
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
				j.logf("failed to put current back to %s: %v", cmp.Or(prev, "(none)"), serr)
			} else {
				j.logf("current -> %s (put back)", cmp.Or(prev, "(none)"))
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
		"previous_release_dir": strPtr(prevDir), "current": strPtr(cur)}
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
