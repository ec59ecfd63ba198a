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
	stamp string
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
	keep = true // commitFile removes it on failure
	if err := commitFile(f, path, mode, overwrite); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, errorf(kindConflict, "%q was created meanwhile: send overwrite true to replace it", path)
		}
		return nil, ioError(err)
	}

	if fi, err := os.Stat(path); err == nil {
		c.srv.pkgs.rememberSHA(path, fi, got)
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
