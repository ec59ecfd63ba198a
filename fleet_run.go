package main

// fleet_run.go: the fan-out engine (FLEET §4): every selected agent, at most
// -parallel at a time, each with an outcome; connecting with the pin
// checked and the failure named; running and following a job; the summary
// and the exit code; Ctrl-C cancelling every job. What agents print goes
// through fleet_output.go.
//
// Memory and open files are bounded by -parallel: an agent holds a
// connection and buffers only while it runs; what stays for every agent is
// its result, a few words.

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"
)

// Outcomes of one agent (FLEET §4), in the order the total line counts them.
const (
	outOK          = "ok"
	outFailed      = "failed"
	outUnreachable = "unreachable"
	outRefused     = "refused"
	outPinMismatch = "pin-mismatch"
	outTimeout     = "timeout"
	outError       = "error" // agents status: anything else
	outCancelled   = "cancelled"
	outSkipped     = "skipped"
)

var outcomeOrder = []string{outOK, outFailed, outUnreachable, outRefused, outPinMismatch, outTimeout, outError, outCancelled, outSkipped}

// agentResult is how one agent's part ended.
type agentResult struct {
	outcome  string
	exitCode *int
	detail   string // the summary's words and -json's "error"
	duration time.Duration
	fields   map[string]any // the command's result, added to the -json end event
}

// fanOut is one client command run on several agents.
type fanOut struct {
	c        *clientCmd
	ff       *fleetFlags
	agents   []*agentEntry
	id       *identity
	sessions tls.ClientSessionCache
	out      *fleetOut
	start    time.Time
	results  []agentResult // by agent index, filled as agents end
	hold     bool          // the command reports the agents' -json ends itself

	mu         sync.Mutex // guards following and interrupts
	following  map[*follower]*agentOut
	interrupts int
}

// newFanOut prepares the run of c on its selected agents; nil means the
// client identity could not be loaded (said on stderr).
func newFanOut(c *clientCmd) *fanOut {
	id, err := ensureIdentity(&config{Home: c.opts.home}, c.stderr)
	if err != nil {
		fmt.Fprintf(c.stderr, "tentacle %s: %v\n", c.name, err)
		return nil
	}
	width := 0
	for _, a := range c.fan {
		width = max(width, len(a.Name))
	}
	f := &fanOut{
		c: c, ff: c.fleet, agents: c.fan, id: id, start: time.Now(),
		sessions:  tls.NewLRUClientSessionCache(2 * c.fleet.parallel),
		results:   make([]agentResult, len(c.fan)),
		following: map[*follower]*agentOut{},
		out:       &fleetOut{stdout: c.stdout, stderr: c.stderr, width: width, json: c.fleet.jsonOut(), group: c.fleet.group},
	}
	if !f.out.json && progressTo(c.stderr) != nil {
		f.out.prog = &fleetProgress{label: c.name, total: len(c.fan), start: f.start}
	}
	return f
}

// all is every agent's index, in file order.
func (f *fanOut) all() []int {
	idx := make([]int, len(f.agents))
	for i := range idx {
		idx[i] = i
	}
	return idx
}

// each runs fn for the agents idx, at most -parallel at a time. An agent
// whose turn comes once stop says so gets stop's result instead.
func (f *fanOut) each(idx []int, stop func() *agentResult, fn func(i int, a *agentEntry, w *agentOut) agentResult) {
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(f.ff.parallel, len(idx)) {
		wg.Go(func() {
			for i := range next {
				a := f.agents[i]
				w := f.out.agent(a.Name)
				var r agentResult
				if s := f.stopped(stop); s != nil {
					r = *s
				} else {
					t0 := time.Now()
					if r = fn(i, a, w); r.duration == 0 {
						r.duration = time.Since(t0)
					}
				}
				f.results[i] = r
				f.out.end(a, r, w, f.hold)
			}
		})
	}
	for _, i := range idx {
		next <- i
	}
	close(next)
	wg.Wait()
}

func (f *fanOut) stopped(stop func() *agentResult) *agentResult {
	f.mu.Lock()
	interrupted := f.interrupts > 0
	f.mu.Unlock()
	if interrupted {
		return &agentResult{outcome: outCancelled, detail: "not started (Ctrl-C)"}
	}
	if stop != nil {
		return stop()
	}
	return nil
}

// finish clears the progress line and prints the summary: a line per agent
// that is not ok (every agent, with all), then the total. It returns the
// exit code: 0 when every agent is ok.
func (f *fanOut) finish(all bool) int {
	f.out.stopProgress()
	code := 0
	counts := map[string]int{}
	for i, r := range f.results {
		counts[r.outcome]++
		if r.outcome != outOK {
			code = 1
		}
		if !f.out.json && (all || r.outcome != outOK) {
			fmt.Fprintf(f.c.stderr, "%-*s  %-12s %s\n", f.out.width, f.agents[i].Name, r.outcome, r.detail)
		}
	}
	if !f.out.json {
		fmt.Fprintln(f.c.stderr, totalLine(len(f.results), counts, time.Since(f.start)))
	}
	return code
}

// totalLine is "12 agents: 10 ok, 1 failed, 1 unreachable (3.4s)".
func totalLine(n int, counts map[string]int, took time.Duration) string {
	parts := []string{fmt.Sprintf("%d ok", counts[outOK])}
	for _, o := range outcomeOrder[1:] {
		if counts[o] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[o], o))
		}
	}
	return fmt.Sprintf("%s: %s (%.1fs)", countOf(n, "agent"), strings.Join(parts, ", "), took.Seconds())
}

// errPinMismatch is what fleetDial's pin check answers the TLS stack.
var errPinMismatch = errors.New("pin mismatch")

// fleetDial connects to addr, checks the pin (any thumbprint when pin is
// ""), and pings, all within timeout. It returns the thumbprint shown even
// when it then fails (the agent's certificate arrives before the agent
// refuses an untrusted client), the time of the handshake and the ping, and
// on failure the outcome it stands for.
func fleetDial(addr string, id *identity, pin, proxy string, timeout time.Duration, sessions tls.ClientSessionCache) (cc *clientConn, shown string, rtt time.Duration, outcome string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	nc, err := dialNet(ctx, addr, proxy)
	if err != nil {
		if ne, ok := errors.AsType[net.Error](err); ctx.Err() != nil || ok && ne.Timeout() {
			err = fmt.Errorf("no connection within %s", timeout)
		}
		return nil, "", 0, outUnreachable, err
	}
	t0 := time.Now()
	conf := clientTLSConfig(id, sessions)
	conf.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("the agent sent no certificate")
		}
		shown = thumbprint(cs.PeerCertificates[0])
		if pin != "" && shown != pin {
			return errPinMismatch
		}
		return nil
	}
	tc := tls.Client(&batchConn{Conn: nc}, conf)
	err = tc.HandshakeContext(ctx)
	cc = &clientConn{tc: tc, br: bufio.NewReaderSize(tc, 64<<10), bw: bufio.NewWriterSize(tc, 64<<10),
		agent: shown, addr: addr, self: id.thumbprint}
	if err == nil {
		// The ping's answer is read raw: under TLS 1.3 an agent's refusal
		// arrives as an alert in its place, and that alert is what tells
		// "refused" from the other failures below.
		dl, _ := ctx.Deadline()
		tc.SetDeadline(dl)
		if err = cc.send("ping", nil, nil, 0); err == nil {
			_, err = readLine(cc.br, 1<<20)
		}
		tc.SetDeadline(time.Time{})
	}
	rtt = time.Since(t0)
	if err == nil {
		cc.answered = true // the ping's answer was read above
		return cc, shown, rtt, outOK, nil
	}
	nc.Close()
	var oe *net.OpError
	var ne net.Error
	switch {
	case errors.Is(err, errPinMismatch):
		return nil, shown, rtt, outPinMismatch, fmt.Errorf("the agent at %s has thumbprint %s, not the pinned %s: refusing to talk to it", addr, shown, pin)
	case errors.As(err, &oe) && oe.Op == "remote error" && strings.Contains(oe.Err.Error(), "certificate"):
		return nil, shown, rtt, outRefused, refusedError(addr, id.thumbprint)
	case ctx.Err() != nil || errors.As(err, &ne) && ne.Timeout():
		return nil, shown, rtt, outTimeout, fmt.Errorf("no answer from %s within %s", addr, timeout)
	}
	return nil, shown, rtt, outError, err
}

// connect dials agent a for this run; on failure the result says why.
func (f *fanOut) connect(a *agentEntry) (*clientConn, *agentResult) {
	cc, _, _, outcome, err := fleetDial(a.address(), f.id, a.Pin, f.c.opts.proxy, f.ff.connectTimeout, f.sessions)
	if err != nil {
		return nil, &agentResult{outcome: outcome, detail: err.Error()}
	}
	return cc, nil
}

// callFailed is the result of a request that failed on an open connection.
func callFailed(what string, err error) agentResult {
	var re *rpcError
	if errors.As(err, &re) {
		return agentResult{outcome: outFailed, detail: fmt.Sprintf("%s: %s (%s)", what, re.Message, re.Kind())}
	}
	return agentResult{outcome: outUnreachable, detail: fmt.Sprintf("%s: %v", what, err)}
}

// follower is the job follower of agent a, printing through w.
func (f *fanOut) follower(a *agentEntry, w *agentOut) *follower {
	o := &clientOpts{home: f.c.opts.home, pin: a.Pin, proxy: f.c.opts.proxy, timeout: f.ff.connectTimeout, stderr: f.c.stderr, sessions: f.sessions}
	return &follower{o: o, addr: a.address(), cmd: f.c.name, stdout: bufio.NewWriter(w.stdout), stderr: bufio.NewWriter(w.stderr), errw: w.stderr}
}

// runJob starts a job (method with params, and a ticket of its own) on a
// and follows it to its end and completes it. A nil status comes with the
// result that says why there is none.
func (f *fanOut) runJob(a *agentEntry, w *agentOut, method string, params map[string]any) (*statusReply, *agentResult) {
	cc, fail := f.connect(a)
	if fail != nil {
		return nil, fail
	}
	fl := f.follower(a, w)
	fl.setConn(cc)
	defer fl.close()
	p := make(map[string]any, len(params)+1)
	for k, v := range params {
		p[k] = v
	}
	if _, err := fl.start(method, p); err != nil {
		r := callFailed(method, err)
		return nil, &r
	}
	f.track(fl, w)
	defer f.untrack(fl)
	st, err := fl.follow()
	if err != nil {
		fl.flush()
		if fl.aborted.Load() {
			return nil, &agentResult{outcome: outCancelled, detail: fmt.Sprintf("stopped waiting: job %s may still be running: follow it with \"tentacle job -follow %s %s\"", fl.ticket, a.Name, fl.ticket)}
		}
		r := callFailed("job "+fl.ticket, err)
		if !errors.As(err, new(*rpcError)) { // lost, not refused: the agent may carry on
			r.detail += fmt.Sprintf("; the job may go on on the agent: follow it with \"tentacle job -follow %s %s\"", a.Name, fl.ticket)
		}
		return nil, &r
	}
	if err := fl.complete(); err != nil {
		fmt.Fprintf(fl.stderr, "tentacle %s: job %s finished but could not be completed: %v\n", f.c.name, fl.ticket, err)
	}
	fl.flush()
	return st, nil
}

// jobResult is a finished exec job's result.
func jobResult(st *statusReply) agentResult {
	r := agentResult{exitCode: st.ExitCode, fields: map[string]any{"ticket": st.Ticket}}
	code, msg := jobExitCode(st)
	switch outcome := orDash(st.Outcome); outcome {
	case outcomeSuccess:
		r.outcome = outOK
	case outcomeTimedOut:
		r.outcome, r.detail = outTimeout, "timed out"
	case outcomeCancelled:
		r.outcome, r.detail = outCancelled, "cancelled"
	default:
		r.outcome, r.detail = outFailed, fmt.Sprintf("exit %d", code)
		if msg != "" {
			r.detail = msg
		}
	}
	return r
}

// track registers a running job for Ctrl-C; a job that starts after the
// first Ctrl-C is cancelled at once.
func (f *fanOut) track(fl *follower, w *agentOut) {
	f.mu.Lock()
	f.following[fl] = w
	n := f.interrupts
	f.mu.Unlock()
	if n > 0 {
		go f.cancelJob(fl, w)
	}
}

func (f *fanOut) untrack(fl *follower) {
	f.mu.Lock()
	delete(f.following, fl)
	f.mu.Unlock()
}

// cancelJob cancels fl's job, saying so in its output when that fails.
func (f *fanOut) cancelJob(fl *follower, w *agentOut) {
	if err := fl.sendCancel(); err != nil {
		w.line(true, fmt.Sprintf("tentacle %s: failed to cancel job %s: %v", f.c.name, fl.ticket, err))
	}
}

// handleInterrupt makes the first Ctrl-C cancel every running job and
// start no more, and a second one stop waiting for them. It returns the
// function that restores the default.
func (f *fanOut) handleInterrupt() func() {
	running := func() map[*follower]*agentOut {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.interrupts++
		m := make(map[*follower]*agentOut, len(f.following))
		for fl, w := range f.following {
			m[fl] = w
		}
		return m
	}
	return onInterrupts(func() {
		jobs := running()
		f.out.note(fmt.Sprintf("tentacle %s: cancelling the jobs running on %s and starting no more (Ctrl-C again to stop waiting)", f.c.name, countOf(len(jobs), "agent")))
		for fl, w := range jobs {
			go f.cancelJob(fl, w)
		}
	}, func() {
		for fl := range running() {
			fl.abort()
		}
	})
}
