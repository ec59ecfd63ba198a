package main

// transfer_packages.go: the content-addressed package cache
// (package.stat, package.upload): resumable uploads, the hash check, and
// pruning.

import (
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

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

	space spaceBook // disk space promised to uploads in progress, files and packages
}

// partialState is the SHA-256 state after the first size bytes of a partial
// upload, so a resume in the same agent run need not hash them again.
type partialState struct {
	size  int64
	state []byte
}

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
	dirInfo, err := os.Stat(p.partialDir)
	if err != nil {
		return nil, ioError(err)
	}
	space, err := p.space.reserve(p.cfg, p.partialDir, dirInfo, u.Size)
	if err != nil {
		return nil, err
	}
	defer space.release()
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
	n, rerr, werr := pipeToFile(f, kept, c.body, u.Size, h, space.wrote)
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
	err = commitFile(f, filepath.Join(p.dir, sha), 0o644, true)
	f = nil // closed (and on failure removed) by commitFile
	if err != nil {
		return nil, ioError(err)
	}
	syncDir(p.partialDir)
	p.log.Info("package entered the cache", "sha256", sha, "size", end)
	return packageResult{SHA256: sha, Present: true, Size: end}, nil
}
