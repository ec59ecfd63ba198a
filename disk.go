package main

// disk.go: what every concern does with the disk: atomic files, folder
// fsyncs, and the one pool of large buffers that transfers, downloads and
// extraction share.

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sync"
)

// writeFileAtomic makes path hold data, whole or not at all: a temporary
// file in the same folder, written, then committed (see commitFile).
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(f.Name())
		return err
	}
	return commitFile(f, path, perm, true)
}

// commitFile is the one atomic-file sequence (after tailscale's atomicfile):
// the written temporary f, in path's folder or on its disk, is chmodded,
// fsynced, closed and renamed over path (or, when !replace, put there only
// if nothing is: os.ErrExist otherwise), then the folder is fsynced so the
// rename itself survives a crash. On any error f is closed and removed, and
// path is as it was.
func commitFile(f *os.File, path string, perm os.FileMode, replace bool) (err error) {
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err = f.Chmod(perm); err != nil && !isWindows { // Windows has a read-only flag only
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if replace {
		err = os.Rename(f.Name(), path)
	} else {
		err = linkNew(f.Name(), path)
	}
	if err != nil {
		return err
	}
	syncDir(filepath.Dir(path))
	return nil
}

// linkNew puts tmp at path only if path does not exist (a hard link fails
// then, where a rename would replace), and removes tmp's own name.
func linkNew(tmp, path string) error {
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, os.ErrExist) {
			return err
		}
		// No hard links on this filesystem: check, then rename.
		if _, serr := os.Lstat(path); serr == nil {
			return os.ErrExist
		}
		return os.Rename(tmp, path)
	}
	return os.Remove(tmp)
}

// syncDir fsyncs a folder so a rename or create in it is durable. Errors are
// ignored: some platforms (Windows) and filesystems cannot sync a folder.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// The one pool of large buffers. A transfer's pipeline holds at most
// xferBufs buffers of xferBufSize (2 MiB in all): large enough to amortise
// the per-call costs, small enough that a buffer the reader just filled is
// still in the CPU's cache when the writer hashes and writes it (measured:
// 256 KiB costs ~5% less CPU than 1 MiB); several in flight let the reader
// run ahead.
const (
	xferBufSize = 256 << 10
	xferBufs    = 8
)

// xferPool hands out *[]byte of xferBufSize: getBuf and putBuf.
var xferPool = sync.Pool{New: func() any { b := make([]byte, xferBufSize); return &b }}

func getBuf() *[]byte { return xferPool.Get().(*[]byte) }

func putBuf(b *[]byte) { xferPool.Put(b) }

// syncTreeWalk makes an extracted release durable by walking it, where
// there is no syncfs: it fsyncs every file and folder under dir, with a few workers,
// since each fsync mostly waits on the disk.
func syncTreeWalk(dir string) error {
	paths := make(chan string, 64)
	var wg sync.WaitGroup
	var mu sync.Mutex // guards first
	var first error
	for range 8 {
		wg.Go(func() {
			for p := range paths {
				f, err := os.Open(p)
				if err == nil {
					err = f.Sync()
					f.Close()
				}
				// Windows cannot sync a folder: that is not a failure.
				if err != nil && runtime.GOOS != "windows" {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		})
	}
	werr := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&fs.ModeSymlink == 0 {
			paths <- p
		}
		return nil
	})
	close(paths)
	wg.Wait()
	if werr != nil {
		return werr
	}
	return first
}
