package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// jobs_follow.go: following one job from the client: its log streamed to
// stdout and stderr in order, the connection re-established when it drops
// (carrying on after the last line printed), Ctrl-C cancelling the job, and
// the job completed at its end; and starting a job with a ticket of the
// client's choosing (PROTOCOL §5), so that a start whose answer was lost is
// sent again and the job still runs once.

// logEntry is one line of a job's log.
type logEntry struct {
	Seq    int64  `json:"seq"`
	Stream string `json:"stream"`
	Text   string `json:"text"`
	Time   string `json:"time"`
}

// statusReply is job.status's answer, as the client reads it.
type statusReply struct {
	jobHead
	Logs   []logEntry      `json:"logs"`
	Next   int64           `json:"next"`
	Result json.RawMessage `json:"result"`

	LogTruncated bool   `json:"log_truncated"`
	LogError     string `json:"log_error"`
}

// follower streams one job's log to stdout and stderr, reconnecting when
// the connection drops.
type follower struct {
	o      *clientOpts
	addr   string
	cmd    string
	ticket string
	after  int64 // the seq of the last line printed
	stdout *bufio.Writer
	stderr *bufio.Writer
	errw   io.Writer // stderr unbuffered, for the Ctrl-C goroutine's remarks

	mu      sync.Mutex // guards cc
	cc      *clientConn
	aborted atomic.Bool // a second Ctrl-C: stop waiting
	// cancelled is closed once the job.cancel sent at the first Ctrl-C has
	// been answered (or failed).
	cancelled chan struct{}
}

func (f *follower) setConn(cc *clientConn) {
	f.mu.Lock()
	f.cc = cc
	f.mu.Unlock()
}

func (f *follower) conn() *clientConn {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cc
}

func (f *follower) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cc != nil {
		f.cc.Close()
	}
}

func (f *follower) flush() {
	f.stdout.Flush()
	f.stderr.Flush()
}

// call makes one request with a deadline a little past the longest wait,
// so that a connection that died silently is noticed.
func (f *follower) call(method string, params, result any) error {
	cc := f.conn()
	cc.tc.SetDeadline(time.Now().Add(followWait + 30*time.Second))
	defer cc.tc.SetDeadline(time.Time{})
	return cc.call(method, params, result)
}

// follow prints the job's log until it is done and every line is printed,
// and returns its final status.
func (f *follower) follow() (*statusReply, error) {
	for {
		var st statusReply
		params := map[string]any{"ticket": f.ticket, "after": f.after, "wait_ms": followWait.Milliseconds()}
		if err := f.call("job.status", params, &st); err != nil {
			if err := f.recover(err); err != nil {
				return nil, err
			}
			continue
		}
		f.print(st.Logs)
		if st.Next > f.after {
			f.after = st.Next
		}
		// Once the state is done no line is added: an answer without
		// lines means every one has been printed.
		if st.State == stateDone && len(st.Logs) == 0 {
			return &st, nil
		}
	}
}

// print writes log entries: stdout and stderr lines to their streams, the
// agent's remarks to stderr. A stream's buffer is flushed when the next entry
// is for the other one, so that with 2>&1 the lines keep the job's order.
func (f *follower) print(logs []logEntry) {
	var last *bufio.Writer
	for _, e := range logs {
		w, text := f.stderr, e.Text
		switch e.Stream {
		case "stdout":
			w = f.stdout
		case "stderr":
		default:
			text = "tentacle: " + text
		}
		if last != nil && last != w {
			last.Flush()
		}
		last = w
		w.WriteString(text)
		w.WriteByte('\n')
	}
	f.flush()
}

// recover decides what a failed call means: an answer from the agent is
// final; a broken connection is redialled with backoff for up to
// execReconnectFor.
func (f *follower) recover(err error) error {
	var re *rpcError
	if errors.As(err, &re) || f.aborted.Load() {
		return err
	}
	f.flush()
	fmt.Fprintf(f.stderr, "tentacle %s: connection lost (%v): reconnecting\n", f.cmd, err)
	f.stderr.Flush()
	f.conn().Close()
	deadline := time.Now().Add(execReconnectFor)
	delay := 100 * time.Millisecond
	for {
		if f.aborted.Load() {
			return errors.New("stopped waiting")
		}
		cc, derr := f.o.dial(f.addr)
		if derr == nil {
			f.setConn(cc)
			fmt.Fprintf(f.stderr, "tentacle %s: reconnected, continuing after line %d\n", f.cmd, f.after)
			f.stderr.Flush()
			return nil
		}
		if time.Now().Add(delay).After(deadline) {
			return fmt.Errorf("could not reconnect within %s: %v", execReconnectFor, derr)
		}
		time.Sleep(delay)
		delay = min(2*delay, 2*time.Second)
	}
}

// complete tells the agent the job's output has been read, so it removes
// the job. An answer lost with a dropped connection is retried once; a
// job already gone then is fine.
func (f *follower) complete() error {
	var final statusReply
	params := map[string]any{"ticket": f.ticket, "after": f.after}
	err := f.call("job.complete", params, &final)
	if err != nil {
		if rerr := f.recover(err); rerr != nil {
			return rerr
		}
		var re *rpcError
		if err = f.call("job.complete", params, &final); errors.As(err, &re) && re.Kind() == kindNotFound {
			return nil
		}
	}
	f.print(final.Logs)
	return err
}

// failed reports an error that ended following, and exec's exit code.
func (f *follower) failed(err error) int {
	if f.aborted.Load() {
		// Make sure the cancel went out before leaving.
		select {
		case <-f.cancelled:
		case <-time.After(5 * time.Second):
		}
		fmt.Fprintf(f.stderr, "tentacle %s: stopped waiting; job %s may still be running: follow it with \"tentacle job -follow %s %s\"\n", f.cmd, f.ticket, f.addr, f.ticket)
		f.flush()
		return exitCancelled
	}
	var re *rpcError
	if errors.As(err, &re) {
		fmt.Fprintf(f.stderr, "tentacle %s: job %s: %s (%s)\n", f.cmd, f.ticket, re.Message, re.Kind())
	} else {
		fmt.Fprintf(f.stderr, "tentacle %s: job %s: %v\n", f.cmd, f.ticket, err)
	}
	f.flush()
	return exitNoJob
}

// finish follows the started job to its end, with Ctrl-C cancelling it,
// and completes it: the final status, or (ok false) exec's exit code after
// a failure it has reported.
func (f *follower) finish() (st *statusReply, code int, ok bool) {
	stopSignals := f.handleInterrupt()
	defer stopSignals()
	st, err := f.follow()
	if err != nil {
		f.flush()
		return nil, f.failed(err), false
	}
	// Completing only tidies up: the outcome is known. A failure is only
	// worth a remark (the agent reaps the job after its retention period).
	if err := f.complete(); err != nil {
		fmt.Fprintf(f.stderr, "tentacle %s: job %s finished but could not be completed: %v\n", f.cmd, f.ticket, err)
	}
	return st, 0, true
}

// handleInterrupt makes the first Ctrl-C cancel the job (on a connection of
// its own, since the main one is in a long poll) and a second one, at least
// half a second later, stop waiting: some tools deliver one interrupt twice
// (timeout(1) signals the command and its process group). It returns a
// function that restores the default.
func (f *follower) handleInterrupt() func() {
	f.cancelled = make(chan struct{})
	return onInterrupts(func() {
		fmt.Fprintf(f.errw, "tentacle %s: cancelling job %s (Ctrl-C again to stop waiting)\n", f.cmd, f.ticket)
		go func() {
			defer close(f.cancelled)
			if err := f.sendCancel(); err != nil {
				fmt.Fprintf(f.errw, "tentacle %s: failed to cancel job %s: %v\n", f.cmd, f.ticket, err)
			}
		}()
	}, f.abort)
}

// abort stops waiting for the job: it runs on, on the agent.
func (f *follower) abort() {
	f.aborted.Store(true)
	f.conn().Close()
}

// sendCancel sends job.cancel on a connection of its own (the follower's
// is in a long poll).
func (f *follower) sendCancel() error {
	cc, err := f.o.dial(f.addr)
	if err != nil {
		return err
	}
	defer cc.Close()
	return cc.call("job.cancel", map[string]any{"ticket": f.ticket}, nil)
}

// onInterrupts calls first at the first Ctrl-C and again at each later one
// at least half a second after it: some tools deliver one interrupt twice
// (timeout(1) signals the command and its process group). It returns the
// function that restores the default.
func onInterrupts(first, again func()) (restore func()) {
	sigc := make(chan os.Signal, 2)
	signal.Notify(sigc, os.Interrupt)
	stop := make(chan struct{})
	go func() {
		var at time.Time
		for {
			select {
			case <-sigc:
			case <-stop:
				return
			}
			switch {
			case at.IsZero():
				at = time.Now()
				first()
			case time.Since(at) > 500*time.Millisecond:
				again()
			}
		}
	}()
	return func() {
		signal.Stop(sigc)
		close(stop)
	}
}

// ticketless holds the agents (by the address or name dialled) that
// refused a ticket: they are older than PROTOCOL §5's client-chosen tickets,
// so their starts are sent without one.
var ticketless sync.Map

// clientTicket is a ticket of the client's choosing: 32 of a-z 0-9.
func clientTicket() string { return randomHex(16) }

// maxStartResends bounds how often a start whose answer was lost is sent
// again (each after a reconnect).
const maxStartResends = 3

// start sends a job's start (script.start or deploy.start) with a ticket
// of the client's choosing, so that a start whose answer was lost with its
// connection is sent again on a new one and the job still runs once. An
// agent older than tickets refuses the field: the start is then sent once
// more without it, and that agent is remembered. It sets f.ticket.
func (f *follower) start(method string, params map[string]any) (state string, err error) {
	if _, old := ticketless.Load(f.addr); !old {
		params["ticket"] = clientTicket()
	}
	var r struct {
		Ticket string `json:"ticket"`
		State  string `json:"state"`
	}
	for resent := 0; ; {
		err = f.call(method, params, &r)
		if err == nil {
			f.ticket = r.Ticket
			return r.State, nil
		}
		_, sent := params["ticket"]
		var re *rpcError
		if errors.As(err, &re) {
			if sent && re.Kind() == kindInvalidParams && strings.Contains(re.Message, `unknown field "ticket"`) {
				ticketless.Store(f.addr, true)
				delete(params, "ticket")
				continue
			}
			return "", err
		}
		// No answer: without a ticket a second start could run the job
		// twice, so only a start with one is sent again.
		if !sent || resent == maxStartResends {
			return "", err
		}
		if f.recover(err) != nil {
			return "", err
		}
		resent++
	}
}
