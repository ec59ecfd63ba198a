//go:build windows

package main

// proc_windows.go: the Windows side of job processes. Windows has no
// process groups that can be signalled and no SIGTERM: a job is stopped by
// killing its process tree at once (taskkill /T /F), with no grace period.
// Processes that have left the tree (their parent exited first) cannot be
// found and are not killed, and leftovers of a job the agent lost when it
// died are not looked for.

import (
	"os"
	"os/exec"
	"strconv"
	"syscall"
)

// setProcessGroup starts cmd in a new process group, so that a Ctrl-C meant
// for the agent's console does not reach the job.
func setProcessGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{CreationFlags: syscall.CREATE_NEW_PROCESS_GROUP}
}

// killNeedsGrace is false: Windows cannot ask a console process to stop.
const killNeedsGrace = false

// signalGroup kills the process tree of pid (force is implied).
func signalGroup(pid int, force bool) error {
	cmd := exec.Command("taskkill", "/T", "/F", "/PID", strconv.Itoa(pid))
	if err := startChild(cmd); err == nil {
		if waitChild(cmd) == nil {
			return nil
		}
	}
	if p, err := os.FindProcess(pid); err == nil {
		return p.Kill()
	}
	return nil
}

// groupAlive: the tree cannot be enumerated; once the job's own process has
// exited, nothing more can be waited for.
func groupAlive(pid int) bool { return false }

const stillActive = 259 // STILL_ACTIVE from GetExitCodeProcess

// processAlive reports whether pid is a running process.
func processAlive(pid int) bool {
	h, err := syscall.OpenProcess(syscall.PROCESS_QUERY_INFORMATION, false, uint32(pid))
	if err != nil {
		return false
	}
	defer syscall.CloseHandle(h)
	var code uint32
	if err := syscall.GetExitCodeProcess(h, &code); err != nil {
		return false
	}
	return code == stillActive
}

// killLeftovers is not supported on Windows (see the file comment).
func killLeftovers(pgid int, ticket string) int { return 0 }

// exitStatus is a finished process's exit code.
func exitStatus(ps *os.ProcessState) int {
	if ps == nil {
		return -1
	}
	return ps.ExitCode()
}
