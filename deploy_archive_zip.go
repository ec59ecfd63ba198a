package main

// deploy_archive_zip.go: extracting a zip, read in place through its central
// directory: everything is checked before anything is created, then the
// files are written by a few workers.

import (
	"archive/zip"
	"cmp"
	"context"
	"io"
	"io/fs"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
)

// zipEntry is what the check of the central directory decided for an entry.
type zipEntry uint8

const (
	zipSkip zipEntry = iota // the release folder itself, or a repeated folder
	zipDir
	zipFile
	zipLink
)

// extractZip checks the whole central directory (names, kinds, counts,
// declared sizes, link targets, and that no two entries' data overlap) and
// only then creates the folders, writes the files with a few workers reading
// the package in place, and makes the symlinks.
func (x *extractor) extractZip(f *os.File, size int64) error {
	zr, err := zip.NewReader(f, size)
	if err != nil {
		return err
	}
	plan := make([]zipEntry, len(zr.File))
	for i, zf := range zr.File {
		if plan[i], err = x.checkZipEntry(zf); err != nil {
			return err
		}
	}
	if err := x.checkZipOverlaps(zr.File); err != nil {
		return err
	}
	if x.stats.Files == 0 {
		return errEmpty()
	}

	x.parallel = true
	type job struct {
		zf          *zip.File
		name, clean string
	}
	work := make(chan job)
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(x.ctx)
	defer cancel()
	fail := func(err error) {
		select {
		case errc <- err:
		default:
		}
		cancel()
	}
	for range min(runtime.GOMAXPROCS(0), 4) {
		wg.Go(func() {
			for j := range work {
				if err := x.zipFile(j.zf, j.name, j.clean); err != nil {
					fail(err)
				}
			}
		})
	}
	var links []int
feed:
	for i, zf := range zr.File {
		if plan[i] == zipSkip {
			continue
		}
		name := zipName(&zf.FileHeader)
		clean, _, _ := checkEntryPath(name) // checked above
		if err := x.makeFolders(clean, plan[i] == zipDir); err != nil {
			fail(err)
			break
		}
		switch plan[i] {
		case zipLink:
			links = append(links, i)
		case zipFile:
			select {
			case work <- job{zf, name, clean}:
			case <-ctx.Done():
				break feed
			}
		}
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
	}
	if err := x.ctx.Err(); err != nil {
		return err
	}
	// Symlinks last: no file of this package is written while one exists.
	for _, i := range links {
		if err := x.ctx.Err(); err != nil {
			return err
		}
		zf := zr.File[i]
		t, err := zipLinkTarget(zf)
		if err != nil {
			return err
		}
		clean, _, _ := checkEntryPath(zipName(&zf.FileHeader))
		if err := x.root.Symlink(t, clean); err != nil {
			return err
		}
	}
	return x.ctx.Err()
}

// checkZipEntry admits and claims one entry of the central directory,
// creating nothing.
func (x *extractor) checkZipEntry(zf *zip.File) (zipEntry, error) {
	name := zipName(&zf.FileHeader)
	m := zf.Mode()
	isDir := m.IsDir() || strings.HasSuffix(name, "/")
	if zf.UncompressedSize64 > 1<<62 {
		return 0, errorf(kindTooLarge, "archive entry %q declares an impossible size", name)
	}
	declared := int64(zf.UncompressedSize64)
	if isDir || m&fs.ModeSymlink != 0 {
		declared = 0
	}
	clean, _, err := x.admit(name, declared)
	if err != nil {
		return 0, err
	}
	switch {
	case isDir:
		fresh, err := x.claim(name, clean, kindDirEntry)
		if !fresh {
			return zipSkip, err
		}
		return zipDir, nil
	case m&fs.ModeSymlink != 0:
		t, err := zipLinkTarget(zf)
		if err == nil {
			err = checkLinkTarget(name, t)
		}
		if err == nil {
			_, err = x.claim(name, clean, kindLinkEntry)
		}
		x.stats.Links++
		return zipLink, err
	case m&fs.ModeType != 0:
		return 0, errorf(kindForbidden, "archive entry %q refused: %s", name, zipKind(m))
	}
	if _, err := x.claim(name, clean, kindFileEntry); err != nil {
		return 0, err
	}
	x.stats.Files++
	return zipFile, nil
}

// zipLinkTarget reads a symlink entry's target (its data), read again when
// the link is made rather than kept: 200,000 links of 4 KB must not cost
// 800 MB.
func zipLinkTarget(zf *zip.File) (string, error) {
	if zf.UncompressedSize64 > maxLinkTarget {
		return "", errorf(kindForbidden, "archive entry %q refused: symlink target longer than 4096 bytes", zipName(&zf.FileHeader))
	}
	rc, err := zf.Open()
	if err != nil {
		return "", err
	}
	defer rc.Close()
	t, err := io.ReadAll(io.LimitReader(rc, maxLinkTarget+1))
	return string(t), err
}

// checkZipOverlaps refuses a zip in which two entries' data overlap: the
// "overlapped components" that unzip refuses, the trick of a zip bomb that
// makes thousands of entries inflate the same few kilobytes (16.7 KB to
// 763 MiB, under every size bound per entry).
func (x *extractor) checkZipOverlaps(files []*zip.File) error {
	type span struct {
		start, end int64
		i          int
	}
	spans := make([]span, 0, len(files))
	for i, zf := range files {
		if err := x.ctx.Err(); err != nil {
			return err
		}
		off, err := zf.DataOffset() // reads the local header
		if err != nil {
			return err
		}
		spans = append(spans, span{off, off + int64(zf.CompressedSize64), i})
	}
	slices.SortFunc(spans, func(a, b span) int { return cmp.Compare(a.start, b.start) })
	for i := 1; i < len(spans); i++ {
		if p, s := spans[i-1], spans[i]; s.start < p.end || s.start == p.start {
			return errorf(kindForbidden, "the package is refused: zip entries %q and %q overlap (a zip bomb's trick)",
				zipName(&files[p.i].FileHeader), zipName(&files[s.i].FileHeader))
		}
	}
	return nil
}

// zipFile writes one zip file entry; the zip reader itself checks the CRC
// and refuses data past the declared size.
func (x *extractor) zipFile(zf *zip.File, name, clean string) error {
	rc, err := zf.Open()
	if err != nil {
		return err
	}
	defer rc.Close()
	return x.writeFile(name, clean, zf.Mode(), int64(zf.UncompressedSize64), rc, false)
}

func zipKind(m fs.FileMode) string {
	switch {
	case m&fs.ModeNamedPipe != 0:
		return "fifo"
	case m&(fs.ModeDevice|fs.ModeCharDevice) != 0:
		return "device"
	case m&fs.ModeSocket != 0:
		return "socket"
	}
	return "unsupported entry type"
}
