package main

// fleet_output.go: what fan-out mode prints (FLEET §4): every agent's lines
// whole, as "NAME | text", as -group blocks or as -json events, and the
// progress line on a terminal, which every write clears first.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"
)

// fleetOut writes every agent's output to the command's stdout and stderr,
// a whole line at a time, so that no line holds two agents' bytes.
type fleetOut struct {
	stdout, stderr io.Writer
	width          int // the longest selected name
	json, group    bool
	prog           *fleetProgress // nil: no progress line

	mu sync.Mutex // guards writes to stdout and stderr, and prog
}

// agentOut is one agent's output: its stdout and stderr as line writers.
type agentOut struct {
	o              *fleetOut
	name           string
	stdout, stderr io.Writer

	mu    sync.Mutex // guards block
	block []outLine  // -group: the agent's lines until it ends
}

type outLine struct {
	stderr bool
	text   string
}

func (o *fleetOut) agent(name string) *agentOut {
	a := &agentOut{o: o, name: name}
	a.stdout, a.stderr = &lineSplitter{a: a}, &lineSplitter{a: a, stderr: true}
	return a
}

// line prints one whole line of the agent's stdout or stderr.
func (a *agentOut) line(stderr bool, text string) {
	o := a.o
	switch {
	case o.group:
		a.mu.Lock()
		a.block = append(a.block, outLine{stderr, text})
		a.mu.Unlock()
	case o.json:
		stream := "stdout"
		if stderr {
			stream = "stderr"
		}
		o.event(struct {
			Agent  string `json:"agent"`
			Stream string `json:"stream"`
			Text   string `json:"text"`
		}{a.name, stream, text})
	default:
		o.write(stderr, fmt.Sprintf("%-*s | %s\n", o.width, a.name, text))
	}
}

// write puts s on stdout or stderr, clearing the progress line first.
func (o *fleetOut) write(stderr bool, s string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.writeLocked(stderr, s)
}

func (o *fleetOut) writeLocked(stderr bool, s string) {
	o.prog.clear(o.stderr)
	if stderr {
		io.WriteString(o.stderr, s)
	} else {
		io.WriteString(o.stdout, s)
	}
}

// say prints a line of the command's own on the agent's stdout, in text
// modes only: -json carries the same in the agent's end event.
func (a *agentOut) say(format string, args ...any) {
	if !a.o.json {
		a.line(false, fmt.Sprintf(format, args...))
	}
}

// note prints a remark of the run itself on stderr (never with -json).
func (o *fleetOut) note(s string) {
	if !o.json {
		o.write(true, s+"\n")
	}
}

// event writes one JSON object on stdout.
func (o *fleetOut) event(v any) {
	b, _ := json.Marshal(v)
	o.write(false, string(b)+"\n")
}

// end reports the end of agent a's part: its -group block (when it
// printed lines, or whenever the run does not hold its ends back), and its
// -json event unless held (a rolling deploy reports its ends last, once
// rollbacks are known).
func (o *fleetOut) end(a *agentEntry, r agentResult, w *agentOut, hold bool) {
	for _, s := range []io.Writer{w.stdout, w.stderr} {
		s.(*lineSplitter).flush()
	}
	w.mu.Lock()
	block := w.block
	w.mu.Unlock()
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.prog != nil {
		o.prog.done++
		if r.outcome != outOK {
			o.prog.bad++
		}
	}
	switch {
	case o.json && !hold:
		o.writeLocked(false, o.endEvent(a, r))
	case o.group && (len(block) > 0 || !hold && r.outcome != outSkipped):
		exit := ""
		if r.exitCode != nil {
			exit = fmt.Sprintf(", exit %d", *r.exitCode)
		}
		o.writeLocked(false, fmt.Sprintf("── %s (%s%s, %.1fs) ──\n", a.Name, r.outcome, exit, r.duration.Seconds()))
		for _, l := range block {
			o.writeLocked(l.stderr, l.text+"\n")
		}
	}
}

// endEvent is -json's object for an agent that ended, with the command's
// result fields after the common ones.
func (o *fleetOut) endEvent(a *agentEntry, r agentResult) string {
	var errText *string
	if r.outcome != outOK && r.detail != "" {
		errText = &r.detail
	}
	b, _ := json.Marshal(struct {
		Agent      string  `json:"agent"`
		Address    string  `json:"address"`
		Outcome    string  `json:"outcome"`
		ExitCode   *int    `json:"exit_code"`
		DurationMS int64   `json:"duration_ms"`
		Error      *string `json:"error"`
	}{a.Name, a.Addr, r.outcome, r.exitCode, r.duration.Milliseconds(), errText})
	if len(r.fields) > 0 {
		extra, _ := json.Marshal(r.fields)
		b = append(append(b[:len(b)-1], ','), extra[1:]...)
	}
	return string(b) + "\n"
}

func (o *fleetOut) stopProgress() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.prog.clear(o.stderr)
	if o.prog != nil {
		o.prog.stopped = true
	}
}

// lineSplitter cuts an agent's stream into whole lines for agentOut.line.
type lineSplitter struct {
	a       *agentOut
	stderr  bool
	partial []byte
}

func (s *lineSplitter) Write(p []byte) (int, error) {
	n := len(p)
	for {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			s.partial = append(s.partial, p...)
			return n, nil
		}
		s.a.line(s.stderr, string(append(s.partial, p[:i]...)))
		s.partial, p = s.partial[:0], p[i+1:]
	}
}

// flush prints a last line that had no "\n".
func (s *lineSplitter) flush() {
	if len(s.partial) > 0 {
		s.a.line(s.stderr, string(s.partial))
		s.partial = nil
	}
}

// fleetProgress is the live status line on a terminal's stderr:
// "deploy site 2.0: batch 2/4 · 7 of 12 done · 6 ok · 1 failed · 12s".
// Its fields are guarded by fleetOut.mu; a nil one does nothing.
type fleetProgress struct {
	label     string
	phase     string // "batch 2/4", set by the command
	total     int
	done, bad int
	start     time.Time
	shown     bool
	stopped   bool
}

func (p *fleetProgress) clear(w io.Writer) {
	if p != nil && p.shown {
		io.WriteString(w, "\r\x1b[K")
		p.shown = false
	}
}

func (p *fleetProgress) draw(w io.Writer) {
	if p == nil || p.stopped {
		return
	}
	head := p.label
	if p.phase != "" {
		head += ": " + p.phase
	}
	fmt.Fprintf(w, "\r%s · %d of %d done · %d ok · %d failed · %ds\x1b[K", head, p.done, p.total, p.done-p.bad, p.bad, int(time.Since(p.start).Seconds()))
	p.shown = true
}

// runProgress redraws the progress line every quarter second until the
// returned function is called.
func (o *fleetOut) runProgress() func() {
	if o.prog == nil {
		return func() {}
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				o.mu.Lock()
				o.prog.draw(o.stderr)
				o.mu.Unlock()
			case <-stop:
				return
			}
		}
	}()
	return func() { close(stop); <-done }
}

// setPhase names the part of the run the progress line is in; a total
// other than 0 starts its counts again.
func (o *fleetOut) setPhase(label, phase string, total int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.prog != nil {
		o.prog.label, o.prog.phase = label, phase
		if total > 0 {
			o.prog.total, o.prog.done, o.prog.bad = total, 0, 0
		}
	}
}
