//go:build !windows

package main

// disk_unix.go: free space and the full-disk error on Unix systems.

import (
	"errors"
	"syscall"
)

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
