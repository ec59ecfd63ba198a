package main

// archive.go: safe, streaming extraction of zip, tar and tar.gz packages into
// a release folder (PROTOCOL §5 "Deploys", step 1).
//
// Safe by construction, twice over: every file operation goes through an
// os.Root opened on the release folder (the kernel refuses to leave it), and
// every entry is checked here first, because Go's archive readers accept
// names like "../x" and link targets like "/etc" and leave the judgement to
// the caller. Symlinks are created last, after every file and folder, so
// nothing is ever written through one; each must resolve inside the release,
// following the archive's other symlinks (see linkEscapes).
//
// Streaming: a tar.gz is decompressed in one goroutine and written in another
// through a short queue of pooled buffers, so memory stays flat whatever the
// package size; a zip is read in place through ReaderAt and its files are
// written by a few workers. There is no fsync per file: the deploy calls
// syncTree once for the whole release (syncfs on Linux) before switching
// current to it.

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"unicode/utf8"
)

// extractLimits bound what one package may expand to, so a zip bomb or a
// header that lies about its size stops before the disk fills.
type extractLimits struct {
	MaxSize  int64 // bytes, over all entries, declared and actually written
	MaxFiles int64 // entries of any kind
}

// extractStats is what an extraction produced.
type extractStats struct {
	Files, Dirs, Links int64
	Bytes              int64
}

// Package formats (PROTOCOL §5 deploy.start "format").
const (
	formatZip   = "zip"
	formatTar   = "tar"
	formatTarGz = "tar.gz"
)

// maxLinkTarget bounds a symlink's target (PATH_MAX on Linux).
const maxLinkTarget = 4096

// detectFormat recognises a package from its first bytes: the zip local
// header or empty-archive signature, the gzip magic, or a tar header (the
// "ustar" magic, or failing that a header whose checksum adds up, for
// pre-POSIX archives).
func detectFormat(r io.ReaderAt) (string, error) {
	head := make([]byte, 512)
	n, err := r.ReadAt(head, 0)
	if err != nil && err != io.EOF {
		return "", err
	}
	head = head[:n]
	switch {
	case bytes.HasPrefix(head, []byte("PK\x03\x04")), bytes.HasPrefix(head, []byte("PK\x05\x06")):
		return formatZip, nil
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		return formatTarGz, nil
	case n == 512 && (bytes.Equal(head[257:262], []byte("ustar")) || tarChecksumOK(head)):
		return formatTar, nil
	}
	return "", errorf(kindInvalidParams, "the package is not a zip, tar or tar.gz archive (pass \"format\" if it is one)")
}

// tarChecksumOK checks a 512-byte tar header's checksum field.
func tarChecksumOK(h []byte) bool {
	field := strings.Trim(string(h[148:156]), " \x00")
	if field == "" {
		return false
	}
	var want int64
	for _, c := range field {
		if c < '0' || c > '7' {
			return false
		}
		want = want*8 + int64(c-'0')
	}
	var sum int64
	for i, c := range h {
		if i >= 148 && i < 156 {
			c = ' '
		}
		sum += int64(c)
	}
	return sum == want
}

// checkEntryPath turns an archive entry's name into a clean relative path
// with "/" separators, or refuses it: empty names, absolute paths, drive
// letters, ".." elements, backslashes, NUL and control characters, invalid
// UTF-8, and (on Windows) reserved names. dir reports a trailing "/".
func checkEntryPath(name string) (clean string, dir bool, err error) {
	bad := func(why string) (string, bool, error) {
		return "", false, errorf(kindForbidden, "archive entry %q refused: %s", name, why)
	}
	if name == "" {
		return bad("empty name")
	}
	if len(name) > maxLinkTarget {
		return bad("name longer than 4096 bytes")
	}
	if !utf8.ValidString(name) {
		return bad("name is not valid UTF-8")
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return bad("control character in name")
		}
		if r == '\\' {
			return bad("backslash in name (a Windows path separator)")
		}
	}
	if strings.HasPrefix(name, "/") || hasDriveLetter(name) {
		return bad("absolute path")
	}
	dir = strings.HasSuffix(name, "/")
	var parts []string
	for p := range strings.SplitSeq(name, "/") {
		switch p {
		case "", ".":
		case "..":
			return bad(`".." element`)
		default:
			parts = append(parts, p)
		}
	}
	if len(parts) == 0 {
		if dir { // "./" is the release folder itself: nothing to do
			return "", true, nil
		}
		return bad("empty name")
	}
	clean = strings.Join(parts, "/")
	if !filepath.IsLocal(filepath.FromSlash(clean)) {
		return bad("not a local path on this system")
	}
	return clean, dir, nil
}

// hasDriveLetter reports a Windows volume prefix such as "C:".
func hasDriveLetter(s string) bool {
	return len(s) >= 2 && s[1] == ':' && (s[0]|0x20 >= 'a' && s[0]|0x20 <= 'z')
}

// checkLinkTarget refuses symlink targets that are absolute or malformed;
// whether a relative one stays inside is decided once all are known.
func checkLinkTarget(name, target string) error {
	bad := func(why string) error {
		return errorf(kindForbidden, "archive entry %q refused: symlink %s", name, why)
	}
	switch {
	case target == "":
		return bad("with an empty target")
	case len(target) > maxLinkTarget:
		return bad("target longer than 4096 bytes")
	case !utf8.ValidString(target):
		return bad("target is not valid UTF-8")
	case strings.HasPrefix(target, "/") || hasDriveLetter(target):
		return bad(fmt.Sprintf("to %q points outside the release (absolute target)", target))
	}
	for _, r := range target {
		if r < 0x20 || r == 0x7f || r == '\\' {
			return bad("target holds a control character or a backslash")
		}
	}
	return nil
}

// linkEscapes reports whether the symlink at link (a clean path), with the
// archive's symlinks links (path → target), resolves outside the release.
// It resolves the way the kernel does, over the tree the archive describes:
// ".." after a component that is itself a symlink climbs from that link's
// target, not lexically, so "s -> ." then "t -> s/../x" is caught. A chain
// longer than 40 hops (Linux's limit) counts as an escape.
func linkEscapes(links map[string]string, link string) bool {
	parts := strings.Split(link, "/")
	parts = parts[:len(parts)-1] // the folder holding the link
	queue := strings.Split(links[link], "/")
	hops := 0
	for len(queue) > 0 {
		c := queue[0]
		queue = queue[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(parts) == 0 {
				return true
			}
			parts = parts[:len(parts)-1]
			continue
		}
		parts = append(parts, c)
		if t, ok := links[strings.Join(parts, "/")]; ok {
			if hops++; hops > 40 || strings.HasPrefix(t, "/") || hasDriveLetter(t) {
				return true
			}
			parts = parts[:len(parts)-1]
			queue = append(strings.Split(t, "/"), queue...)
		}
	}
	return false
}

// entryKind is what a path in the release is, as far as the archive said.
type entryKind uint8

const (
	kindImplicitDir entryKind = iota + 1 // made as a parent of another entry
	kindDirEntry                         // an explicit folder entry
	kindFileEntry
	kindLinkEntry
)

// copyBufs are the buffers file data is copied through and, for tar.gz, the
// blocks handed from the decompressing goroutine to the writing one.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// extractor extracts one package into one release folder.
type extractor struct {
	ctx  context.Context
	root *os.Root
	dest string
	lim  extractLimits
	fold bool // case-insensitive file system: compare names folded

	mu       sync.Mutex // guards written (zip workers add to it)
	written  int64      // bytes actually written
	count    int64      // entries seen
	declared int64      // bytes declared by headers
	entries  map[string]entryKind
	links    map[string]string // clean path → target, created at the end
	stats    extractStats

	dirs     map[string]*dirHandle // open folders, so a file is one openat
	parallel bool                  // zip workers share dirs: never close one in use
}

// extractPackage extracts the package file at pkg, of format (or recognised
// from the bytes when format is ""), into dest, an existing empty folder.
// Errors are rpcErrors: forbidden naming a refused entry, too_large past a
// limit, invalid_params for a corrupt archive, or ioError for the disk.
// Nothing is ever written outside dest.
func extractPackage(ctx context.Context, pkg, format, dest string, lim extractLimits) (extractStats, error) {
	f, err := os.Open(pkg)
	if err != nil {
		return extractStats{}, ioError(err)
	}
	defer f.Close()
	if format == "" {
		if format, err = detectFormat(f); err != nil {
			return extractStats{}, err
		}
	}
	root, err := os.OpenRoot(dest)
	if err != nil {
		return extractStats{}, ioError(err)
	}
	defer root.Close()
	x := &extractor{ctx: ctx, root: root, dest: dest, lim: lim,
		fold:    runtime.GOOS == "darwin" || runtime.GOOS == "windows",
		entries: map[string]entryKind{}, links: map[string]string{}, dirs: map[string]*dirHandle{}}
	defer x.closeDirs()
	switch format {
	case formatZip:
		st, serr := f.Stat()
		if serr != nil {
			return extractStats{}, ioError(serr)
		}
		err = x.extractZip(f, st.Size())
	case formatTar:
		err = x.extractTar(f)
	case formatTarGz:
		err = x.extractTarGz(f)
	default:
		return extractStats{}, errorf(kindInvalidParams, "unknown package format %q (zip, tar, tar.gz)", format)
	}
	if err == nil {
		err = x.makeLinks()
	}
	if err != nil {
		return x.stats, x.wrap(err)
	}
	x.stats.Bytes = x.written
	return x.stats, nil
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

// key is an entry's name for duplicate detection.
func (x *extractor) key(clean string) string {
	if x.fold {
		return strings.ToLower(clean)
	}
	return clean
}

// admit counts an entry against the limits and checks its name: it returns
// the clean path, or "" for the release folder itself.
func (x *extractor) admit(name string, size int64) (string, bool, error) {
	if err := x.ctx.Err(); err != nil {
		return "", false, err
	}
	if x.count++; x.count > x.lim.MaxFiles {
		return "", false, errorf(kindTooLarge, "the package has more than %d entries (raise -extract-max-files)", x.lim.MaxFiles)
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

// place claims clean for an entry of kind: its parent folders are made (or
// must already be folders), and nothing else may have claimed it, except
// that an explicit folder entry may confirm an implicit one.
func (x *extractor) place(name, clean string, kind entryKind) error {
	if clean == "" {
		if kind == kindDirEntry {
			return nil
		}
		return errorf(kindForbidden, "archive entry %q refused: names the release folder itself", name)
	}
	if err := x.parents(name, clean); err != nil {
		return err
	}
	k := x.key(clean)
	switch prev := x.entries[k]; {
	case prev == 0:
	case prev == kindImplicitDir && kind == kindDirEntry:
		x.entries[k] = kindDirEntry
		return nil
	default:
		return errorf(kindForbidden, "archive entry %q refused: duplicate of an earlier entry at the same path", name)
	}
	x.entries[k] = kind
	if kind == kindDirEntry {
		x.stats.Dirs++
		return x.root.Mkdir(clean, 0o755)
	}
	return nil
}

// parents makes the folders above clean, refusing a path that runs through
// an entry that is a file or a symlink.
func (x *extractor) parents(name, clean string) error {
	for i := 0; i < len(clean); i++ {
		if clean[i] != '/' {
			continue
		}
		p := clean[:i]
		switch x.entries[x.key(p)] {
		case kindImplicitDir, kindDirEntry:
			continue
		case kindFileEntry:
			return errorf(kindForbidden, "archive entry %q refused: %q is a file", name, p)
		case kindLinkEntry:
			return errorf(kindForbidden, "archive entry %q refused: it would be written through the symlink %q", name, p)
		}
		x.entries[x.key(p)] = kindImplicitDir
		if err := x.root.Mkdir(p, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// fileMode keeps an entry's permission bits (the exec bits matter) and drops
// setuid, setgid and sticky; the umask applies on top, as with tar.
func fileMode(m fs.FileMode) fs.FileMode {
	if m = m.Perm(); m == 0 {
		return 0o644
	}
	return m | 0o400 // the agent must be able to read what it deploys
}

// fileWriter is a file being extracted.
type fileWriter interface {
	io.Writer
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

// writerOnly hides *os.File's ReadFrom, so io.CopyBuffer uses the pooled
// buffer instead of allocating one per file.
type writerOnly struct{ io.Writer }

// writeFile creates clean with the entry's data, checking the bytes actually
// read against the header's size and the package's total bound.
func (x *extractor) writeFile(name, clean string, mode fs.FileMode, size int64, r io.Reader) (err error) {
	f, err := x.openIn(clean, mode)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	n, err := io.CopyBuffer(writerOnly{f}, io.LimitReader(r, size+1), *bp)
	x.mu.Lock()
	x.written += n
	over := x.written > x.lim.MaxSize
	x.mu.Unlock()
	switch {
	case err != nil:
		return fmt.Errorf("archive entry %q: %w", name, err)
	case n > size:
		return errorf(kindForbidden, "archive entry %q refused: holds more data than its header's %d bytes", name, size)
	case n < size:
		return errorf(kindInvalidParams, "archive entry %q is truncated: %d of %d bytes", name, n, size)
	case over:
		return errorf(kindTooLarge, "archive entry %q takes the package past %d bytes (raise -extract-max-size)", name, x.lim.MaxSize)
	}
	return nil
}

// addLink records a symlink, created by makeLinks once everything else is.
func (x *extractor) addLink(name, clean, target string) error {
	if err := checkLinkTarget(name, target); err != nil {
		return err
	}
	if err := x.place(name, clean, kindLinkEntry); err != nil {
		return err
	}
	x.links[clean] = target
	return nil
}

// makeLinks checks every symlink against the whole tree and creates them.
func (x *extractor) makeLinks() error {
	for l, t := range x.links {
		if linkEscapes(x.links, l) {
			return errorf(kindForbidden, "archive entry %q refused: symlink to %q resolves outside the release", l, t)
		}
	}
	for l, t := range x.links {
		if err := x.root.Symlink(t, l); err != nil {
			return err
		}
		x.stats.Links++
	}
	return nil
}

// extractTar extracts a plain tar stream.
func (x *extractor) extractTar(r io.Reader) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := x.tarEntry(tr, h); err != nil {
			return err
		}
	}
}

// tarEntry extracts one tar entry. Only files, folders and symlinks are
// accepted; tar's own extension headers never reach here.
func (x *extractor) tarEntry(tr *tar.Reader, h *tar.Header) error {
	size := h.Size
	if h.Typeflag != tar.TypeReg && h.Typeflag != tar.TypeRegA {
		size = 0
	}
	clean, dir, err := x.admit(h.Name, size)
	if err != nil {
		return err
	}
	switch h.Typeflag {
	case tar.TypeReg, tar.TypeRegA:
		if dir {
			return errorf(kindForbidden, "archive entry %q refused: a file whose name ends in \"/\"", h.Name)
		}
		if err := x.place(h.Name, clean, kindFileEntry); err != nil {
			return err
		}
		x.stats.Files++
		return x.writeFile(h.Name, clean, fs.FileMode(h.Mode), h.Size, tr)
	case tar.TypeDir:
		return x.place(h.Name, clean, kindDirEntry)
	case tar.TypeSymlink:
		return x.addLink(h.Name, clean, h.Linkname)
	case tar.TypeLink:
		return errorf(kindForbidden, "archive entry %q refused: hard link (to %q)", h.Name, h.Linkname)
	case tar.TypeChar, tar.TypeBlock:
		return errorf(kindForbidden, "archive entry %q refused: device", h.Name)
	case tar.TypeFifo:
		return errorf(kindForbidden, "archive entry %q refused: fifo", h.Name)
	}
	return errorf(kindForbidden, "archive entry %q refused: unsupported entry type %q", h.Name, h.Typeflag)
}

// blockReader reads the blocks a decompressing goroutine sends, handing
// each buffer back to the pool once read.
type blockReader struct {
	blocks <-chan []byte
	errc   <-chan error
	cur    []byte
	buf    *[]byte
	err    error
}

func (b *blockReader) Read(p []byte) (int, error) {
	for len(b.cur) == 0 {
		if b.err != nil {
			return 0, b.err
		}
		if b.buf != nil {
			copyBufs.Put(b.buf)
			b.buf = nil
		}
		blk, ok := <-b.blocks
		if !ok {
			b.err = <-b.errc
			continue
		}
		b.cur = blk
		bp := blk[:cap(blk)]
		b.buf = &bp
	}
	n := copy(p, b.cur)
	b.cur = b.cur[n:]
	return n, nil
}

// extractTarGz decompresses in a goroutine, overlapping inflate with file
// writes; the queue of four 256 KiB blocks bounds the memory in flight.
func (x *extractor) extractTarGz(r io.Reader) error {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return err
	}
	blocks := make(chan []byte, 4)
	errc := make(chan error, 1)
	stop := make(chan struct{})
	go func() {
		defer close(blocks)
		// The decompressed stream is bounded too: a tar whose end marker is
		// followed by a flood of zeros must not inflate forever.
		bound := x.lim.MaxSize + x.lim.MaxFiles*1024 + 1<<20
		if bound < 0 { // overflow: the limits are effectively off
			bound = 1<<63 - 1
		}
		lr := &io.LimitedReader{R: zr, N: bound}
		for {
			bp := copyBufs.Get().(*[]byte)
			n, err := 0, error(nil)
			for n < len(*bp) && err == nil {
				var m int
				m, err = lr.Read((*bp)[n:])
				n += m
			}
			if n > 0 {
				select {
				case blocks <- (*bp)[:n]:
				case <-stop:
					copyBufs.Put(bp)
					errc <- errors.New("stopped")
					return
				}
			} else {
				copyBufs.Put(bp)
			}
			if err == io.EOF && lr.N <= 0 {
				err = errorf(kindTooLarge, "the package decompresses to more than its bound (raise -extract-max-size)")
			}
			if err != nil {
				errc <- err
				return
			}
		}
	}()
	br := &blockReader{blocks: blocks, errc: errc}
	defer func() {
		close(stop)
		for range blocks { // let the goroutine finish
		}
	}()
	if err := x.extractTar(br); err != nil {
		return err
	}
	// Read to the end of the gzip stream, so its checksum and length are
	// verified: a truncated package fails even past the tar end marker.
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	for {
		_, err := br.Read(*bp)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// extractZip checks every entry of the central directory before writing
// anything (names, kinds, counts, declared sizes), makes the folders, then
// writes the files with a few workers reading the package in place.
func (x *extractor) extractZip(f *os.File, size int64) error {
	zr, err := zip.NewReader(f, size)
	if err != nil {
		return err
	}
	type job struct {
		zf    *zip.File
		clean string
	}
	var files []job
	for _, zf := range zr.File {
		m := zf.Mode()
		isDir := m.IsDir() || strings.HasSuffix(zf.Name, "/")
		declared := int64(zf.UncompressedSize64)
		if declared < 0 || zf.UncompressedSize64 > 1<<62 {
			return errorf(kindTooLarge, "archive entry %q declares an impossible size", zf.Name)
		}
		if isDir || m&fs.ModeSymlink != 0 {
			declared = 0
		}
		clean, _, err := x.admit(zf.Name, declared)
		if err != nil {
			return err
		}
		switch {
		case isDir:
			if err := x.place(zf.Name, clean, kindDirEntry); err != nil {
				return err
			}
		case m&fs.ModeSymlink != 0:
			if zf.UncompressedSize64 > maxLinkTarget {
				return errorf(kindForbidden, "archive entry %q refused: symlink target longer than 4096 bytes", zf.Name)
			}
			rc, err := zf.Open()
			if err != nil {
				return err
			}
			t, err := io.ReadAll(io.LimitReader(rc, maxLinkTarget+1))
			rc.Close()
			if err != nil {
				return err
			}
			if err := x.addLink(zf.Name, clean, string(t)); err != nil {
				return err
			}
		case m&fs.ModeType != 0:
			return errorf(kindForbidden, "archive entry %q refused: %s", zf.Name, zipKind(m))
		default:
			if err := x.place(zf.Name, clean, kindFileEntry); err != nil {
				return err
			}
			x.stats.Files++
			files = append(files, job{zf, clean})
		}
	}
	x.parallel = true
	work := make(chan job)
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(x.ctx)
	defer cancel()
	for range min(runtime.GOMAXPROCS(0), 4) {
		wg.Go(func() {
			for j := range work {
				if err := x.zipFile(j.zf, j.clean); err != nil {
					select {
					case errc <- err:
					default:
					}
					cancel()
				}
			}
		})
	}
feed:
	for _, j := range files {
		select {
		case work <- j:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
	}
	return x.ctx.Err()
}

// zipFile writes one zip file entry; the zip reader itself checks the CRC
// and refuses data past the declared size.
func (x *extractor) zipFile(zf *zip.File, clean string) error {
	rc, err := zf.Open()
	if err != nil {
		return err
	}
	defer rc.Close()
	return x.writeFile(zf.Name, clean, zf.Mode(), int64(zf.UncompressedSize64), rc)
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
