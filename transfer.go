package main

// transfer.go: files and the package cache, the agent's side (PROTOCOL §5
// "Files" and "Packages", with the binary bodies of §3).
//
// Every body is streamed: the connection's goroutine decrypts into a few
// large buffers and hands them to a second goroutine that hashes and writes
// them, so decryption, hashing and the disk overlap on separate cores and
// memory stays at a few buffers whatever the size. A file appears whole or
// not at all (temporary file in its folder, fsync, rename, fsync of the
// folder); a package grows in <home>/packages/partial/<sha256> and enters
// the cache by rename once its hash is checked.

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func init() {
	register("file.upload", method{groups: []string{"file"}, body: true, mutates: true, fn: handleFileUpload})
	register("file.download", method{groups: []string{"file"}, fn: handleFileDownload})
	register("package.stat", method{groups: []string{"deploy"}, fn: handlePackageStat})
	register("package.upload", method{groups: []string{"deploy"}, body: true, mutates: true, fn: handlePackageUpload})
}

// packageCache is the content-addressed package store under <home>/packages.
// It also keeps the agent's bookkeeping for file transfers: the journal of
// temporary files in progress and the cache of file hashes.
type packageCache struct {
	cfg        *config
	log        *slog.Logger
	dir        string // complete packages, named by their lowercase sha256
	partialDir string // uploads in progress or interrupted, for resume

	mu     sync.Mutex              // guards busy, states, hashes
	busy   map[string]bool         // sha256 → an upload holds it
	states map[string]partialState // sha256 → hash state of its partial upload
	hashes map[string]fileHash     // absolute path → sha256 as of a stamp
}

// partialState is the SHA-256 state after the first size bytes of a partial
// upload, so a resume in the same agent run need not hash them again.
type partialState struct {
	size  int64
	state []byte
}

// fileHash is a file's SHA-256 as of its stamp (see fileVersion): it lets
// file.download put the digest in its header without reading a large file
// twice.
type fileHash struct {
	stamp string
	sha   string
}

// isWindows: there, file modes are only a read-only flag and Chmod may fail.
const isWindows = runtime.GOOS == "windows"

// maxFileHashes bounds the file hash cache; past it an arbitrary entry goes.
const maxFileHashes = 1024

func newPackageCache(cfg *config, log *slog.Logger) (*packageCache, error) {
	p := &packageCache{
		cfg: cfg, log: log,
		dir:        cfg.packagesDir(),
		partialDir: filepath.Join(cfg.packagesDir(), "partial"),
		busy:       map[string]bool{},
		states:     map[string]partialState{},
		hashes:     map[string]fileHash{},
	}
	for _, d := range []string{p.dir, p.partialDir, cfg.uploadsDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("failed to create %q: %v", d, err)
		}
	}
	p.cleanTemporaries()
	return p, nil
}

// cleanTemporaries removes what an agent killed mid-transfer left behind:
// the temporary files its journal names, and partial uploads untouched for
// longer than PackageGrace (resumable ones younger than that stay).
func (p *packageCache) cleanTemporaries() {
	journal := p.cfg.uploadsDir()
	entries, _ := os.ReadDir(journal)
	for _, e := range entries {
		rec := filepath.Join(journal, e.Name())
		data, err := os.ReadFile(rec)
		if err == nil {
			tmp := strings.TrimSpace(string(data))
			// Only a name this agent makes is removed, so a damaged journal
			// cannot delete anything else.
			if isTempName(filepath.Base(tmp)) && filepath.IsAbs(tmp) {
				if err := os.Remove(tmp); err == nil {
					p.log.Info("removed an interrupted upload's temporary file", "path", tmp)
				}
			}
		}
		os.Remove(rec)
	}
	parts, _ := os.ReadDir(p.partialDir)
	for _, e := range parts {
		if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > p.cfg.PackageGrace {
			os.Remove(filepath.Join(p.partialDir, e.Name()))
			p.log.Info("removed a stale partial package upload", "sha256", e.Name())
		}
	}
}

// path returns the path of the complete package with that sha256 and
// whether it is present.
func (p *packageCache) path(sha string) (string, bool) {
	sha, err := normSHA(sha)
	if err != nil {
		return "", false
	}
	name := filepath.Join(p.dir, sha)
	fi, err := os.Stat(name)
	return name, err == nil && fi.Mode().IsRegular()
}

// prune removes complete packages not in keep whose file is older than
// PackageGrace, and partial uploads left alone that long; an upload in
// progress is never touched.
func (p *packageCache) prune(keep map[string]bool) (removed []string) {
	entries, _ := os.ReadDir(p.dir)
	for _, e := range entries {
		sha, err := normSHA(e.Name())
		if err != nil || sha != e.Name() || keep[sha] || !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil || time.Since(fi.ModTime()) <= p.cfg.PackageGrace {
			continue
		}
		if err := os.Remove(filepath.Join(p.dir, sha)); err == nil {
			removed = append(removed, sha)
		}
	}
	parts, _ := os.ReadDir(p.partialDir)
	for _, e := range parts {
		fi, err := e.Info()
		if err != nil || time.Since(fi.ModTime()) <= p.cfg.PackageGrace || !p.lock(e.Name()) {
			continue
		}
		os.Remove(filepath.Join(p.partialDir, e.Name()))
		p.unlock(e.Name())
	}
	if len(removed) > 0 {
		syncDir(p.dir)
	}
	return removed
}

// lock claims sha for one upload; false means another connection holds it.
func (p *packageCache) lock(sha string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.busy[sha] {
		return false
	}
	p.busy[sha] = true
	return true
}

func (p *packageCache) unlock(sha string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.busy, sha)
}

// hashState returns a SHA-256 over the first size bytes of f: the state kept
// from the last upload when it matches, else by reading them again.
func (p *packageCache) hashState(sha string, f *os.File, size int64) (hash.Hash, error) {
	h := sha256.New()
	p.mu.Lock()
	st, ok := p.states[sha]
	p.mu.Unlock()
	if ok && st.size == size {
		if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(st.state); err == nil {
			return h, nil
		}
		h.Reset()
	}
	buf := getBuf()
	defer putBuf(buf)
	if _, err := io.CopyBuffer(h, io.NewSectionReader(f, 0, size), *buf); err != nil {
		return nil, err
	}
	return h, nil
}

// saveState remembers h as the state after size bytes of sha's partial
// upload; a nil h forgets it.
func (p *packageCache) saveState(sha string, h hash.Hash, size int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.states, sha)
	if h == nil {
		return
	}
	if b, err := h.(encoding.BinaryMarshaler).MarshalBinary(); err == nil {
		p.states[sha] = partialState{size: size, state: b}
	}
}

// fileSHA returns the SHA-256 of the open file f at path, from the cache
// when its stamp still matches, else by reading it.
func (p *packageCache) fileSHA(path string, f *os.File, fi os.FileInfo) (string, error) {
	stamp := fileVersion(fi)
	p.mu.Lock()
	fh, ok := p.hashes[path]
	p.mu.Unlock()
	if ok && stamp != "" && fh.stamp == stamp {
		return fh.sha, nil
	}
	h := sha256.New()
	buf := getBuf()
	defer putBuf(buf)
	if _, err := io.CopyBuffer(h, io.NewSectionReader(f, 0, fi.Size()), *buf); err != nil {
		return "", err
	}
	sha := hex.EncodeToString(h.Sum(nil))
	p.rememberSHA(path, fi, sha)
	return sha, nil
}

// rememberSHA records path's digest as of fi.
func (p *packageCache) rememberSHA(path string, fi os.FileInfo, sha string) {
	stamp := fileVersion(fi)
	if stamp == "" {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.hashes) >= maxFileHashes {
		for k := range p.hashes {
			delete(p.hashes, k)
			break
		}
	}
	p.hashes[path] = fileHash{stamp: stamp, sha: sha}
}

// fmtStamp formats a file's identity for the hash cache.
func fmtStamp(dev, ino uint64, size, mtime, ctime int64) string {
	return fmt.Sprintf("%d:%d:%d:%d:%d", dev, ino, size, mtime, ctime)
}

// The streaming pipeline. A transfer holds at most xferBufs buffers of
// xferBufSize (2 MiB in all): large enough to amortise the per-call costs,
// small enough that a buffer the reader just filled is still in the CPU's
// cache when the writer hashes and writes it (measured: 256 KiB costs ~5%
// less CPU than 1 MiB); several in flight let the reader run ahead.
const (
	xferBufSize = 256 << 10
	xferBufs    = 8
)

var xferPool = sync.Pool{New: func() any { b := make([]byte, xferBufSize); return &b }}

func getBuf() *[]byte  { return xferPool.Get().(*[]byte) }
func putBuf(b *[]byte) { xferPool.Put(b) }

// pipeToFile copies n bytes from src to dst at its current offset off,
// hashing them into h on the way. The calling goroutine reads; another
// hashes and writes, so the two overlap. It stops at the first error of
// either side: readErr is the source's (a body cut short is
// io.ErrUnexpectedEOF), writeErr the disk's. written counts the bytes that
// reached dst (all of them hashed); progress, if not nil, is told each
// chunk read.
func pipeToFile(dst *os.File, off int64, src io.Reader, n int64, h hash.Hash, progress func(int)) (written int64, readErr, writeErr error) {
	type chunk struct {
		buf *[]byte
		n   int
	}
	full := make(chan chunk, xferBufs)
	free := make(chan *[]byte, xferBufs)
	for range xferBufs {
		free <- getBuf()
	}
	defer func() {
		for range xferBufs {
			putBuf(<-free)
		}
	}()
	var failed atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		wb := newWriteback(dst, off)
		for c := range full {
			if writeErr == nil {
				b := (*c.buf)[:c.n]
				m, err := dst.Write(b)
				h.Write(b[:m])
				written += int64(m)
				if err != nil {
					writeErr = err
					failed.Store(true)
				} else {
					wb.advance(m)
				}
			}
			free <- c.buf
		}
	}()
	var read int64
	for read < n && !failed.Load() {
		b := <-free
		m, err := io.ReadFull(src, (*b)[:min(int64(len(*b)), n-read)])
		read += int64(m)
		if m > 0 {
			if progress != nil {
				progress(m)
			}
			full <- chunk{b, m}
		} else {
			free <- b
		}
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			readErr = err
			break
		}
	}
	close(full)
	<-done
	return written, readErr, writeErr
}

// normSHA checks a hex SHA-256 and returns it in lowercase.
func normSHA(s string) (string, error) {
	if len(s) != 64 {
		return "", fmt.Errorf("a sha256 is 64 hex digits, not %d characters", len(s))
	}
	s = strings.ToLower(s)
	if _, err := hex.DecodeString(s); err != nil {
		return "", errors.New("a sha256 is 64 hex digits")
	}
	return s, nil
}

// parseMode reads a file mode written as an octal string such as "0755".
func parseMode(s string) (os.FileMode, error) {
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || m > 0o777 || s == "" {
		return 0, errorf(kindInvalidParams, "mode %q: want an octal permission such as \"0644\" or \"0755\"", s)
	}
	return os.FileMode(m), nil
}

// resolvePath turns a client's path into an absolute one: absolute paths as
// they are (cleaned), relative ones under <home>/files, where ".." may not
// climb out.
func resolvePath(cfg *config, p string) (string, error) {
	switch {
	case p == "":
		return "", errorf(kindInvalidParams, "path must not be empty")
	case strings.ContainsRune(p, 0):
		return "", errorf(kindInvalidParams, "path must not contain a NUL byte")
	case filepath.IsAbs(p):
		return filepath.Clean(p), nil
	}
	for _, el := range strings.FieldsFunc(p, func(r rune) bool { return r == '/' || r == filepath.Separator }) {
		if el == ".." {
			return "", errorf(kindForbidden, "relative path %q uses \"..\": relative paths stay under %q; give an absolute path instead", p, cfg.filesDir())
		}
	}
	if !filepath.IsLocal(p) {
		return "", errorf(kindForbidden, "path %q is neither absolute nor a plain relative path", p)
	}
	return filepath.Join(cfg.filesDir(), p), nil
}

// checkSpace answers too_large unless dir's disk can take size more bytes
// and still keep the reserve free. A disk that cannot report its free space
// is not refused: the write itself still fails cleanly when it is full.
func checkSpace(cfg *config, dir string, size int64) error {
	free, err := freeSpace(dir)
	if err != nil {
		return nil
	}
	if size > free-cfg.DiskReserve {
		return errorf(kindTooLarge, "not enough disk space for %d bytes in %q: %d bytes free, of which %d are kept in reserve (-disk-reserve)",
			size, dir, max(free, 0), cfg.DiskReserve)
	}
	return nil
}

// bodyError describes a body that did not arrive whole. The connection is
// closed by the loop after it, since its stream is broken.
func bodyError(got, want int64, err error) error {
	return errorf(kindIO, "the body stopped after %d of %d bytes: %v", got, want, err)
}

// tempPrefix and tempSuffix frame the names of upload temporaries, so the
// journal can only ever remove files of that shape.
const (
	tempPrefix = "."
	tempMarker = ".tentacle-"
	tempSuffix = ".tmp"
)

func isTempName(name string) bool {
	i := strings.LastIndex(name, tempMarker)
	if !strings.HasPrefix(name, tempPrefix) || i < 0 || !strings.HasSuffix(name, tempSuffix) {
		return false
	}
	id := name[i+len(tempMarker) : len(name)-len(tempSuffix)]
	_, err := hex.DecodeString(id)
	return len(id) == 16 && err == nil
}

// createTemp makes an upload's temporary file beside path and records it in
// the journal first, so an agent killed mid-transfer removes it at its next
// start. done removes the journal record.
func createTemp(cfg *config, path string) (f *os.File, done func(), err error) {
	var id [8]byte
	rand.Read(id[:])
	base := filepath.Base(path)
	if len(base) > 100 {
		base = base[:100]
	}
	tmp := filepath.Join(filepath.Dir(path), tempPrefix+base+tempMarker+hex.EncodeToString(id[:])+tempSuffix)
	rec := filepath.Join(cfg.uploadsDir(), hex.EncodeToString(id[:]))
	// No fsync: the record must outlive the agent's process, which the page
	// cache ensures; after a machine crash the temporary file may be left
	// over, never the destination half-written.
	if err := os.WriteFile(rec, []byte(tmp+"\n"), 0o600); err != nil {
		return nil, nil, err
	}
	f, err = os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		os.Remove(rec)
		return nil, nil, err
	}
	return f, func() { os.Remove(rec) }, nil
}

type fileUploadParams struct {
	Path      string `json:"path,required"`
	Size      int64  `json:"size,required"`
	SHA256    string `json:"sha256"`
	Mode      string `json:"mode"`
	Overwrite *bool  `json:"overwrite"`
}

func handleFileUpload(c *call) (any, error) {
	var p fileUploadParams
	if err := decodeParams(c.params, &p); err != nil {
		return nil, err
	}
	c.audit = map[string]any{"path": p.Path, "size": p.Size}
	var want string
	if p.SHA256 != "" {
		s, err := normSHA(p.SHA256)
		if err != nil {
			return nil, errorf(kindInvalidParams, "sha256: %v", err)
		}
		want = s
		c.audit["sha256"] = want
	}
	mode, modeSet := os.FileMode(0o644), p.Mode != ""
	if modeSet {
		m, err := parseMode(p.Mode)
		if err != nil {
			return nil, err
		}
		mode = m
	}
	path, err := resolvePath(c.srv.cfg, p.Path)
	if err != nil {
		return nil, err
	}
	c.audit["path"] = path
	overwrite := p.Overwrite == nil || *p.Overwrite
	if fi, err := os.Stat(path); err == nil {
		switch {
		case fi.IsDir():
			return nil, errorf(kindConflict, "%q is a folder", path)
		case !overwrite:
			return nil, errorf(kindConflict, "%q exists: send overwrite true to replace it", path)
		case !modeSet:
			mode = fi.Mode().Perm() // replacing a file keeps its mode unless told otherwise
		}
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, ioError(err)
	}
	if err := checkSpace(c.srv.cfg, dir, p.Size); err != nil {
		return nil, err
	}
	f, done, err := createTemp(c.srv.cfg, path)
	if err != nil {
		return nil, ioError(err)
	}
	defer done()
	keep := false
	defer func() {
		if !keep {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	h := sha256.New()
	n, rerr, werr := pipeToFile(f, 0, c.body, p.Size, h, nil)
	switch {
	case werr != nil:
		return nil, ioError(werr)
	case rerr != nil:
		return nil, bodyError(n, p.Size, rerr)
	}
	got := hex.EncodeToString(h.Sum(nil))
	c.audit["sha256"] = got
	if want != "" && got != want {
		return nil, errorf(kindIntegrity, "the body's sha256 is %s, not %s: nothing was written", got, want)
	}
	if err := f.Chmod(mode); err != nil && !isWindows {
		return nil, ioError(err)
	}
	if err := f.Sync(); err != nil {
		return nil, ioError(err)
	}
	if err := f.Close(); err != nil {
		return nil, ioError(err)
	}
	if overwrite {
		err = os.Rename(f.Name(), path)
	} else {
		err = linkNew(f.Name(), path)
	}
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, errorf(kindConflict, "%q was created meanwhile: send overwrite true to replace it", path)
		}
		return nil, ioError(err)
	}
	keep = true
	syncDir(dir)
	if fi, err := os.Stat(path); err == nil {
		c.srv.pkgs.rememberSHA(path, fi, got)
	}
	return map[string]any{"path": path, "size": n, "sha256": got}, nil
}

// linkNew puts tmp at path only if path does not exist (a hard link fails
// then, where a rename would replace), and removes tmp's own name.
func linkNew(tmp, path string) error {
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, os.ErrExist) {
			os.Remove(tmp)
			return err
		}
		// No hard links on this filesystem: check, then rename.
		if _, serr := os.Lstat(path); serr == nil {
			os.Remove(tmp)
			return os.ErrExist
		}
		return os.Rename(tmp, path)
	}
	return os.Remove(tmp)
}

func handleFileDownload(c *call) (any, error) {
	var p struct {
		Path string `json:"path,required"`
	}
	if err := decodeParams(c.params, &p); err != nil {
		return nil, err
	}
	path, err := resolvePath(c.srv.cfg, p.Path)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, ioError(err)
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = errorf(kindNotFound, "%q is not a regular file", path)
	}
	var sha string
	if err == nil {
		sha, err = c.srv.pkgs.fileSHA(path, f, fi)
	}
	if err != nil {
		f.Close()
		return nil, ioError(err)
	}
	size := fi.Size()
	c.replyBody = func(w io.Writer) error {
		defer f.Close()
		return sendFile(w, c.tc, f, size)
	}
	return map[string]any{"path": path, "size": size, "sha256": sha, "mode": fmt.Sprintf("%04o", fi.Mode().Perm())}, nil
}

// sendFile writes exactly size bytes of f after what w holds: w is flushed,
// then the file goes straight to the TLS connection tc in large batches.
func sendFile(w io.Writer, tc *tls.Conn, f io.Reader, size int64) error {
	if fl, ok := w.(interface{ Flush() error }); ok && tc != nil {
		if err := fl.Flush(); err != nil {
			return err
		}
		w = tc
	}
	b := batchOf(tc)
	b.start()
	defer b.end()
	buf := getBuf()
	defer putBuf(buf)
	var sent int64
	for sent < size {
		m, err := io.ReadFull(f, (*buf)[:min(int64(len(*buf)), size-sent)])
		if m > 0 {
			if _, werr := w.Write((*buf)[:m]); werr != nil {
				return werr
			}
			if werr := b.flush(); werr != nil {
				return werr
			}
			sent += int64(m)
		}
		if err != nil {
			return fmt.Errorf("the file shrank to %d of %d bytes while being sent: %v", sent, size, err)
		}
	}
	return nil
}

// batchConn lets a large body leave in large writes. TLS writes every
// record (at most 16 KiB) with a syscall of its own; between start and end,
// records are gathered and written a buffer at a time, which on a fast link
// saves about a quarter of the CPU a transfer costs. The sender calls flush
// after each large tls.Conn.Write, so nothing waits in the buffer.
type batchConn struct {
	net.Conn
	mu  sync.Mutex // guards buf, the gathered records (nil when not batching)
	buf *[]byte
}

// batchOf returns tc's batchConn, or nil (whose methods do nothing).
func batchOf(tc *tls.Conn) *batchConn {
	if tc == nil {
		return nil
	}
	b, _ := tc.NetConn().(*batchConn)
	return b
}

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf == nil {
		return b.Conn.Write(p)
	}
	if len(*b.buf)+len(p) > cap(*b.buf) {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
		if len(p) > cap(*b.buf) {
			return b.Conn.Write(p)
		}
	}
	*b.buf = append(*b.buf, p...)
	return len(p), nil
}

func (b *batchConn) start() {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf == nil {
		b.buf = getBuf()
		*b.buf = (*b.buf)[:0]
	}
}

func (b *batchConn) flush() error {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.flushLocked()
}

func (b *batchConn) flushLocked() error {
	if b.buf == nil || len(*b.buf) == 0 {
		return nil
	}
	_, err := b.Conn.Write(*b.buf)
	*b.buf = (*b.buf)[:0]
	return err
}

// end flushes and stops batching.
func (b *batchConn) end() error {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	err := b.flushLocked()
	if b.buf != nil {
		*b.buf = (*b.buf)[:cap(*b.buf)]
		putBuf(b.buf)
		b.buf = nil
	}
	return err
}

// packageResult is the answer of package.stat and package.upload.
type packageResult struct {
	SHA256  string `json:"sha256"`
	Present bool   `json:"present"`
	Size    int64  `json:"size"`
}

func handlePackageStat(c *call) (any, error) {
	var p struct {
		SHA256 string `json:"sha256,required"`
	}
	if err := decodeParams(c.params, &p); err != nil {
		return nil, err
	}
	sha, err := normSHA(p.SHA256)
	if err != nil {
		return nil, errorf(kindInvalidParams, "sha256: %v", err)
	}
	return c.srv.pkgs.stat(sha), nil
}

// stat tells whether sha is present, with its size, else the size of its
// partial upload. A present package's time is refreshed: a client that has
// just found it there is about to deploy it, so pruning should wait.
func (p *packageCache) stat(sha string) packageResult {
	if path, ok := p.path(sha); ok {
		if fi, err := os.Stat(path); err == nil {
			now := time.Now()
			os.Chtimes(path, now, now)
			return packageResult{SHA256: sha, Present: true, Size: fi.Size()}
		}
	}
	r := packageResult{SHA256: sha}
	if fi, err := os.Stat(filepath.Join(p.partialDir, sha)); err == nil {
		r.Size = fi.Size()
	}
	return r
}

type packageUploadParams struct {
	SHA256 string `json:"sha256,required"`
	Total  int64  `json:"total,required"`
	Offset int64  `json:"offset"`
	Size   int64  `json:"size,required"`
}

func handlePackageUpload(c *call) (any, error) {
	var p packageUploadParams
	if err := decodeParams(c.params, &p); err != nil {
		return nil, err
	}
	c.audit = map[string]any{"sha256": p.SHA256, "total": p.Total, "offset": p.Offset, "size": p.Size}
	sha, err := normSHA(p.SHA256)
	if err != nil {
		return nil, errorf(kindInvalidParams, "sha256: %v", err)
	}
	c.audit["sha256"] = sha
	if p.Total < 0 || p.Offset < 0 || p.Offset > p.Total-p.Size {
		return nil, errorf(kindInvalidParams, "offset %d + size %d must stay within total %d", p.Offset, p.Size, p.Total)
	}
	pc := c.srv.pkgs
	if r := pc.stat(sha); r.Present {
		// Already there: the body is not needed, but it is on its way.
		if n, err := io.Copy(io.Discard, c.body); err != nil {
			return nil, bodyError(n, p.Size, err)
		}
		return r, nil
	}
	if !pc.lock(sha) {
		return nil, errorf(kindConflict, "package %s is being uploaded on another connection: retry when that upload ends", sha)
	}
	defer pc.unlock(sha)
	return pc.receive(c, sha, p)
}

// receive appends one package.upload body to sha's partial upload and, when
// it completes the package, checks it and moves it into the cache. The
// caller holds sha's lock.
func (p *packageCache) receive(c *call, sha string, u packageUploadParams) (any, error) {
	partial := filepath.Join(p.partialDir, sha)
	var kept int64
	if fi, err := os.Stat(partial); err == nil {
		kept = fi.Size()
	}
	if kept > u.Total { // left from an upload of another total: it cannot be right
		os.Remove(partial)
		p.saveState(sha, nil, 0)
		kept = 0
	}
	if u.Offset != kept {
		return nil, errorf(kindConflict, "package %s has %d bytes kept: resume at offset %d, not %d", sha, kept, kept, u.Offset)
	}
	if err := checkSpace(p.cfg, p.partialDir, u.Size); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(partial, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, ioError(err)
	}
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	h, err := p.hashState(sha, f, kept)
	if err == nil {
		_, err = f.Seek(kept, io.SeekStart)
	}
	if err != nil {
		return nil, ioError(err)
	}
	n, rerr, werr := pipeToFile(f, kept, c.body, u.Size, h, nil)
	end := kept + n
	switch {
	case werr != nil:
		// What was written whole stays for a resume; a torn write is cut off.
		f.Truncate(end)
		p.saveState(sha, h, end)
		return nil, ioError(werr)
	case rerr != nil:
		p.saveState(sha, h, end)
		return nil, bodyError(n, u.Size, rerr)
	case end < u.Total:
		p.saveState(sha, h, end)
		return packageResult{SHA256: sha, Size: end}, nil
	}
	p.saveState(sha, nil, 0)
	if got := hex.EncodeToString(h.Sum(nil)); got != sha {
		f.Close()
		f = nil
		os.Remove(partial)
		return nil, errorf(kindIntegrity, "the package's bytes have sha256 %s, not %s: the upload was discarded, send it again from offset 0", got, sha)
	}
	if err := f.Chmod(0o644); err != nil && !isWindows {
		return nil, ioError(err)
	}
	if err := f.Sync(); err != nil {
		return nil, ioError(err)
	}
	err = f.Close()
	f = nil
	if err != nil {
		return nil, ioError(err)
	}
	if err := os.Rename(partial, filepath.Join(p.dir, sha)); err != nil {
		return nil, ioError(err)
	}
	syncDir(p.dir)
	syncDir(p.partialDir)
	p.log.Info("package entered the cache", "sha256", sha, "size", end)
	return packageResult{SHA256: sha, Present: true, Size: end}, nil
}
