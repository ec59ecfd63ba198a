package main

// deploy_archive_format.go: recognising a package's format from its bytes, and
// the decompressing half of tar.gz and tar.bz2 extraction.

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"strings"
)

// Package formats (PROTOCOL §5 deploy.start "format").
const (
	formatZip    = "zip"
	formatTar    = "tar"
	formatTarGz  = "tar.gz"
	formatTarBz2 = "tar.bz2"
)

// foreignFormats are formats people ship that Go's standard library does
// not read: recognised, so the refusal can name them.
var foreignFormats = []struct{ magic, name string }{
	{"\xfd7zXZ\x00", "xz-compressed"},
	{"\x28\xb5\x2f\xfd", "zstd-compressed"},
	{"7z\xbc\xaf\x27\x1c", "a 7z archive"},
	{"Rar!\x1a\x07", "a rar archive"},
	{"\x04\x22\x4d\x18", "lz4-compressed"},
	{"LZIP", "lzip-compressed"},
	{"\x1f\x9d", "compress(1)-compressed (.Z)"},
}

// detectFormat recognises a package from its bytes: the zip local header or
// empty-archive signature, the gzip or bzip2 magic, a tar header (the
// "ustar" magic, or failing that a header whose checksum adds up, for
// pre-POSIX archives, or its end marker, for an empty one), or a zip's end record near the end of the file (a
// self-extracting zip starts with a program). For a format it cannot read
// it returns the format's name with the error.
func detectFormat(r io.ReaderAt, size int64) (string, error) {
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
	case isBzip2(head):
		return formatTarBz2, nil
	case n == 512 && (bytes.Equal(head[257:262], []byte("ustar")) || tarChecksumOK(head)):
		return formatTar, nil
	case n == 512 && blockRun(head, true) == n: // a tar's end marker first: an empty tar
		return formatTar, nil
	}
	for _, f := range foreignFormats {
		if strings.HasPrefix(string(head), f.magic) {
			return f.name, errorf(kindInvalidParams, "the package is %s, which this agent cannot read: make it a zip, tar, tar.gz or tar.bz2", f.name)
		}
	}
	// The end record is in the last 22 bytes plus at most a 64 KiB comment.
	tail := make([]byte, min(size, 22+65535))
	if n, err := r.ReadAt(tail, size-int64(len(tail))); err == nil && n == len(tail) && bytes.Contains(tail, []byte("PK\x05\x06")) {
		return formatZip, nil
	}
	return "", errorf(kindInvalidParams, "the package is not a zip, tar, tar.gz or tar.bz2 archive (pass \"format\" if it is one)")
}

// isBzip2 checks the bzip2 stream header: "BZh", the block size, and the
// magic of a first block or of the end of an empty stream.
func isBzip2(h []byte) bool {
	return len(h) >= 10 && string(h[:3]) == "BZh" && h[3] >= '1' && h[3] <= '9' &&
		(string(h[4:10]) == "1AY&SY" || string(h[4:10]) == "\x17rE8P\x90")
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

// gunzip reads every member of a gzip file, as gzip -d does, and ends
// cleanly at zero padding after the last one (what tape-style writers and
// block-sized uploads leave). Anything else after a member is corruption.
type gunzip struct {
	br   *bufio.Reader
	zr   *gzip.Reader
	done bool
}

func newGunzip(r io.Reader) (*gunzip, error) {
	br := bufio.NewReaderSize(r, 256<<10)
	zr, err := gzip.NewReader(br) // reads br byte-exactly: it is a flate.Reader
	if err != nil {
		return nil, err
	}
	zr.Multistream(false)
	return &gunzip{br: br, zr: zr}, nil
}

func (g *gunzip) Read(p []byte) (int, error) {
	for !g.done {
		n, err := g.zr.Read(p)
		if err != io.EOF {
			return n, err
		}
		if err := g.next(); err != nil {
			return n, err
		}
		if n > 0 {
			return n, nil
		}
	}
	return 0, io.EOF
}

// next starts the member after the one just ended, or marks the end.
func (g *gunzip) next() error {
	for {
		b, err := g.br.Peek(4096)
		if len(b) == 0 {
			g.done = true
			if err == io.EOF {
				return nil
			}
			return err
		}
		if b[0] == 0 {
			z := len(b) - len(bytes.TrimLeft(b, "\x00"))
			g.br.Discard(z)
			if z == len(b) {
				continue
			}
			return errors.New("data after the zero padding that ends the gzip stream")
		}
		if len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
			return errors.New("data after the end of the gzip stream")
		}
		if err := g.zr.Reset(g.br); err != nil {
			return err
		}
		g.zr.Multistream(false)
		return nil
	}
}

func newBunzip(r io.Reader) io.Reader {
	return bzip2.NewReader(bufio.NewReaderSize(r, 256<<10))
}

// blockReader reads the blocks a decompressing goroutine sends, handing
// each buffer back to the pool once read, and stops when ctx ends (tar
// skips an entry's data by reading it, which must not outlive a cancel).
type blockReader struct {
	ctx    context.Context
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
			putBuf(b.buf)
			b.buf = nil
		}
		select {
		case blk, ok := <-b.blocks:
			if !ok {
				b.err = <-b.errc
				continue
			}
			b.cur = blk
			bp := blk[:cap(blk)]
			b.buf = &bp
		case <-b.ctx.Done():
			b.err = b.ctx.Err()
		}
	}
	n := copy(p, b.cur)
	b.cur = b.cur[n:]
	return n, nil
}

// ctxReader stops reading when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// extractCompressedTar decompresses in a goroutine, overlapping inflate
// with file writes; the queue of four 256 KiB blocks bounds the memory in
// flight. It returns only once that goroutine has ended.
func (x *extractor) extractCompressedTar(dec io.Reader) error {
	blocks := make(chan []byte, 4)
	errc := make(chan error, 1)
	stop := make(chan struct{})
	go func() {
		defer close(blocks)
		// The decompressed stream is bounded too: a tar whose end marker is
		// followed by a flood of zeros must not inflate forever. 8 KiB an
		// entry covers its header, a PAX record and a GNU long name.
		bound := x.lim.MaxSize + x.lim.MaxFiles*8192 + 1<<20
		if bound < 0 { // overflow: the limits are effectively off
			bound = 1<<63 - 1
		}
		lr := &io.LimitedReader{R: dec, N: bound}
		for {
			bp := getBuf()
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
					putBuf(bp)
					errc <- errors.New("stopped")
					return
				}
			} else {
				putBuf(bp)
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
	br := &blockReader{ctx: x.ctx, blocks: blocks, errc: errc}
	defer func() {
		close(stop)
		for range blocks { // let the goroutine finish
		}
	}()
	if err := x.extractTar(br); err != nil {
		return err
	}
	// Read to the end of the compressed stream, so its checksum and length
	// are verified: a truncated package fails even past the tar end marker.
	bp := getBuf()
	defer putBuf(bp)
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
