package main

// deploy_archive.go: safe, streaming extraction of zip, tar, tar.gz and tar.bz2
// packages into a release folder (PROTOCOL §5 "Deploys", step 1).
//
// Nothing is ever written outside the release, and that holds because
// extraction never follows a link, not because links are refused. Every file
// operation goes through an os.Root opened on the release folder (the kernel
// refuses to leave it), and every entry is checked here first, since Go's
// archive readers accept names like "../x" and leave the judgement to the
// caller: a name must be relative and clean, and no entry may pass through an
// earlier entry that is a symlink or a file. A symlink is then made as it is,
// whatever its target (a venv's "bin/python3 -> /usr/bin/python3", a
// Capistrano "log -> ../shared/log"), since nothing is written through it. A
// hard link must name an earlier file of the same archive.
//
// Cost stays bounded whatever the package: every step is linear in the
// entries and their names, honours the deploy's context (cancel, timeout,
// shutdown), and counts against the limits (entries, implied folders
// included; bytes declared and bytes written; the disk reserve). The paths
// made are remembered as 128-bit hashes, not strings (archive_names.go). A
// zip's whole central directory, overlaps included, is checked before
// anything is created (archive_zip.go); sparse tar files keep their holes
// (archive_tar.go).
//
// Streaming: a tar.gz or tar.bz2 is decompressed in one goroutine and
// written in another through a short queue of pooled buffers, so memory
// stays flat whatever the package size (archive_format.go); a zip is read in
// place through ReaderAt and its files are written by a few workers. There
// is no fsync per file: the deploy calls syncTree once for the whole release
// (syncfs on Linux) before switching current to it. On an error, extraction
// returns once every goroutine it started has ended and every file it opened
// is closed; what it wrote is left for the caller to remove.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"sync"
)

// extractLimits bound what one package may expand to, so a zip bomb or a
// header that lies about its size stops before the disk fills.
type extractLimits struct {
	MaxSize  int64 // bytes, over all entries, declared and actually written
	MaxFiles int64 // entries of any kind, and the folders they imply
	Reserve  int64 // bytes to leave free on the release's disk (0: no check)
}

// extractStats is what an extraction produced.
type extractStats struct {
	Files, Dirs, Links int64
	Bytes              int64
}

// entryKind is what a path in the release is, as far as the archive said,
// with kindMade set once it exists on disk (for folders).
type entryKind uint8

const (
	kindImplicitDir entryKind = iota + 1 // made as a parent of another entry
	kindDirEntry                         // an explicit folder entry
	kindFileEntry                        // a file or a hard link
	kindLinkEntry                        // a symlink
	kindMade        entryKind = 0x80
)

// reserveEvery is how much may be written between two measures of the free
// space, so that other writers on the disk are noticed: one statfs per 16 MiB
// costs nothing, and the reserve is still kept to within that.
const reserveEvery = 16 << 20

// extractor extracts one package into one release folder.
type extractor struct {
	ctx   context.Context
	root  *os.Root
	dest  string
	lim   extractLimits
	names *namer

	count    int64 // entries seen and folders implied
	declared int64 // bytes declared by headers
	entries  map[nameKey]entryKind
	stats    extractStats

	mu        sync.Mutex // guards written, room, sinceFree, inflight and dirs (zip workers share them)
	written   int64      // bytes actually written
	room      int64      // bytes that may still be written above the reserve
	sinceFree int64      // bytes written since the free space was measured
	inflight  int64      // bytes charged and not yet written: a measure of free space does not see them yet

	dirs     map[string]*dirHandle // open folders, so a file is one openat
	parallel bool                  // zip workers share dirs: never close one in use
}

// extractPackage extracts the package file at pkg, of format (or recognised
// from the bytes when format is ""), into dest, an existing empty folder.
// Errors are rpcErrors: forbidden naming a refused entry, too_large past a
// limit or the disk reserve, invalid_params for a corrupt, empty or foreign
// package, or ioError for the disk; or the context's error. Nothing is ever
// written outside dest.
func extractPackage(ctx context.Context, pkg, format, dest string, lim extractLimits) (extractStats, error) {
	f, err := os.Open(pkg)
	if err != nil {
		return extractStats{}, ioError(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return extractStats{}, ioError(err)
	}
	// Recognised even when given, so that an xz package sent as "tar.gz"
	// is named for what it is.
	got, err := detectFormat(f, st.Size())
	switch {
	case err != nil && (format == "" || got != ""):
		return extractStats{}, err
	case format == "":
		format = got
	}
	root, err := os.OpenRoot(dest)
	if err != nil {
		return extractStats{}, ioError(err)
	}
	defer root.Close()
	x := &extractor{ctx: ctx, root: root, dest: dest, lim: lim, names: newNamer(),
		entries: map[nameKey]entryKind{}, dirs: map[string]*dirHandle{}}
	defer x.closeDirs()
	if lim.Reserve > 0 {
		x.measureFree()
	}
	switch format {
	case formatZip:
		err = x.extractZip(f, st.Size())
	case formatTar:
		err = x.extractTar(ctxReader{ctx, f})
	case formatTarGz:
		var zr *gunzip
		if zr, err = newGunzip(f); err == nil {
			err = x.extractCompressedTar(zr)
		}
	case formatTarBz2:
		err = x.extractCompressedTar(newBunzip(f))
	default:
		return extractStats{}, errorf(kindInvalidParams, "unknown package format %q (zip, tar, tar.gz, tar.bz2)", format)
	}
	if err == nil && x.stats.Files == 0 {
		err = errEmpty()
	}
	if err != nil {
		return x.stats, x.wrap(err)
	}
	x.stats.Bytes = x.written
	return x.stats, nil
}

// errEmpty refuses a package with no file: deploying it would make an empty
// folder current (an accidentally empty CI artefact takes the app down).
func errEmpty() error {
	return errorf(kindInvalidParams, "the package is empty: nothing to deploy (it holds no file)")
}

// wrap gives an error its protocol kind: refusals and limits already have
// one, a cancel stays a cancel, OS errors go through ioError, and anything a
// reader says about the bytes is a corrupt package.
func (x *extractor) wrap(err error) error {
	var re *rpcError
	var pe *fs.PathError
	var le *os.LinkError
	switch {
	case errors.As(err, &re):
		return re
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case errors.As(err, &pe), errors.As(err, &le), isDiskFull(err):
		return ioError(err)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errorf(kindInvalidParams, "the package is truncated or corrupt: %v", err)
	}
	return errorf(kindInvalidParams, "the package is corrupt: %v", err)
}

// countEntry counts one more entry or implied folder against MaxFiles.
func (x *extractor) countEntry() error {
	if x.count++; x.count > x.lim.MaxFiles {
		return errorf(kindTooLarge, "the package has more than %d entries, counting the folders they imply (raise -extract-max-files)", x.lim.MaxFiles)
	}
	return nil
}

// admit counts an entry against the limits and checks its name: it returns
// the clean path, or "" for the release folder itself.
func (x *extractor) admit(name string, size int64) (string, bool, error) {
	if err := x.ctx.Err(); err != nil {
		return "", false, err
	}
	if err := x.countEntry(); err != nil {
		return "", false, err
	}
	clean, dir, err := checkEntryPath(name)
	if err != nil {
		return "", false, err
	}
	if size < 0 {
		return "", false, errorf(kindForbidden, "archive entry %q refused: negative size", name)
	}
	if x.declared += size; x.declared > x.lim.MaxSize {
		return "", false, errorf(kindTooLarge, "archive entry %q takes the package past %d bytes (raise -extract-max-size)", name, x.lim.MaxSize)
	}
	return clean, dir, nil
}

// claim records clean as an entry of kind, and the folders above it as
// folders: each must be one already (named by the archive or implied by an
// earlier entry) or be new, never a file or a symlink, so that no entry is
// ever made through a link. A folder entry may repeat a folder (it is
// merged); anything else at a path already taken is a duplicate. It reports
// whether the entry is new. Nothing is created here.
func (x *extractor) claim(name, clean string, kind entryKind) (bool, error) {
	if clean == "" {
		if kind == kindDirEntry {
			return false, nil
		}
		return false, errorf(kindForbidden, "archive entry %q refused: names the release folder itself", name)
	}
	fresh := true
	var err error
	x.names.walk(clean, func(prefix string, k nameKey, last bool) bool {
		prev := x.entries[k] &^ kindMade
		if !last {
			switch prev {
			case kindImplicitDir, kindDirEntry:
			case kindFileEntry:
				err = errorf(kindForbidden, "archive entry %q refused: %q is a file", name, prefix)
			case kindLinkEntry:
				err = errorf(kindForbidden, "archive entry %q refused: it would be written through the symlink %q", name, prefix)
			default:
				if err = x.countEntry(); err == nil {
					x.entries[k] = kindImplicitDir
				}
			}
			return err == nil
		}
		switch {
		case prev == 0, prev == kindImplicitDir && kind == kindDirEntry:
			x.entries[k] = x.entries[k]&kindMade | kind
		case prev == kindDirEntry && kind == kindDirEntry:
			fresh = false
		default:
			err = errorf(kindForbidden, "archive entry %q refused: duplicate of an earlier entry at the same path", name)
		}
		return true
	})
	if err == nil && fresh && kind == kindDirEntry {
		x.stats.Dirs++
	}
	return fresh && err == nil, err
}

// makeFolders creates the folders above clean that do not exist yet, and
// clean itself if self (a folder entry). Everything was claimed first.
func (x *extractor) makeFolders(clean string, self bool) error {
	var err error
	x.names.walk(clean, func(prefix string, k nameKey, last bool) bool {
		if (last && !self) || x.entries[k]&kindMade != 0 {
			return true
		}
		if err = x.root.Mkdir(prefix, 0o755); err != nil {
			return false
		}
		x.entries[k] |= kindMade
		return true
	})
	return err
}

// measureFree (x.mu held, or before any worker) measures the room left
// above the reserve. A disk that cannot report its free space is not
// refused: a write itself still fails cleanly when it is full.
func (x *extractor) measureFree() {
	x.sinceFree = 0
	free, err := freeSpace(x.dest)
	if err != nil {
		x.room = 1 << 62
		return
	}
	x.room = free - x.lim.Reserve - x.inflight
}

func (x *extractor) reserveError(name string) error {
	return errorf(kindTooLarge, "archive entry %q would leave less than the %d bytes of -disk-reserve free on the disk of %q: free some space or lower -disk-reserve",
		name, x.lim.Reserve, x.dest)
}

// needRoom refuses a file whose declared size would leave less than the
// reserve free, before it is created.
func (x *extractor) needRoom(name string, size int64) error {
	if x.lim.Reserve <= 0 {
		return nil
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if size > x.room {
		if x.measureFree(); size > x.room {
			return x.reserveError(name)
		}
	}
	return nil
}

// charge accounts n bytes about to be written for name against the size
// bound and the reserve, measuring the free space again every reserveEvery.
func (x *extractor) charge(name string, n int64) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.written += n; x.written > x.lim.MaxSize {
		return errorf(kindTooLarge, "archive entry %q takes the package past %d bytes (raise -extract-max-size)", name, x.lim.MaxSize)
	}
	if x.lim.Reserve <= 0 {
		return nil
	}
	x.room -= n
	x.inflight += n
	if x.sinceFree += n; x.room < 0 || x.sinceFree >= reserveEvery {
		if x.measureFree(); x.room < 0 {
			return x.reserveError(name)
		}
	}
	return nil
}

// landed says that n bytes charged have been written: the next measure of
// the free space sees them.
func (x *extractor) landed(n int64) {
	if x.lim.Reserve <= 0 {
		return
	}
	x.mu.Lock()
	x.inflight -= n
	x.mu.Unlock()
}

// fileMode keeps an entry's permission bits (the exec bits matter) and drops
// setuid, setgid and sticky; the umask applies on top, as with tar.
func fileMode(m fs.FileMode) fs.FileMode {
	if m = m.Perm(); m == 0 {
		return 0o644
	}
	return m | 0o400 // the agent must be able to read what it deploys
}

// fileWriter is a file being extracted; a sparse one seeks over its holes
// and is truncated to its length.
type fileWriter interface {
	io.WriteSeeker
	Truncate(size int64) error
	Close() error
}

// openIn creates clean (which must not exist) in a handle on its folder,
// kept open so a package of many files costs one openat per file. At most 64
// folders stay open: past that, a sequential extraction starts a new set,
// while parallel zip workers (which may be using a cached one) open an
// uncached handle for the one file.
func (x *extractor) openIn(clean string, mode fs.FileMode) (fileWriter, error) {
	dir, base := path.Split(clean)
	dir = strings.TrimSuffix(dir, "/")
	x.mu.Lock()
	d := x.dirs[dir]
	if d == nil {
		if len(x.dirs) >= 64 && !x.parallel {
			x.closeDirsLocked()
		}
		var err error
		if d, err = openDirHandle(x.root, dir); err != nil {
			x.mu.Unlock()
			return nil, err
		}
		if len(x.dirs) < 64 {
			x.dirs[dir] = d
		} else {
			defer d.close()
		}
	}
	x.mu.Unlock()
	return d.create(base, fileMode(mode))
}

func (x *extractor) closeDirs() {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.closeDirsLocked()
}

func (x *extractor) closeDirsLocked() {
	for k, d := range x.dirs {
		d.close()
		delete(x.dirs, k)
	}
}

// writeFile creates clean with the entry's data, exactly size bytes of r:
// more or fewer is an error. A sparse file's runs of zeros become holes,
// seeked over rather than written, as tar keeps them.
func (x *extractor) writeFile(name, clean string, mode fs.FileMode, size int64, r io.Reader, sparse bool) (err error) {
	if !sparse { // a sparse file's size is mostly holes: it is charged as written
		if err := x.needRoom(name, size); err != nil {
			return err
		}
	}
	f, err := x.openIn(clean, mode)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	bp := getBuf()
	defer putBuf(bp)
	buf := *bp
	var n, hole int64
	for n <= size { // one read past size, to see the end (a zip checks its CRC there)
		if err := x.ctx.Err(); err != nil {
			return err
		}
		m, rerr := r.Read(buf[:min(int64(len(buf)), size+1-n)])
		if n+int64(m) > size {
			return errorf(kindForbidden, "archive entry %q refused: holds more data than its header's %d bytes", name, size)
		}
		if m > 0 {
			if err := x.put(name, f, buf[:m], sparse, &hole); err != nil {
				return err
			}
			n += int64(m)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("archive entry %q: %w", name, rerr)
		}
	}
	if n < size {
		return errorf(kindInvalidParams, "archive entry %q is truncated: %d of %d bytes", name, n, size)
	}
	if hole > 0 {
		return f.Truncate(size)
	}
	return nil
}

// holeBlock is the granularity at which a sparse file's zeros become holes.
var holeBlock [4096]byte

// put writes b to f; for a sparse file, whole blocks of zeros are added to
// the pending hole instead, seeked over before the next data.
func (x *extractor) put(name string, f fileWriter, b []byte, sparse bool, hole *int64) error {
	for len(b) > 0 {
		data := b
		if sparse {
			z := blockRun(b, true)
			*hole += int64(z)
			data = b[z:][:blockRun(b[z:], false)]
			b = b[z:]
			if len(data) == 0 {
				continue
			}
			if *hole > 0 {
				if _, err := f.Seek(*hole, io.SeekCurrent); err != nil {
					return fmt.Errorf("archive entry %q: %w", name, err)
				}
				*hole = 0
			}
		}
		if err := x.charge(name, int64(len(data))); err != nil {
			return err
		}
		_, err := f.Write(data)
		x.landed(int64(len(data)))
		if err != nil {
			return fmt.Errorf("archive entry %q: %w", name, err)
		}
		b = b[len(data):]
	}
	return nil
}

// blockRun is the length of b's leading blocks that are all zeros (or, if
// !zero, that are not).
func blockRun(b []byte, zero bool) int {
	n := 0
	for n < len(b) {
		blk := b[n:min(len(b), n+len(holeBlock))]
		if bytes.Equal(blk, holeBlock[:len(blk)]) != zero {
			break
		}
		n += len(blk)
	}
	return n
}

// hardLink makes clean a hard link to target, an earlier file of the
// archive, or a copy of it where the file system cannot link (FAT, or a file
// at its link limit).
func (x *extractor) hardLink(name, clean, target string) error {
	lerr := x.root.Link(target, clean)
	if lerr == nil {
		return nil
	}
	src, err := x.root.Open(target)
	if err != nil {
		return lerr
	}
	defer src.Close()
	fi, err := src.Stat()
	if err != nil {
		return err
	}
	return x.writeFile(name, clean, fi.Mode(), fi.Size(), src, false)
}
