//go:build !linux

package main

// sys_nonlinux.go: where Linux's extras are missing (macOS, the BSDs,
// Windows): no early writeback, file identity by size and mtime, no
// subreaper (launchd or nobody adopts orphans), plain process start and
// wait.

import (
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
)

// startChild starts cmd.
func startChild(cmd *exec.Cmd) error { return cmd.Start() }

// waitChild waits for cmd (started by startChild).
func waitChild(cmd *exec.Cmd) error { return cmd.Wait() }

// startReaper does nothing here; see reaper_linux.go.
func startReaper(log *slog.Logger) (stop func()) { return func() {} }

// writeback is a no-op here: the final fsync writes the whole file.
type writeback struct{}

func newWriteback(f *os.File, off int64) *writeback { return &writeback{} }

func (w *writeback) advance(n int) {}

// fileVersion identifies a version of a file for the hash cache. Without a
// portable ctime, size and mtime must do; the agent's own uploads always
// make a new file, so they are never mistaken for an older version.
func fileVersion(fi os.FileInfo) fileID {
	return fileID{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
}

// cgroupSupport: there are no cgroups here, and jobs are held by process
// groups (jobs_contain.go).
func cgroupSupport() error { return errors.New("cgroups are a Linux feature") }

func cgroupV2Support() error { return cgroupSupport() }

// startInCgroup and parkThread are never reached without a cgroup host.
func startInCgroup(cmd *exec.Cmd, g *cgroup) error { return cgroupSupport() }

func parkThread(g *cgroup) error { return cgroupSupport() }

// procLimitNote: nothing caps a job's processes here (macOS has no
// prlimit, to set another process's limit).
func procLimitNote(maxProcs int) string { return "" }

func limitProcs(pid, maxProcs int) {}

// dirHandle is an open folder of the release that files are created in,
// through os.Root.
type dirHandle struct{ r *os.Root }

func openDirHandle(root *os.Root, dir string) (*dirHandle, error) {
	if dir == "" {
		dir = "."
	}
	r, err := root.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	return &dirHandle{r: r}, nil
}

func (d *dirHandle) close() error { return d.r.Close() }

// create makes base, which must not exist, and returns it open for writing.
func (d *dirHandle) create(base string, mode fs.FileMode) (fileWriter, error) {
	return d.r.OpenFile(base, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
}

// syncTree makes everything written under dir durable.
func syncTree(dir string) error { return syncTreeWalk(dir) }
