package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// drainDelay is how long a job's output is still read after its process has
// exited while something else (a background process it started) holds the
// output open. Past it the pipes are closed, so a job always ends.
const drainDelay = 2 * time.Second

// runProcess runs argv in its own process group with stdin /dev/null and
// env as its whole environment (plus TENTACLE_TICKET and TENTACLE_WORK_DIR),
// its stdout and stderr lines going into the job's log. When the job's
// context ends the group gets SIGTERM, then SIGKILL after cfg.KillGrace.
// The exit code of a process killed by a signal is 128 + the signal. err
// is set only when the process could not be started or waited for.
func (j *job) runProcess(argv []string, dir string, env []string) (exitCode int, err error) {
	return j.runProcessUntil(j.context(), argv, dir, env)
}

// runProcessUntil is runProcess, stopped when ctx (rather than the job's
// context) ends: a deploy's DeployFailed.sh runs on its own clock after the
// job's time is over.
func (j *job) runProcessUntil(ctx context.Context, argv []string, dir string, env []string) (exitCode int, err error) {
	if len(argv) == 0 {
		return -1, errors.New("no command to run")
	}
	if ctx.Err() != nil {
		return -1, context.Cause(ctx)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	// exec.Cmd keeps the last of duplicate keys, so these two always win.
	cmd.Env = append(slices.Clip(env), "TENTACLE_TICKET="+j.id, "TENTACLE_WORK_DIR="+j.dir)
	setProcessGroup(cmd)
	stdout := &lineWriter{log: j.log, stream: "stdout", err: j.logWriteFailed}
	stderr := &lineWriter{log: j.log, stream: "stderr", err: j.logWriteFailed}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.WaitDelay = drainDelay
	if err := startChild(cmd); err != nil {
		return -1, err
	}
	pid := cmd.Process.Pid
	j.mu.Lock()
	j.pgid = pid
	j.mu.Unlock()
	if err := j.save(); err != nil {
		j.m.log.Error("failed to save job state", "ticket", j.id, "err", err)
	}
	done := make(chan error, 1)
	go func() { done <- waitChild(cmd) }()
	var werr error
	select {
	case werr = <-done:
	case <-ctx.Done():
		werr = j.stopGroup(pid, done)
	}
	stdout.flush()
	stderr.flush()
	j.mu.Lock()
	j.pgid = 0
	j.mu.Unlock()
	if errors.Is(werr, exec.ErrWaitDelay) {
		j.logf("stopped reading output %s after the process exited: a background process still holds it open", drainDelay)
		werr = nil
	}
	var ee *exec.ExitError
	if werr != nil && !errors.As(werr, &ee) {
		return -1, werr
	}
	return exitStatus(cmd.ProcessState), nil
}

// stopGroup stops process group pgid after the job's context ended: SIGTERM,
// then SIGKILL once KillGrace has passed with the group still alive. It
// returns the Wait result of the group's leader.
func (j *job) stopGroup(pgid int, done <-chan error) error {
	if !killNeedsGrace {
		j.logf("killing the process tree of process %d", pgid)
		signalGroup(pgid, true)
		return <-done
	}
	j.logf("sending SIGTERM to process group %d", pgid)
	if err := signalGroup(pgid, false); err != nil {
		j.logf("failed to signal process group %d: %v", pgid, err)
	}
	grace := time.NewTimer(j.m.cfg.KillGrace)
	defer grace.Stop()
	var werr error
	exited := false
	var poll <-chan time.Time
	for {
		select {
		case werr = <-done:
			exited = true
			if !groupAlive(pgid) {
				return werr
			}
			// The leader is gone but others of its group are not: see
			// whether they go within the grace period.
			t := time.NewTicker(50 * time.Millisecond)
			defer t.Stop()
			poll = t.C
			done = nil
			continue
		case <-poll:
			if !groupAlive(pgid) {
				return werr
			}
			continue
		case <-grace.C:
		}
		break
	}
	j.logf("still running %s after SIGTERM: sending SIGKILL to process group %d", j.m.cfg.KillGrace, pgid)
	signalGroup(pgid, true)
	if !exited {
		werr = <-done
	}
	return werr
}

// resolveShell turns script.start's shell into an interpreter path and the
// script file's extension. The default is sh, or PowerShell where there is
// no sh (Windows).
func resolveShell(shell string) (path, ext string, err error) {
	names := []string{shell}
	if shell == "" {
		names = []string{"sh", "pwsh", "powershell"}
	}
	switch shell {
	case "", "sh", "bash", "pwsh", "powershell":
		for _, n := range names {
			if p, ok := lookShell(n); ok {
				return p, shellExt(n), nil
			}
		}
		if shell == "" {
			return "", "", errorf(kindInvalidParams, "no shell installed: the agent found none of sh, pwsh, powershell on PATH or in %s", strings.Join(shellDirs, ", "))
		}
		return "", "", errorf(kindInvalidParams, "shell %q is not installed on this agent (installed: %s)", shell, strings.Join(availableShells(), ", "))
	}
	if !filepath.IsAbs(shell) {
		return "", "", errorf(kindInvalidParams, "shell %q: want sh, bash, pwsh or an absolute interpreter path", shell)
	}
	fi, err := os.Stat(shell)
	if err != nil || fi.IsDir() {
		return "", "", errorf(kindInvalidParams, "shell %q is not installed on this agent", shell)
	}
	if _, err := exec.LookPath(shell); err != nil {
		return "", "", errorf(kindInvalidParams, "shell %q is not executable", shell)
	}
	return shell, shellExt(filepath.Base(shell)), nil
}

func shellExt(name string) string {
	name = strings.TrimSuffix(strings.ToLower(name), ".exe")
	switch name {
	case "pwsh", "powershell":
		return ".ps1"
	case "sh", "bash", "dash", "zsh", "ksh":
		return ".sh"
	}
	return ""
}

// shellArgv is the command that runs script with interpreter.
func shellArgv(interp, script string, args []string) []string {
	argv := []string{interp}
	if shellExt(filepath.Base(interp)) == ".ps1" {
		argv = append(argv, "-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-File")
	}
	return append(append(argv, script), args...)
}

// availableShells lists the shells script.start accepts that are installed.
func availableShells() []string {
	out := []string{} // [] rather than null in info when there is none
	for _, s := range []string{"sh", "bash", "pwsh"} {
		if _, ok := lookShell(s); ok {
			out = append(out, s)
		}
	}
	return out
}

// shellDirs are where a shell is looked for when PATH does not find it: an
// agent started with an empty or no PATH (env -i, a bare container or
// service manager) must still find /bin/sh.
var shellDirs = []string{"/bin", "/usr/bin", "/usr/local/bin", "/sbin", "/usr/sbin"}

// lookShell finds the shell name on PATH, else in shellDirs.
func lookShell(name string) (string, bool) {
	if p, err := exec.LookPath(name); err == nil {
		return p, true
	}
	for _, dir := range shellDirs {
		if p, err := exec.LookPath(filepath.Join(dir, name)); err == nil {
			return p, true
		}
	}
	return "", false
}
