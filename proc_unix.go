//go:build !windows

package main

// proc_unix.go: process groups on Unix. Every job process leads its own
// process group, so that cancel and timeout reach the whole tree it starts
// (children, grandchildren, background jobs), not just the shell.

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
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
// zombie. On Linux it looks in /proc, because orphans that nobody reaps
// (a container whose PID 1 does not) stay as zombies and would otherwise
// count as alive until the grace period ends.
func groupAlive(pgid int) bool {
	if runtime.GOOS == "linux" {
		if procs, ok := scanProcs(); ok {
			for _, p := range procs {
				if p.pgrp == pgid && p.state != 'Z' {
					return true
				}
			}
			return false
		}
	}
	err := syscall.Kill(-pgid, 0)
	return err == nil || err == syscall.EPERM
}

// processAlive reports whether pid is a live (not zombie) process.
func processAlive(pid int) bool {
	if runtime.GOOS == "linux" {
		if p, ok := readProcStat(pid); ok {
			return p.state != 'Z'
		}
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || err == syscall.EPERM
}

// killLeftovers kills what is left of a job that was running when the agent
// died: the processes still in its process group pgid, but only those whose
// environment carries TENTACLE_TICKET=ticket, so that a process group id
// reused by an unrelated program is never touched. It needs /proc (Linux);
// elsewhere nothing can be checked safely and nothing is killed. It returns
// how many processes it killed.
func killLeftovers(pgid int, ticket string) int {
	if pgid <= 0 || runtime.GOOS != "linux" {
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
	pid, pgrp int
	state     byte
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
// where comm may itself hold spaces and parentheses.
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
	pgrp, err := strconv.Atoi(string(f[2]))
	if err != nil {
		return procInfo{}, false
	}
	return procInfo{pid: pid, pgrp: pgrp, state: f[0][0]}, true
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
