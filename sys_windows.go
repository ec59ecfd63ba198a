//go:build windows

package main

// proc_windows.go: the Windows side of job processes. Windows has no
// process groups that can be signalled and no SIGTERM: a job is stopped by
// killing its process tree at once (taskkill /T /F), with no grace period.
// Processes that have left the tree (their parent exited first) cannot be
// found and are not killed, and leftovers of a job the agent lost when it
// died are not looked for.

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"unsafe"
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

var procGetDiskFreeSpaceExW = syscall.NewLazyDLL("kernel32.dll").NewProc("GetDiskFreeSpaceExW")

// freeSpace returns the bytes available to this user on the volume holding
// dir (GetDiskFreeSpaceEx honours quotas).
func freeSpace(dir string) (int64, error) {
	p, err := syscall.UTF16PtrFromString(dir)
	if err != nil {
		return 0, err
	}
	var avail, total, free uint64
	r, _, e := procGetDiskFreeSpaceExW.Call(uintptr(unsafe.Pointer(p)),
		uintptr(unsafe.Pointer(&avail)), uintptr(unsafe.Pointer(&total)), uintptr(unsafe.Pointer(&free)))
	if r == 0 {
		return 0, e
	}
	return int64(avail), nil
}

// Windows error codes for a full disk (winerror.h).
const (
	errorHandleDiskFull syscall.Errno = 39
	errorDiskFull       syscall.Errno = 112
)

// isDiskFull reports whether err means the disk is full.
func isDiskFull(err error) bool {
	return errors.Is(err, errorDiskFull) || errors.Is(err, errorHandleDiskFull)
}

// isReadOnlyFS: Windows reports a read-only volume as access denied.
func isReadOnlyFS(err error) bool { return false }

// oNoFollow: Windows has no such open flag; making a symbolic link there
// needs a privilege the agent's users do not hand out.
const oNoFollow = 0

// fileOwner: Windows files have ACLs, not an owner uid to compare.
func fileOwner(fi os.FileInfo) (uid int, ok bool) { return -1, false }

// lockHome keeps <home>/agent.lock open for the agent's life. On Windows the
// file is opened without sharing by deleting and recreating it: a second
// agent fails to delete a file the first holds open.
func lockHome(home string) (release func(), err error) {
	path := home + string(os.PathSeparator) + "agent.lock"
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("another agent is running on home %q (it holds %q): stop it first, or use another -home", home, path)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("another agent is running on home %q (it holds %q): stop it first, or use another -home", home, path)
	}
	return func() { f.Close(); os.Remove(path) }, nil
}
