package main

// transfer_files.go: file.upload and file.download, and the digest cache
// that lets a download announce a file's SHA-256 without reading it twice.

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// fileHash is a file's SHA-256 as of its stamp (see fileVersion): it lets
// file.download put the digest in its header without reading a large file
// twice.
type fileHash struct {
	stamp fileID
	sha   string
}

// maxFileHashes bounds the file hash cache; past it an arbitrary entry goes.
const maxFileHashes = 1024

// fileSHA returns the SHA-256 of the open file f at path, from the cache
// when its stamp still matches, else by reading it.
func (p *packageCache) fileSHA(path string, f *os.File, fi os.FileInfo) (string, error) {
	stamp := fileVersion(fi)
	p.mu.Lock()
	fh, ok := p.hashes[path]
	p.mu.Unlock()
	if ok && stamp != (fileID{}) && fh.stamp == stamp {
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
	if stamp == (fileID{}) {
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

// fileID is a version of a file (fileVersion): comparable, and compared on
// every request for the trust list, so no formatting. The zero value means
// "cannot tell".
type fileID struct {
	dev, ino           uint64
	size, mtime, ctime int64
}

// resolvePath turns a client's path into an absolute one: absolute paths as
// they are (cleaned), relative ones under <home>/files, where ".." may not
// climb out. A path too long or too deep is refused before the file system
// is touched.
func resolvePath(cfg *config, p string) (string, error) {
	if err := checkPathShape(p); err != nil {
		return "", err
	}
	if filepath.IsAbs(p) {
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
	w, dir, name, fi, err := newFileGuard(c.srv.cfg, c.peer.entry).locate(path, true)
	defer w.close()
	if err != nil {
		return nil, ioError(err)
	}
	target := dir.path(name)
	if target != path {
		c.audit["resolved"] = target
	}
	overwrite := p.Overwrite == nil || *p.Overwrite
	switch {
	case name == "" || fi != nil && fi.IsDir():
		return nil, errorf(kindConflict, "%q is a folder", path)
	case fi == nil:
	case !fi.Mode().IsRegular():
		return nil, errorf(kindConflict, "%q is not a regular file: it is %s", target, fileKind(fi))
	case !overwrite:
		return nil, errorf(kindConflict, "%q exists: send overwrite true to replace it", path)
	case !modeSet:
		mode = fi.Mode().Perm() // replacing a file keeps its mode unless told otherwise
	}
	space, err := c.srv.pkgs.space.reserve(c.srv.cfg, dir.path(""), dir.fi, p.Size)
	if err != nil {
		return nil, err
	}
	f, done, err := createTemp(c.srv.cfg, dir, name)
	if err != nil {
		space.release()
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
	defer space.release() // first of the three: once the temporary file is gone, so is its promise
	h := sha256.New()
	n, rerr, werr := pipeToFile(f, 0, c.body, p.Size, h, space.wrote)
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
	keep = true // commitFile removes it on failure
	// target has no link in it, and the temporary file lies in the same
	// folder: a folder renamed or linked on the way since the walk would
	// make the rename fail (no such temporary there), never land elsewhere.
	if err := commitFile(f, target, mode, overwrite); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, errorf(kindConflict, "%q was created meanwhile: send overwrite true to replace it", path)
		}
		return nil, ioError(err)
	}

	if fi, err := os.Stat(target); err == nil {
		c.srv.pkgs.rememberSHA(target, fi, got)
	}
	return map[string]any{"path": path, "size": n, "sha256": got}, nil
}

func handleFileDownload(c *call) (any, error) {
	var p struct {
		Path string `json:"path,required"`
	}
	if err := decodeParams(c.params, &p); err != nil {
		return nil, err
	}
	c.audit = map[string]any{"path": p.Path}
	path, err := resolvePath(c.srv.cfg, p.Path)
	if err != nil {
		return nil, err
	}
	c.audit["path"] = path
	w, dir, name, fi, err := newFileGuard(c.srv.cfg, c.peer.entry).locate(path, false)
	defer w.close()
	switch {
	case err != nil:
		return nil, ioError(err)
	case name == "":
		return nil, errorf(kindNotFound, "%q is not a regular file: it is a folder", path)
	case fi == nil:
		return nil, errorf(kindNotFound, "%q does not exist", path)
	}
	target := dir.path(name)
	if target != path {
		c.audit["resolved"] = target
	}
	f, fi, err := openFileIn(dir, name, fi)
	var sha string
	if err == nil {
		if sha, err = c.srv.pkgs.fileSHA(target, f, fi); err != nil {
			f.Close()
		}
	}
	if err != nil {
		return nil, ioError(err)
	}
	size := fi.Size()
	c.audit["size"], c.audit["sha256"] = size, sha
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
