package main

// envelope_frame.go: line framing and bodies (PROTOCOL §3): reading a
// request line under its deadlines and the memory budget for long lines,
// writing answers under theirs, and finding the body a line declares, even
// a refused one.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// deadlineReader reads a connection for the command loop. Before every
// read from the network it sends the answers still buffered (flush) and
// sets a read deadline, so a stalled peer is noticed: timeout is the idle
// limit between requests and the body limit within one. While a request
// line is being read (inLine), the line's own deadline counts from its
// first byte and is not moved by later bytes, so a line sent a byte at a
// time cannot hold the connection past lineTimeout.
type deadlineReader struct {
	c           *conn
	timeout     time.Duration
	flush       func() error
	inLine      bool
	lineTimeout time.Duration
	lineBy      time.Time // the line's deadline once its first byte came; zero before
}

func (d *deadlineReader) Read(p []byte) (int, error) {
	if err := d.flush(); err != nil {
		return 0, err
	}
	var by time.Time
	if d.inLine {
		by = d.lineBy
	}
	if err := d.c.armDeadline(d.timeout, by); err != nil {
		return 0, err
	}
	n, err := d.c.tc.Read(p)
	if d.inLine && n > 0 && d.lineBy.IsZero() && d.lineTimeout > 0 {
		d.lineBy = time.Now().Add(d.lineTimeout)
	}
	return n, err
}

// beginLine starts reading a request line. A line whose first bytes are
// already buffered has started now; else its clock starts with the first
// byte read.
func (d *deadlineReader) beginLine(buffered bool) {
	d.inLine, d.lineBy = true, time.Time{}
	if buffered && d.lineTimeout > 0 {
		d.lineBy = time.Now().Add(d.lineTimeout)
	}
}

// endLine ends the line, turning a read error caused by the line's
// deadline into errLineLate.
func (d *deadlineReader) endLine(err error) error {
	late := !d.lineBy.IsZero() && isTimeout(err) && !time.Now().Before(d.lineBy)
	d.inLine, d.lineBy = false, time.Time{}
	if late {
		return fmt.Errorf("%w (%v after its first byte)", errLineLate, d.lineTimeout)
	}
	return err
}

func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

// stallGuard cuts off a peer that stops reading: each write to the network
// must finish within timeout (the body timeout), so an answer or a reply
// body that nobody reads holds its connection, and the agent's shutdown,
// no longer than that. A sooner deadline set on purpose (tls.Conn sets one
// to send its closing alert) is kept.
type stallGuard struct {
	net.Conn
	timeout time.Duration
	mu      sync.Mutex // guards set
	set     time.Time  // the deadline last set with SetWriteDeadline
}

func (g *stallGuard) Write(p []byte) (int, error) {
	d := time.Now().Add(g.timeout)
	g.mu.Lock()
	if !g.set.IsZero() && g.set.Before(d) {
		d = g.set
	}
	g.mu.Unlock()
	g.Conn.SetWriteDeadline(d)
	return g.Conn.Write(p)
}

func (g *stallGuard) SetWriteDeadline(t time.Time) error {
	g.mu.Lock()
	g.set = t
	g.mu.Unlock()
	return g.Conn.SetWriteDeadline(t)
}

func (g *stallGuard) SetDeadline(t time.Time) error {
	g.mu.Lock()
	g.set = t
	g.mu.Unlock()
	return g.Conn.SetDeadline(t)
}

// responseWriter writes answers, buffered, to a connection.
type responseWriter struct {
	bw  *bufio.Writer
	enc *json.Encoder
}

func newResponseWriter(w io.Writer) *responseWriter {
	bw := bufio.NewWriterSize(w, 32<<10)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	return &responseWriter{bw: bw, enc: enc}
}

// write buffers one answer; an id of nil is written as null.
func (w *responseWriter) write(r *response) error {
	r.JSONRPC = "2.0"
	if r.ID == nil {
		r.ID = nullID
	}
	return w.enc.Encode(r) // Encode ends the line with "\n"
}

func (w *responseWriter) flush() error { return w.bw.Flush() }

// errLineTooLong is returned by readLine for a line over its cap whose end
// has not been read; errLineTooLongWhole for one read to its end.
var (
	errLineTooLong      = errors.New("line too long")
	errLineTooLongWhole = fmt.Errorf("%w (read to its end)", errLineTooLong)
	// errLineMemory: long lines of all connections already hold the agent's
	// budget for them.
	errLineMemory = errors.New("no memory left for long request lines")
	// errLineLate: a line's end did not come within -line-timeout of its
	// first byte.
	errLineLate = errors.New("request line not complete within -line-timeout")
)

// lineBudget bounds the memory that request lines longer than a
// connection's buffer hold, across all connections: without it, many
// connections each sending most of a line and never its end hold a line
// cap of memory each (PROTOCOL §3 limits).
type lineBudget struct {
	max  int64
	used atomic.Int64
}

// take reserves n bytes, or reports that there is no room.
func (b *lineBudget) take(n int64) bool {
	if b == nil {
		return true
	}
	if b.used.Add(n) > b.max {
		b.used.Add(-n)
		return false
	}
	return true
}

// give returns n bytes reserved by take.
func (b *lineBudget) give(n int64) {
	if b != nil && n != 0 {
		b.used.Add(-n)
	}
}

// readLine reads one line, without "\n" and a "\r" before it, buffering at
// most about max bytes (plus the reader's own buffer and one block of the
// buffer pool): past that it stops with errLineTooLong, leaving the rest of
// the line unread. At EOF a last
// line without "\n" is returned with io.EOF. The line is always a copy.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	line, _, err := readLineBudget(br, max, nil)
	return line, err
}

// readLineBudget is readLine for a line that may be longer than br's
// buffer: such a line is gathered in pooled blocks reserved from budget
// (nil: none), and held is what the caller gives back to budget once it is
// done with the line. With no room in the budget it stops with
// errLineMemory, the rest of the line unread.
func readLineBudget(br *bufio.Reader, max int, budget *lineBudget) (line []byte, held int64, err error) {
	chunk, err := br.ReadSlice('\n')
	if err != bufio.ErrBufferFull { // the common case: the whole line was buffered
		return endOfLine(bytes.Clone(chunk), err, max, 0)
	}
	var blocks []*[]byte
	defer func() {
		for _, b := range blocks {
			*b = (*b)[:cap(*b)]
			putBuf(b)
		}
	}()
	n := 0
	for {
		for len(chunk) > 0 {
			if len(blocks) == 0 || len(*blocks[len(blocks)-1]) == cap(*blocks[len(blocks)-1]) {
				if n > max+1 { // not even a trailing "\r" brings it under
					budget.give(held)
					return nil, 0, errLineTooLong
				}
				b := getBuf()
				if !budget.take(int64(cap(*b))) {
					putBuf(b)
					budget.give(held)
					return nil, 0, errLineMemory
				}
				held += int64(cap(*b))
				*b = (*b)[:0]
				blocks = append(blocks, b)
			}
			last := blocks[len(blocks)-1]
			m := min(len(chunk), cap(*last)-len(*last))
			*last = append(*last, chunk[:m]...)
			chunk = chunk[m:]
			n += m
		}
		if err != bufio.ErrBufferFull {
			break
		}
		chunk, err = br.ReadSlice('\n')
	}
	// One slice for the parser; it takes the blocks' place in the budget.
	line = make([]byte, 0, n)
	for _, b := range blocks {
		line = append(line, *b...)
	}
	budget.give(held - int64(n))
	return endOfLine(line, err, max, int64(n))
}

// endOfLine strips a line's "\n" and "\r" and checks its cap.
func endOfLine(line []byte, err error, max int, held int64) ([]byte, int64, error) {
	if err == nil {
		line = line[:len(line)-1]
	}
	line = bytes.TrimSuffix(line, []byte("\r"))
	if len(line) > max {
		return nil, held, errLineTooLongWhole
	}
	return line, held, err
}

// eachLine calls fn for each line of a text file read from r (the trust
// list, the agents file), numbered from 1, without its end: a line over max
// bytes is passed as tooLong, and the rest of it skipped. An error of fn
// stops the reading and is returned.
func eachLine(r io.Reader, max int, fn func(n int, line []byte, tooLong bool) error) error {
	br := bufio.NewReaderSize(r, 4096)
	for n := 1; ; n++ {
		line, err := readLine(br, max)
		tooLong := errors.Is(err, errLineTooLong)
		if tooLong {
			whole := err == errLineTooLongWhole
			line, err = nil, nil
			if !whole {
				err = skipLine(br) // io.EOF when it was the last line
			}
		}
		eof := err == io.EOF
		if err != nil && !eof {
			return err
		}
		if !eof || len(line) > 0 || tooLong {
			if err := fn(n, line, tooLong); err != nil {
				return err
			}
		}
		if eof {
			return nil
		}
	}
}

// skipLine consumes the rest of a line.
func skipLine(br *bufio.Reader) error {
	for {
		_, err := br.ReadSlice('\n')
		if err != bufio.ErrBufferFull {
			return err
		}
	}
}

// isBlank reports whether a line holds nothing but JSON white space (space,
// tab; "\r\n" is already cut), which PROTOCOL §3 ignores. A form feed or a
// Unicode space is not white space in JSON: such a line is a parse error.
func isBlank(line []byte) bool {
	for _, c := range line {
		if c != ' ' && c != '\t' && c != '\r' {
			return false
		}
	}
	return true
}

// declaredSize reads the "size" a params object declares, or -1 when it
// declares none. A size that is not one non-negative integer (mistyped,
// negative, or given twice) is an error: the body cannot be found.
func declaredSize(params json.RawMessage) (int64, error) {
	if len(params) == 0 {
		return -1, nil
	}
	s := &jsonScanner{b: params}
	s.open = s.inline[:0]
	if !s.value() {
		return 0, errors.New("params are not JSON")
	}
	var raw []byte
	for _, m := range s.members {
		if m.key == "size" {
			if raw != nil {
				return 0, errors.New(`"size" is given twice`)
			}
			raw = m.raw
		}
	}
	if raw == nil {
		return -1, nil
	}
	n, err := strconv.ParseInt(string(raw), 10, 64)
	if err != nil || n < 0 || raw[0] == '-' {
		return 0, errors.New(`"size" must be a non-negative integer`)
	}
	return n, nil
}

// bodySize reads the size a body-carrying request must declare.
func bodySize(params json.RawMessage) (int64, error) {
	n, err := declaredSize(params)
	if err == nil && n < 0 {
		err = errors.New(`missing field "size" in params: this method takes a body of that many bytes`)
	}
	return n, err
}

// bodyReader reads a request's body under the body timeout and remembers
// how much was read and whether the stream broke.
type bodyReader struct {
	r       io.Reader
	dr      *deadlineReader
	timeout time.Duration
	n       int64
	err     error // a read error other than the body's end: the stream is broken
}

func (b *bodyReader) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	prev := b.dr.timeout
	b.dr.timeout = b.timeout
	n, err := b.r.Read(p)
	b.dr.timeout = prev
	b.n += int64(n)
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}
