//go:build unix

package main

// sys_unix.go: platform code for every Unix (Linux, macOS, the BSDs):
// process groups and their signals (where there are no cgroups, a job's
// process group is what stops its whole tree; cgroups or not, it keeps a
// terminal's signals away from jobs), /proc where there is one, free space
// and the full-disk error, the home's lock (flock).

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"
)

// setProcessGroup makes cmd lead a new process group.
func setProcessGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

// signalGroup sends SIGTERM, or SIGKILL when force, to process group pgid.
// A group that is already gone is not an error.
func signalGroup(pgid int, force bool) error {
	sig := syscall.SIGTERM
	if force {
		sig = syscall.SIGKILL
	}
	if err := syscall.Kill(-pgid, sig); err != nil && err != syscall.ESRCH {
		return err
	}
	return nil
}

// killNeedsGrace is true where a process can be asked to stop (SIGTERM)
// before it is killed.
const killNeedsGrace = true

// groupMembers lists the live (not zombie) processes of group pgid, never
// the agent. Where there is a /proc (Linux) it looks there, because orphans
// that nobody reaps (a container whose PID 1 does not) stay zombies and
// would otherwise count as alive until the grace period ends. Without one
// (macOS) the members cannot be listed: exact is false, and a live group
// reads as its leader alone.
func groupMembers(pgid int) (pids []int, exact bool) {
	if syscall.Kill(-pgid, 0) == syscall.ESRCH {
		return nil, true // not a process left: spare the scan of /proc
	}
	procs, ok := scanProcs()
	if !ok {
		return []int{pgid}, false
	}
	self := os.Getpid()
	for _, p := range procs {
		if p.pgrp == pgid && p.state != 'Z' && p.pid != self {
			pids = append(pids, p.pid)
		}
	}
	return pids, true
}

// groupName is how a job's log names process group pgid.
func groupName(pgid int) string { return "process group " + strconv.Itoa(pgid) }

// signalProcess sends SIGTERM, or SIGKILL when force, to pid.
func signalProcess(pid int, force bool) error {
	sig := syscall.SIGTERM
	if force {
		sig = syscall.SIGKILL
	}
	return syscall.Kill(pid, sig)
}

// procEnvHas reports whether pid's environment (as it was at its exec)
// holds kv, "NAME=value". Without /proc it never does.
func procEnvHas(pid int, kv string) bool {
	path := filepath.Join("/proc", strconv.Itoa(pid), "environ")
	// While a process execs, its environ reads as empty for a moment: read
	// again (for up to 50 ms) before taking an empty one for an answer.
	for range 50 {
		env, err := os.ReadFile(path)
		if err != nil {
			return false
		}
		if len(env) > 0 {
			return slices.ContainsFunc(bytes.Split(env, []byte{0}), func(b []byte) bool { return string(b) == kv })
		}
		time.Sleep(time.Millisecond)
	}
	return false
}

// processAlive reports whether pid is a live (not zombie) process.
func processAlive(pid int) bool {
	if p, ok := readProcStat(pid); ok {
		return p.state != 'Z'
	}
	if _, err := os.Stat("/proc/self/stat"); err == nil {
		return false // a /proc without the pid: it is gone
	}
	err := syscall.Kill(pid, 0)
	return err == nil || err == syscall.EPERM
}

// killLeftovers kills what is left of a job that was running when the agent
// died, except the processes that asked to keep running: what is in the
// job's cgroups (killLostCgroups), then what is still in its process group
// pgid, but only processes whose environment carries TENTACLE_TICKET=ticket,
// so that a process group id reused by an unrelated program is never
// touched. The latter needs /proc (Linux); without one nothing can be
// checked safely and nothing is killed. It returns how many processes it
// killed.
func killLeftovers(pgid int, ticket string) int {
	n := killLostCgroups(ticket)
	if pgid <= 0 {
		return n
	}
	pids, exact := groupMembers(pgid)
	if !exact {
		return n
	}
	for _, p := range pids {
		if procEnvHas(p, "TENTACLE_TICKET="+ticket) && !keptRunning(p) && syscall.Kill(p, syscall.SIGKILL) == nil {
			n++
		}
	}
	return n
}

// procInfo is what /proc/<pid>/stat says about a process.
type procInfo struct {
	pid, ppid, pgrp int
	state           byte
}

// scanProcs lists the processes in /proc.
func scanProcs() ([]procInfo, bool) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, false
	}
	var out []procInfo
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := readProcStat(pid); ok {
			out = append(out, p)
		}
	}
	return out, true
}

// readProcStat parses /proc/<pid>/stat: "pid (comm) state ppid pgrp …",
// where comm may itself hold spaces and parentheses, so the fields are found
// after the last ')'. This is the one /proc/PID/stat parser: the job kill
// sequence and the orphan reaper both use it.
func readProcStat(pid int) (procInfo, bool) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return procInfo{}, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procInfo{}, false
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 3 || len(f[0]) != 1 {
		return procInfo{}, false
	}
	ppid, err1 := strconv.Atoi(string(f[1]))
	pgrp, err2 := strconv.Atoi(string(f[2]))
	if err1 != nil || err2 != nil {
		return procInfo{}, false
	}
	return procInfo{pid: pid, ppid: ppid, pgrp: pgrp, state: f[0][0]}, true
}

// exitStatus is a finished process's exit code, or 128 + the signal that
// killed it, as shells report it.
func exitStatus(ps *os.ProcessState) int {
	if ps == nil {
		return -1
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

// freeSpace returns the bytes an unprivileged writer may still use on the
// filesystem holding dir (statfs's f_bavail: root's reserved blocks are not
// counted, so an agent running as root still leaves them alone).
func freeSpace(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(uint64(st.Bavail) * uint64(st.Bsize)), nil
}

// isDiskFull reports whether err means the disk (or the user's quota) is
// full.
func isDiskFull(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// isReadOnlyFS reports a read-only file system (a --read-only container
// without a volume for the home).
func isReadOnlyFS(err error) bool { return errors.Is(err, syscall.EROFS) }

// oNoFollow makes an open fail on a symbolic link rather than follow it.
const oNoFollow = syscall.O_NOFOLLOW

// openNonblock opens a FIFO or a device without waiting for its other end,
// so that file.* can refuse it at once.
const openNonblock = syscall.O_NONBLOCK

// fileOwner is the uid and gid that own fi, for StrictModes.
func fileOwner(fi os.FileInfo) (uid, gid int, ok bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, false
	}
	return int(st.Uid), int(st.Gid), true
}

// fileDevice is the device (file system) fi lies on.
func fileDevice(fi os.FileInfo) (uint64, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return uint64(st.Dev), true
}

// onReadOnlyFS reports whether the open file f lies on a read-only file
// system (ST_RDONLY on Linux, MNT_RDONLY on macOS: both 1).
func onReadOnlyFS(f *os.File) bool {
	var st syscall.Statfs_t
	if err := syscall.Fstatfs(int(f.Fd()), &st); err != nil {
		return false
	}
	return uint64(st.Flags)&1 != 0
}

// lockFile takes an exclusive lock on path (created if need be), waiting up
// to wait for another holder to let go. The kernel drops the lock when the
// process dies, so a killed holder leaves nothing stale.
func lockFile(path string, wait time.Duration) (release func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(wait)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if err != syscall.EWOULDBLOCK || time.Now().After(deadline) {
			f.Close()
			return nil, errLocked
		}
		time.Sleep(10 * time.Millisecond)
	}
}
