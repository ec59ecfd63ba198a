//go:build unix

package main

// proc_unix.go: process groups on Unix. Every job process leads its own
// process group, so that cancel and timeout reach the whole tree it starts
// (children, grandchildren, background jobs), not just the shell.

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
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

// groupAlive reports whether group pgid still has a process that is not a
// zombie. Where there is a /proc (Linux) it looks there, because orphans
// that nobody reaps (a container whose PID 1 does not) stay as zombies and
// would otherwise count as alive until the grace period ends.
func groupAlive(pgid int) bool {
	if procs, ok := scanProcs(); ok {
		for _, p := range procs {
			if p.pgrp == pgid && p.state != 'Z' {
				return true
			}
		}
		return false
	}
	err := syscall.Kill(-pgid, 0)
	return err == nil || err == syscall.EPERM
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
// died: the processes still in its process group pgid, but only those whose
// environment carries TENTACLE_TICKET=ticket, so that a process group id
// reused by an unrelated program is never touched. It needs /proc (Linux);
// without one nothing can be checked safely and nothing is killed. It
// returns how many processes it killed.
func killLeftovers(pgid int, ticket string) int {
	if pgid <= 0 {
		return 0
	}
	procs, ok := scanProcs()
	if !ok {
		return 0
	}
	want := []byte("TENTACLE_TICKET=" + ticket)
	n := 0
	for _, p := range procs {
		if p.pgrp != pgid || p.state == 'Z' {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(p.pid), "environ"))
		if err != nil {
			continue
		}
		for _, kv := range bytes.Split(env, []byte{0}) {
			if bytes.Equal(kv, want) {
				if syscall.Kill(p.pid, syscall.SIGKILL) == nil {
					n++
				}
				break
			}
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

// fileOwner is the uid that owns a file.
func fileOwner(fi os.FileInfo) (uid int, ok bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return -1, false
	}
	return int(st.Uid), true
}

// lockHome takes an exclusive lock on <home>/agent.lock, so that a second
// agent on the same home (which would mark the first one's jobs lost and
// kill them) refuses to start. The kernel drops the lock when the process
// dies, so a crash leaves nothing stale.
func lockHome(home string) (release func(), err error) {
	path := home + string(os.PathSeparator) + "agent.lock"
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("failed to open lock %q: %v", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another agent is running on home %q (it holds %q): stop it first, or use another -home", home, path)
	}
	return func() { f.Close() }, nil
}
