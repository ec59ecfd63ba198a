package main

// envelope_frame.go: the framing around the envelope (PROTOCOL §3): lines
// read under their cap, the read deadlines, and the binary bodies that
// follow a request line.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// deadlineReader reads a connection for the command loop. Before every
// read from the network it sends the answers still buffered (flush) and
// sets a read deadline, so a stalled peer is noticed: timeout is the idle
// limit between requests and the body limit within one.
type deadlineReader struct {
	c       *conn
	timeout time.Duration
	flush   func() error
}

func (d *deadlineReader) Read(p []byte) (int, error) {
	if err := d.flush(); err != nil {
		return 0, err
	}
	if err := d.c.armDeadline(d.timeout); err != nil {
		return 0, err
	}
	return d.c.tc.Read(p)
}

// errLineTooLong is returned by readLine for a line over its cap whose end
// has not been read; errLineTooLongWhole for one read to its end.
var (
	errLineTooLong      = errors.New("line too long")
	errLineTooLongWhole = fmt.Errorf("%w (read to its end)", errLineTooLong)
)

// readLine reads one line, without "\n" and a "\r" before it, buffering at
// most about max bytes (plus the reader's own buffer): past that it stops
// with errLineTooLong, leaving the rest of the line unread. At EOF a last
// line without "\n" is returned with io.EOF. The line is always a copy.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if err == bufio.ErrBufferFull {
			if len(line) > max+1 { // not even a trailing "\r" brings it under
				return nil, errLineTooLong
			}
			continue
		}
		if err == nil {
			line = line[:len(line)-1]
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) > max {
			return nil, errLineTooLongWhole
		}
		return line, err
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

// bodySize reads the size a body-carrying request declares.
func bodySize(params json.RawMessage) (int64, error) {
	var p struct {
		Size *int64 `json:"size"`
	}
	if len(params) > 0 {
		var m map[string]json.RawMessage
		json.Unmarshal(params, &m)
		if raw, ok := m["size"]; ok {
			if err := json.Unmarshal(raw, &p.Size); err != nil || p.Size == nil {
				return 0, errors.New(`"size" must be a non-negative integer`)
			}
		}
	}
	if p.Size == nil {
		return 0, errors.New(`missing field "size" in params: this method takes a body of that many bytes`)
	}
	if *p.Size < 0 {
		return 0, errors.New(`"size" must be a non-negative integer`)
	}
	return *p.Size, nil
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
