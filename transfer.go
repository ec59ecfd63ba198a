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
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// isWindows: there, file modes are only a read-only flag and Chmod may fail.
const isWindows = runtime.GOOS == "windows"

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

// spaceBook holds, per file system, the bytes that uploads in progress have
// been promised and not yet written, so that concurrent uploads cannot each
// pass the free-space check and together fill the disk.
type spaceBook struct {
	mu       sync.Mutex       // guards reserved
	reserved map[string]int64 // file system → bytes promised, not yet written
}

// reservation is one upload's promised bytes; nil (a disk that cannot
// report its free space) reserves nothing.
type reservation struct {
	book *spaceBook
	disk string
	left int64
}

// reserve answers too_large unless dir's disk can take size more bytes,
// beyond what other uploads were promised, and still keep the reserve
// free; else it promises them. A disk that cannot report its free space is
// not refused: the write itself still fails cleanly when it is full. The
// caller tells the reservation what it writes and releases it at the end,
// whatever the outcome.
func (b *spaceBook) reserve(cfg *config, dir string, fi os.FileInfo, size int64) (*reservation, error) {
	free, err := freeSpace(dir)
	if err != nil {
		return nil, nil
	}
	disk := filepath.VolumeName(dir)
	if dev, ok := fileDevice(fi); ok {
		disk = strconv.FormatUint(dev, 10)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	promised := b.reserved[disk]
	if size > free-cfg.DiskReserve-promised {
		return nil, errorf(kindTooLarge, "not enough disk space for %d bytes in %q: %d bytes free, of which %d are kept in reserve (-disk-reserve) and %d promised to uploads in progress",
			size, dir, max(free, 0), cfg.DiskReserve, promised)
	}
	if b.reserved == nil {
		b.reserved = map[string]int64{}
	}
	b.reserved[disk] += size
	return &reservation{book: b, disk: disk, left: size}, nil
}

// wrote tells the reservation that n of its bytes are now on the disk, so
// the free space counts them.
func (r *reservation) wrote(n int) {
	if r == nil {
		return
	}
	r.book.mu.Lock()
	defer r.book.mu.Unlock()
	d := min(int64(n), r.left)
	r.left -= d
	r.book.reserved[r.disk] -= d
}

// release gives back what the upload did not write.
func (r *reservation) release() {
	if r == nil {
		return
	}
	r.book.mu.Lock()
	defer r.book.mu.Unlock()
	if r.book.reserved[r.disk] -= r.left; r.book.reserved[r.disk] <= 0 {
		delete(r.book.reserved, r.disk)
	}
	r.left = 0
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

// createTemp makes an upload's temporary file beside name in dir and
// records it in the journal first, so an agent killed mid-transfer removes
// it at its next start. done removes the journal record.
func createTemp(cfg *config, dir *walkDir, name string) (f *os.File, done func(), err error) {
	var id [8]byte
	rand.Read(id[:])
	base := name
	if len(base) > 100 {
		base = base[:100]
	}
	tmp := tempPrefix + base + tempMarker + hex.EncodeToString(id[:]) + tempSuffix
	rec := filepath.Join(cfg.uploadsDir(), hex.EncodeToString(id[:]))
	// No fsync: the record must outlive the agent's process, which the page
	// cache ensures; after a machine crash the temporary file may be left
	// over, never the destination half-written.
	if err := os.WriteFile(rec, []byte(dir.path(tmp)+"\n"), 0o600); err != nil {
		return nil, nil, err
	}
	f, err = dir.root.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		os.Remove(rec)
		return nil, nil, walkError("create", dir, tmp, err)
	}
	return f, func() { os.Remove(rec) }, nil
}
