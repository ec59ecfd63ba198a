package main

// jobs_log.go: a job's output log. On disk it is an append-only file of
// JSON lines, one an entry, written exactly as job.status answers them
// ({"seq":…,"stream":…,"text":…,"time":…}), so that reading needs no
// re-encoding. In memory a job keeps only the log's extent and a bounded
// index of offsets, so output of any size leaves the agent's memory flat.
// A log from an earlier run is not read at start-up: its extent is found
// from its end when it is first used, and its index is built by the reads
// that pass over it.

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"io"
	"os"
	"strconv"
	"sync"
	"time"
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
	// tailWindow is how much of a log's end is read to find its last whole
	// entry: more than the longest entry (maxLogLine of text, each byte
	// escaped in at most six).
	tailWindow = 1 << 20
	// maxMemLog bounds the agent lines a log keeps in memory once its file
	// cannot be written (the disk is full).
	maxMemLog = 64 << 10
	// timeLayout is RFC 3339 in UTC with milliseconds.
	timeLayout = "2006-01-02T15:04:05.000Z07:00"
)

// errLogCut is append's report that output reached the log's cap and the
// rest is dropped.
var errLogCut = errors.New("the job's output reached -job-max-log")

// logMark is a place in the log: the entry seq starts at byte off.
type logMark struct{ seq, off int64 }

// jobLog is the on-disk log of one job and its in-memory index.
type jobLog struct {
	path     string
	onAppend func() // called after entries are added (wakes long-polls)
	max      int64  // bytes of entries on disk past which output (not agent lines) is dropped; 0: no cap
	lazy     bool   // a log of an earlier run, whose extent is found on first use

	once    sync.Once // finds a lazy log's extent
	loadErr error

	wmu  sync.Mutex // serialises appends: guards f, buf, cut, werr
	f    *os.File   // opened for appending on first use
	buf  []byte
	cut  bool  // output reached max: it is dropped from then on
	werr error // the first write error: output is dropped from then on

	mu      sync.Mutex // guards the extent, the index and mem below
	last    int64      // seq of the last entry
	size    int64      // bytes of whole entries in the file
	indexed int64      // the checkpoints cover the entries before this offset
	every   int64      // a checkpoint every this many entries
	marks   []logMark  // checkpoints, by seq
	cursors [8]logMark // where recent answers ended, so followers resume without scanning
	cursorN int
	mem     [][]byte // agent entries after the file's that could not be written, served from here
}

func newJobLog(path string, onAppend func()) *jobLog {
	return &jobLog{path: path, onAppend: onAppend, every: 256}
}

// ensure finds a lazy log's extent, once.
func (l *jobLog) ensure() error {
	if l.lazy {
		l.once.Do(func() { l.loadErr = l.load() })
	}
	return l.loadErr
}

// extent returns the last seq and the log's size in whole entries on disk.
func (l *jobLog) extent() (last, size int64) {
	l.ensure()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last, l.size
}

// append writes one entry per text in one write, assigning seqs. texts are
// raw output (at most maxLogLine bytes each); invalid UTF-8 is replaced.
// Output past the cap is dropped (errLogCut, reported once). A failed
// write is cut off the file, reported once, and stops the output from
// being written from then on; agent lines are then kept in memory, so the
// agent can still say what happened. A job never blocks on its log.
func (l *jobLog) append(stream string, now time.Time, texts [][]byte) error {
	if len(texts) == 0 {
		return nil
	}
	lerr := l.ensure()
	l.wmu.Lock()
	defer l.wmu.Unlock()
	output := stream != "agent"
	if output && (l.cut || l.werr != nil) {
		return nil // dropped, as the log said when it began
	}
	l.mu.Lock()
	last, size := l.last, l.size
	l.mu.Unlock()
	stamp := now.UTC().AppendFormat(nil, timeLayout)
	b := l.buf[:0]
	var marks []logMark
	n := 0
	for i, t := range texts {
		seq, start := last+1+int64(i), len(b)
		b = append(b, `{"seq":`...)
		b = strconv.AppendInt(b, seq, 10)
		b = append(b, `,"stream":"`...)
		b = append(b, stream...)
		b = append(b, `","text":`...)
		b = appendJSONText(b, t)
		b = append(b, `,"time":"`...)
		b = append(b, stamp...)
		b = append(b, "\"}\n"...)
		if output && l.max > 0 && size+int64(len(b)) > l.max {
			b = b[:start]
			break
		}
		if (seq-1)%256 == 0 { // every is a multiple of 256; addMark keeps the right ones
			marks = append(marks, logMark{seq, size + int64(start)})
		}
		n++
	}
	if cap(b) <= 256<<10 {
		l.buf = b // keep a modest buffer for the next batch, not a huge one
	}
	var err error
	if n < len(texts) {
		l.cut, err = true, errLogCut
	}
	if n == 0 {
		return err
	}
	if l.werr == nil && lerr != nil {
		l.werr = lerr
		err = lerr
	}
	if l.werr == nil && l.f == nil {
		l.f, l.werr = os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|oNoFollow, 0o600)
		err = cmp.Or(l.werr, err)
	}
	if l.werr == nil {
		if _, werr := l.f.Write(b); werr != nil {
			// Cut a partial write off so the file holds whole entries only.
			l.f.Truncate(size)
			l.werr, err = werr, werr
		}
	}
	l.mu.Lock()
	switch {
	case l.werr == nil:
		if l.indexed == size { // an index built by reads covers only what they passed
			for _, m := range marks {
				l.addMark(m)
			}
			l.indexed = size + int64(len(b))
		}
		l.last, l.size = last+int64(n), size+int64(len(b))
	case !output && memBytes(l.mem)+len(b) <= maxMemLog:
		for line := range bytes.Lines(b) {
			l.mem = append(l.mem, bytes.Clone(line[:len(line)-1]))
		}
		l.last = last + int64(n)
	}
	l.mu.Unlock()
	if l.onAppend != nil {
		l.onAppend()
	}
	return err
}

func memBytes(lines [][]byte) int {
	n := 0
	for _, l := range lines {
		n += len(l) + 1
	}
	return n
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
// Agent lines kept in memory are written once more, for the space a full
// disk may have got back since.
func (l *jobLog) closeWriter() {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if l.f == nil {
		return
	}
	l.mu.Lock()
	mem, size := l.mem, l.size
	l.mu.Unlock()
	// Cut first: the failed write's own cut may have failed too.
	if len(mem) > 0 && l.f.Truncate(size) == nil {
		b := append(bytes.Join(mem, []byte("\n")), '\n')
		if _, err := l.f.Write(b); err != nil {
			l.f.Truncate(size)
		} else {
			l.mu.Lock()
			l.size, l.mem = size+int64(len(b)), nil
			l.mu.Unlock()
		}
	}
	l.f.Close()
	l.f = nil
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

// read returns the entries after seq after, bounded by maxAnswerEntries
// and maxAnswerBytes, and the seq to continue after. Checkpoints for the
// part of the file it is first to pass over are added to the index.
func (l *jobLog) read(after int64) ([]json.RawMessage, int64, error) {
	if err := l.ensure(); err != nil {
		return nil, after, err
	}
	l.mu.Lock()
	from := l.start(after)
	last, size, indexed, mem := l.last, l.size, l.indexed, l.mem
	l.mu.Unlock()
	if after >= last {
		return nil, after, nil
	}
	var out []json.RawMessage
	next, bytesOut := after, 0
	full := func() bool { return len(out) >= maxAnswerEntries || (bytesOut >= maxAnswerBytes && len(out) > 0) }
	if from.off < size {
		f, err := os.Open(l.path)
		if err != nil {
			return nil, after, err
		}
		defer f.Close()
		br := bufio.NewReaderSize(io.NewSectionReader(f, from.off, size-from.off), 64<<10)
		off, frontier := from.off, indexed
		var marks []logMark
		for !full() {
			line, err := readLogLine(br)
			if err == io.EOF {
				break
			}
			if err != nil {
				return nil, after, err
			}
			seq, ok := entrySeq(line)
			if !ok {
				return nil, after, errors.New("job log " + strconv.Quote(l.path) + " is corrupt")
			}
			if off == frontier {
				if (seq-1)%256 == 0 {
					marks = append(marks, logMark{seq, off})
				}
				frontier = off + int64(len(line)) + 1
			}
			off += int64(len(line)) + 1
			if seq <= after {
				continue
			}
			out = append(out, json.RawMessage(line))
			bytesOut += len(line)
			next = seq
		}
		l.mu.Lock()
		if l.indexed == indexed && frontier > indexed {
			for _, m := range marks {
				l.addMark(m)
			}
			l.indexed = frontier
		}
		if len(out) > 0 {
			l.cursors[l.cursorN%len(l.cursors)] = logMark{next + 1, off}
			l.cursorN++
		}
		l.mu.Unlock()
	}
	for _, line := range mem {
		if full() {
			break
		}
		if seq, _ := entrySeq(line); seq > after {
			out = append(out, json.RawMessage(line))
			bytesOut += len(line)
			next = seq
		}
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

// load finds the extent of a log of an earlier run from its end. An
// incomplete or unreadable tail, left by a crash in the middle of a write,
// is cut off so that appends continue with whole entries.
func (l *jobLog) load() error {
	f, err := os.OpenFile(l.path, os.O_RDWR|oNoFollow, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	last, size, err := lastEntry(f, fi.Size())
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.last, l.size = last, size
	l.mu.Unlock()
	if fi.Size() > size {
		return f.Truncate(size)
	}
	return nil
}

// lastEntry returns the seq of the last whole, valid entry of a log of end
// bytes, and the offset after it, reading only the last tailWindow bytes.
// When no whole entry ends there (a corrupt tail that long), the log is
// read from the start up to its first bad entry.
func lastEntry(f *os.File, end int64) (last, size int64, err error) {
	from := max(0, end-tailWindow)
	buf := make([]byte, end-from)
	if _, err := f.ReadAt(buf, from); err != nil && err != io.EOF {
		return 0, 0, err
	}
	for stop := bytes.LastIndexByte(buf, '\n'); stop >= 0; {
		start := bytes.LastIndexByte(buf[:stop], '\n') + 1
		if start == 0 && from > 0 {
			break // the line may begin before the window
		}
		if line := buf[start:stop]; json.Valid(line) {
			if seq, ok := entrySeq(line); ok {
				return seq, from + int64(stop) + 1, nil
			}
		}
		stop = start - 1
	}
	if from == 0 {
		return 0, 0, nil
	}
	br := bufio.NewReaderSize(io.NewSectionReader(f, 0, end), 64<<10)
	for {
		line, err := readLogLine(br)
		if err != nil {
			return last, size, nil
		}
		seq, ok := entrySeq(line)
		if !ok || seq != last+1 || !json.Valid(line) {
			return last, size, nil
		}
		last, size = seq, size+int64(len(line))+1
	}
}
