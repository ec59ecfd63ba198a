package main

// jobs_log.go: a job's output log. On disk it is an append-only file of JSON
// lines, one an entry, written exactly as job.status answers them
// ({"seq":…,"stream":…,"text":…,"time":…}), so that reading needs no
// re-encoding. In memory a job keeps only the log's extent and a bounded
// index of offsets, so output of any size leaves the agent's memory flat.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

const (
	// maxLogLine bounds the text of one entry: a longer output line is
	// split into entries of at most this many bytes (at a UTF-8 boundary),
	// so that one answer, and the agent's buffer for a partial line, stay
	// small whatever a script prints.
	maxLogLine = 64 << 10
	// maxAnswerEntries and maxAnswerBytes bound one job.status answer; an
	// answer holds at least one entry even if it alone is larger.
	maxAnswerEntries = 4096
	maxAnswerBytes   = 1 << 20
	// maxCheckpoints bounds the index: when it fills, every other checkpoint
	// is dropped and the spacing doubles, so a reader scans at most about
	// 1/maxCheckpoints of the log to find its place.
	maxCheckpoints = 4096
	// timeLayout is RFC 3339 in UTC with milliseconds.
	timeLayout = "2006-01-02T15:04:05.000Z07:00"
)

// logMark is a place in the log: the entry seq starts at byte off.
type logMark struct{ seq, off int64 }

// jobLog is the on-disk log of one job and its in-memory index.
type jobLog struct {
	path     string
	onAppend func() // called after entries are added (wakes long-polls)

	wmu  sync.Mutex // serialises appends: guards f, buf, werr
	f    *os.File   // opened for appending on first use
	buf  []byte
	werr error // the first write error, reported once

	mu      sync.Mutex // guards the extent and the index below
	last    int64      // seq of the last entry
	size    int64      // bytes of whole entries
	every   int64      // a checkpoint every this many entries
	marks   []logMark  // checkpoints, by seq
	cursors [8]logMark // where recent answers ended, so followers resume without scanning
	cursorN int
}

func newJobLog(path string, onAppend func()) *jobLog {
	return &jobLog{path: path, onAppend: onAppend, every: 256}
}

// extent returns the last seq and the log's size in whole entries.
func (l *jobLog) extent() (last, size int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last, l.size
}

// append writes one entry per text in one write, assigning seqs. texts are
// raw output (at most maxLogLine bytes each); invalid UTF-8 is replaced.
// Errors are reported once through the returned value and the entries are
// dropped: a job must not block because its log cannot be written.
func (l *jobLog) append(stream string, now time.Time, texts [][]byte) error {
	if len(texts) == 0 {
		return nil
	}
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if l.f == nil {
		f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return l.fail(err)
		}
		l.f = f
	}
	last, size := l.extent()
	stamp := now.UTC().AppendFormat(nil, timeLayout)
	b := l.buf[:0]
	var marks []logMark
	for i, t := range texts {
		seq := last + 1 + int64(i)
		if (seq-1)%256 == 0 { // every is a multiple of 256; addMark keeps the right ones
			marks = append(marks, logMark{seq, size + int64(len(b))})
		}
		b = append(b, `{"seq":`...)
		b = strconv.AppendInt(b, seq, 10)
		b = append(b, `,"stream":"`...)
		b = append(b, stream...)
		b = append(b, `","text":`...)
		b = appendJSONText(b, t)
		b = append(b, `,"time":"`...)
		b = append(b, stamp...)
		b = append(b, "\"}\n"...)
	}
	if cap(b) <= 256<<10 {
		l.buf = b // keep a modest buffer for the next batch, not a huge one
	}
	if _, err := l.f.Write(b); err != nil {
		// Cut a partial write off so the file holds whole entries only.
		l.f.Truncate(size)
		return l.fail(err)
	}
	l.mu.Lock()
	l.last = last + int64(len(texts))
	l.size = size + int64(len(b))
	for _, m := range marks {
		l.addMark(m)
	}
	l.mu.Unlock()
	if l.onAppend != nil {
		l.onAppend()
	}
	return nil
}

// fail remembers a write error and returns it the first time only.
func (l *jobLog) fail(err error) error {
	if l.werr != nil {
		return nil
	}
	l.werr = err
	return err
}

// addMark adds a checkpoint, thinning the index when it is full. l.mu held.
func (l *jobLog) addMark(m logMark) {
	if (m.seq-1)%l.every != 0 {
		return
	}
	l.marks = append(l.marks, m)
	if len(l.marks) > maxCheckpoints {
		kept := l.marks[:0]
		for i, m := range l.marks {
			if i%2 == 0 {
				kept = append(kept, m)
			}
		}
		l.marks = kept
		l.every *= 2
	}
}

// closeWriter closes the append handle (the job has finished writing).
func (l *jobLog) closeWriter() {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
}

// start returns where to begin reading for entries after seq after: the
// nearest known place at or before entry after+1. l.mu held.
func (l *jobLog) start(after int64) logMark {
	best := logMark{1, 0}
	for _, c := range l.cursors {
		if c.seq == after+1 && c.seq > 0 {
			return c
		}
	}
	// marks are sorted by seq: binary search the last one <= after+1.
	lo, hi := 0, len(l.marks)
	for lo < hi {
		mid := (lo + hi) / 2
		if l.marks[mid].seq <= after+1 {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if lo > 0 {
		best = l.marks[lo-1]
	}
	for _, c := range l.cursors {
		if c.seq > best.seq && c.seq <= after+1 {
			best = c
		}
	}
	return best
}

// read returns the entries after seq after, within the first size bytes of
// the log, bounded by maxAnswerEntries and maxAnswerBytes, and the seq to
// continue after.
func (l *jobLog) read(after, size int64) ([]json.RawMessage, int64, error) {
	l.mu.Lock()
	from := l.start(after)
	l.mu.Unlock()
	if from.off >= size {
		return nil, after, nil
	}
	f, err := os.Open(l.path)
	if err != nil {
		return nil, after, err
	}
	defer f.Close()
	br := bufio.NewReaderSize(io.NewSectionReader(f, from.off, size-from.off), 64<<10)
	var out []json.RawMessage
	next, bytesOut, off := after, 0, from.off
	for len(out) < maxAnswerEntries && (bytesOut < maxAnswerBytes || len(out) == 0) {
		line, err := readLogLine(br)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, after, err
		}
		off += int64(len(line)) + 1
		seq, ok := entrySeq(line)
		if !ok {
			return nil, after, errors.New("job log " + strconv.Quote(l.path) + " is corrupt")
		}
		if seq <= after {
			continue
		}
		out = append(out, json.RawMessage(line))
		bytesOut += len(line)
		next = seq
	}
	if len(out) > 0 {
		l.mu.Lock()
		l.cursors[l.cursorN%len(l.cursors)] = logMark{next + 1, off}
		l.cursorN++
		l.mu.Unlock()
	}
	return out, next, nil
}

// readLogLine reads one line without its "\n" into a fresh slice; a last
// line without "\n" is incomplete and read as io.ErrUnexpectedEOF.
func readLogLine(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err == nil {
		return bytes.Clone(line[:len(line)-1]), nil
	}
	if err == bufio.ErrBufferFull {
		full := bytes.Clone(line)
		for err == bufio.ErrBufferFull {
			line, err = br.ReadSlice('\n')
			full = append(full, line...)
		}
		if err == nil {
			return full[:len(full)-1], nil
		}
		line = full
	}
	if err == io.EOF && len(line) > 0 {
		return nil, io.ErrUnexpectedEOF
	}
	return nil, err
}

// entrySeq reads the seq of an entry line, which always starts {"seq":N,.
func entrySeq(line []byte) (int64, bool) {
	const prefix = `{"seq":`
	if !bytes.HasPrefix(line, []byte(prefix)) {
		return 0, false
	}
	rest := line[len(prefix):]
	i := bytes.IndexByte(rest, ',')
	if i <= 0 {
		return 0, false
	}
	n, err := strconv.ParseInt(string(rest[:i]), 10, 64)
	return n, err == nil && n > 0
}

// load indexes an existing log (after a restart). An incomplete or
// unreadable tail, left by a crash in the middle of a write, is cut off so
// that appends continue with whole entries.
func (l *jobLog) load() error {
	f, err := os.OpenFile(l.path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 64<<10)
	var last, off int64
	l.mu.Lock()
	defer l.mu.Unlock()
	l.marks, l.every = nil, 256
	for {
		line, err := readLogLine(br)
		if err != nil {
			break
		}
		seq, ok := entrySeq(line)
		if !ok || seq != last+1 || !json.Valid(line) {
			break
		}
		l.addMark(logMark{seq, off})
		last, off = seq, off+int64(len(line))+1
	}
	l.last, l.size = last, off
	if st, err := f.Stat(); err == nil && st.Size() > off {
		return f.Truncate(off)
	}
	return nil
}

// appendJSONText appends s as a JSON string, replacing each byte of invalid
// UTF-8 with U+FFFD (as encoding/json does) and escaping without the HTML
// escapes encoding/json adds.
func appendJSONText(dst, s []byte) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, n := utf8.DecodeRune(s[i:])
		if r == utf8.RuneError && n == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += n
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// lineWriter turns one stream of a process's output into log entries. It is
// the process's stdout or stderr (os/exec copies the pipe into it in chunks
// of up to 32 KiB); it holds at most one partial line, so its memory is
// bounded by about maxLogLine plus one chunk.
type lineWriter struct {
	log     *jobLog
	stream  string
	partial []byte
	arena   []byte // the texts of one Write's entries, back to back
	ends    []int
	texts   [][]byte
	err     func(error) // reports a log write error
}

// Write never fails: a process must never block or die because its output
// could not be logged.
func (w *lineWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			w.partial = append(w.partial, p...)
			for len(w.partial) > maxLogLine {
				k := cutUTF8(w.partial, maxLogLine)
				w.add(w.partial[:k])
				w.partial = w.partial[:copy(w.partial, w.partial[k:])]
			}
			break
		}
		line := p[:i]
		if len(w.partial) > 0 {
			w.partial = append(w.partial, line...)
			line = w.partial
		}
		p = p[i+1:]
		w.addLine(line)
		w.partial = w.partial[:0]
	}
	w.commit()
	return n, nil
}

// flush logs a last line that had no "\n" (at the end of the output).
func (w *lineWriter) flush() {
	if len(w.partial) > 0 {
		w.addLine(w.partial)
		w.partial = w.partial[:0]
		w.commit()
	}
	w.partial, w.arena = nil, nil
}

// addLine adds a complete line (a "\r" before its "\n" dropped), split into
// pieces of at most maxLogLine bytes.
func (w *lineWriter) addLine(line []byte) {
	line = bytes.TrimSuffix(line, []byte("\r"))
	for len(line) > maxLogLine {
		k := cutUTF8(line, maxLogLine)
		w.add(line[:k])
		line = line[k:]
	}
	w.add(line)
}

func (w *lineWriter) add(text []byte) {
	splitText(text, func(piece []byte) {
		w.arena = append(w.arena, piece...)
		w.ends = append(w.ends, len(w.arena))
	})
}

// splitText passes text to emit in pieces of at most maxLogLine bytes of
// valid UTF-8: invalid bytes are replaced first (which can make text longer
// than it was), and pieces end between characters.
func splitText(text []byte, emit func([]byte)) {
	if !utf8.Valid(text) {
		text = bytes.ToValidUTF8(text, []byte("\uFFFD"))
	}
	for len(text) > maxLogLine {
		k := cutUTF8(text, maxLogLine)
		emit(text[:k])
		text = text[k:]
	}
	emit(text)
}

// commit appends the collected entries to the log in one write.
func (w *lineWriter) commit() {
	if len(w.ends) == 0 {
		return
	}
	w.texts = w.texts[:0]
	start := 0
	for _, e := range w.ends {
		w.texts = append(w.texts, w.arena[start:e])
		start = e
	}
	if err := w.log.append(w.stream, time.Now(), w.texts); err != nil && w.err != nil {
		w.err(err)
	}
	w.arena, w.ends = w.arena[:0], w.ends[:0]
	if cap(w.arena) > 4*maxLogLine {
		w.arena = nil
	}
}

// cutUTF8 returns where to cut b to at most max bytes without splitting a
// UTF-8 sequence (when b is valid there).
func cutUTF8(b []byte, max int) int {
	if len(b) <= max {
		return len(b)
	}
	for k := max; k > max-utf8.UTFMax && k > 0; k-- {
		if utf8.RuneStart(b[k]) {
			return k
		}
	}
	return max
}
