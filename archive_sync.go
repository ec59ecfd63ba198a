package main

// archive_sync.go: making an extracted release durable by walking it, where
// there is no syncfs.

import (
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sync"
)

// syncTreeWalk fsyncs every file and folder under dir, with a few workers,
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
