//go:build !linux

package main

// disk_other.go: early writeback and file identity where Linux's are not
// available.

import "os"

// writeback is a no-op here: the final fsync writes the whole file.
type writeback struct{}

func newWriteback(f *os.File, off int64) *writeback { return &writeback{} }

func (w *writeback) advance(n int) {}

// fileVersion identifies a version of a file for the hash cache. Without a
// portable ctime, size and mtime must do; the agent's own uploads always
// make a new file, so they are never mistaken for an older version.
func fileVersion(fi os.FileInfo) string {
	return fmtStamp(0, 0, fi.Size(), fi.ModTime().UnixNano(), 0)
}
