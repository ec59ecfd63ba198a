//go:build windows

package main

// sys_windows.go: platform code for Windows: killing a process tree
// (taskkill), free space and the full-disk error, the home's lock.

import (
	"errors"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"
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

// groupMembers: the tree cannot be enumerated; once the job's own process
// has exited, nothing more can be waited for.
func groupMembers(pid int) (pids []int, exact bool) { return nil, false }

// groupName is how a job's log names the tree of pid.
func groupName(pid int) string { return "the process tree of process " + strconv.Itoa(pid) }

// signalProcess kills pid (Windows has no SIGTERM).
func signalProcess(pid int, force bool) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	return p.Kill()
}

// procEnvHas: another process's environment is not read on Windows.
func procEnvHas(pid int, kv string) bool { return false }

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

// openNonblock: Windows opens a named pipe without waiting anyway.
const openNonblock = 0

// fileOwner: Windows has ACLs, not an owning uid; StrictModes is left to
// the operator there.
func fileOwner(fi os.FileInfo) (uid, gid int, ok bool) { return 0, 0, false }

// fileDevice: the volume stands for the device (see spaceBook).
func fileDevice(fi os.FileInfo) (uint64, bool) { return 0, false }

// onReadOnlyFS: not looked at on Windows.
func onReadOnlyFS(f *os.File) bool { return false }

// lockFile takes an exclusive lock on path, waiting up to wait for another
// holder: the file is deleted and created anew, which fails while another
// process holds it open, and a killed holder's handle is closed by Windows.
func lockFile(path string, wait time.Duration) (release func(), err error) {
	deadline := time.Now().Add(wait)
	for {
		if err := os.Remove(path); err == nil || os.IsNotExist(err) {
			if f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600); err == nil {
				return func() { f.Close(); os.Remove(path) }, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, errLocked
		}
		time.Sleep(10 * time.Millisecond)
	}
}
