//go:build linux

package main

// disk_linux.go: early writeback and file identity on Linux.

import (
	"os"
	"syscall"
)

// sync_file_range flags (linux/fs.h).
const (
	syncFileRangeWaitBefore = 1
	syncFileRangeWrite      = 2
	syncFileRangeWaitAfter  = 4
)

// writeback starts the disk writing a large file while it is still being
// received, so the fsync at its end is short and dirty pages stay bounded:
// every kickEvery bytes the range just written is queued for writeback
// (without waiting), and the range waitBehind bytes back is waited for.
// This is the streaming-write pattern Linux's own authors recommend; the
// final fsync remains what makes the file durable.
type writeback struct {
	fd      uintptr
	start   int64 // where the current unkicked range begins
	off     int64 // bytes written so far, from the file's start
	waited  int64 // everything before this is on disk
	disable bool  // the filesystem does not support it
}

const (
	kickEvery  = 8 << 20
	waitBehind = 64 << 20
)

func newWriteback(f *os.File, off int64) *writeback {
	return &writeback{fd: f.Fd(), start: off, off: off, waited: off}
}

// advance records n more bytes written.
func (w *writeback) advance(n int) {
	w.off += int64(n)
	if w.disable || w.off-w.start < kickEvery {
		return
	}
	if !w.syncRange(w.start, w.off-w.start, syncFileRangeWrite) {
		return
	}
	w.start = w.off
	if behind := w.off - waitBehind; behind > w.waited {
		w.syncRange(w.waited, behind-w.waited, syncFileRangeWaitBefore|syncFileRangeWrite|syncFileRangeWaitAfter)
		w.waited = behind
	}
}

func (w *writeback) syncRange(off, n int64, flags int) bool {
	_, _, e := syscall.Syscall6(syscall.SYS_SYNC_FILE_RANGE, w.fd, uintptr(off), uintptr(n), uintptr(flags), 0, 0)
	if e != 0 {
		w.disable = true // e.g. ESPIPE, EINVAL on some filesystems: the final fsync does it all
		return false
	}
	return true
}

// fileVersion identifies a version of a file for the hash cache: device,
// inode, size, mtime and ctime. ctime cannot be set by a user, so a file
// written in place always gets a new stamp.
func fileVersion(fi os.FileInfo) string {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	return fmtStamp(uint64(st.Dev), st.Ino, fi.Size(), fi.ModTime().UnixNano(), st.Ctim.Nano())
}
