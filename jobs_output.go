package main

// jobs_output.go: what goes into a job's log: the agent's own lines, what
// it says when output cannot all be kept, and a process's output turned
// into entries (lines split at maxLogLine between characters, invalid UTF-8
// replaced, and the JSON string encoding the log stores them in).

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// logf writes one "agent" log line (split like output if long).
func (j *job) logf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	var texts [][]byte
	for _, line := range strings.Split(msg, "\n") {
		splitText([]byte(line), func(piece []byte) { texts = append(texts, piece) })
	}
	j.appendLog("agent", texts)
}

func (j *job) appendLog(stream string, texts [][]byte) {
	if err := j.log.append(stream, time.Now(), texts); err != nil {
		j.logWriteFailed(err)
	}
}

// logWriteFailed records why the job's output is not all kept, once for
// each cause, and says so in its log, its status and the agent's log: the
// output reached -job-max-log (the job goes on and its outcome stands), or
// the log could not be written (the disk is full: see outputLost).
func (j *job) logWriteFailed(err error) {
	j.mu.Lock()
	cut := errors.Is(err, errLogCut)
	first := (cut && !j.logCut) || (!cut && j.logErr == "")
	if cut {
		j.logCut = true
	} else if first {
		j.logErr = err.Error()
	}
	j.mu.Unlock()
	if !first {
		return
	}
	if cut {
		j.m.log.Warn("job output past -job-max-log is dropped", "ticket", j.id, "job_max_log", j.log.max)
		j.logf("output past %d bytes is not kept (the agent's -job-max-log): the job goes on", j.log.max)
		return
	}
	j.m.log.Error("failed to write a job's log: its output is being lost", "ticket", j.id, "err", err)
	j.logf("output is not being kept: %v", err)
}

// outputLost is an error when some of the job's output could not be
// written, else nil. A script whose output was lost does not count as a
// success: its output was what it was run for. The cause is in the agent
// line that said so, and in log_error.
func (j *job) outputLost() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.logErr == "" {
		return nil
	}
	return errors.New("its output could not all be written")
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
