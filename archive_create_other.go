//go:build !linux

package main

// archive_create_other.go: creating an extracted file through os.Root.

import (
	"io/fs"
	"os"
)

// dirHandle is an open folder of the release that files are created in.
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
