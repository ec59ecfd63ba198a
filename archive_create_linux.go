package main

// archive_create_linux.go: creating an extracted file with bare syscalls.
// An *os.File costs five more syscalls per file on Linux (the poller tries,
// and fails, to register a regular file), which for a package of many small
// files is a measurable part of a deploy.

import (
	"io/fs"
	"os"
	"syscall"
)

// dirHandle is an open folder of the release, opened through the os.Root,
// that files are created in by a single-component name.
type dirHandle struct {
	f  *os.File
	fd int
}

func openDirHandle(root *os.Root, dir string) (*dirHandle, error) {
	if dir == "" {
		dir = "."
	}
	f, err := root.Open(dir)
	if err != nil {
		return nil, err
	}
	return &dirHandle{f: f, fd: int(f.Fd())}, nil
}

func (d *dirHandle) close() error { return d.f.Close() }

// create makes base, which must not exist and is never followed if it is a
// symlink, and returns it open for writing.
func (d *dirHandle) create(base string, mode fs.FileMode) (fileWriter, error) {
	for {
		fd, err := syscall.Openat(d.fd, base, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, uint32(mode))
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "create", Path: base, Err: err}
		}
		return rawFile(fd), nil
	}
}

// rawFile is a file descriptor written with bare syscalls.
type rawFile int

func (f rawFile) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := syscall.Write(int(f), p[n:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return n, &fs.PathError{Op: "write", Path: "", Err: err}
		}
		n += m
	}
	return n, nil
}

func (f rawFile) Seek(off int64, whence int) (int64, error) {
	n, err := syscall.Seek(int(f), off, whence)
	if err != nil {
		return n, &fs.PathError{Op: "seek", Path: "", Err: err}
	}
	return n, nil
}

func (f rawFile) Truncate(size int64) error {
	if err := syscall.Ftruncate(int(f), size); err != nil {
		return &fs.PathError{Op: "truncate", Path: "", Err: err}
	}
	return nil
}

func (f rawFile) Close() error {
	if err := syscall.Close(int(f)); err != nil {
		return &fs.PathError{Op: "close", Path: "", Err: err}
	}
	return nil
}
