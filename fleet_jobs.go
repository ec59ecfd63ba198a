package main

// fleet_jobs.go: starting a job with a ticket of the client's choosing
// (PROTOCOL §5), which single-mode exec and deploy use too, and the fan-out
// forms of exec, call and jobs.

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// ticketless holds the agents (by the address or name dialled) that
// refused a ticket: they are older than PROTOCOL §5's client-chosen tickets,
// so their starts are sent without one.
var ticketless sync.Map

// clientTicket is a ticket of the client's choosing: 32 of a-z 0-9.
func clientTicket() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

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

// callTimeout bounds a request of a fan-out command on an open connection,
// so that an agent cut off mid-way cannot hold its slot for ever.
const callTimeout = followWait + 30*time.Second

// callOn makes one request on cc within callTimeout.
func callOn(cc *clientConn, method string, params, result any) error {
	cc.tc.SetDeadline(time.Now().Add(callTimeout))
	defer cc.tc.SetDeadline(time.Time{})
	return cc.call(method, params, result)
}

// fanExec runs exec's script on every selected agent.
func (c *clientCmd) fanExec(params map[string]any) int {
	f := newFanOut(c)
	if f == nil {
		return 1
	}
	defer f.out.runProgress()()
	defer f.handleInterrupt()()
	f.each(f.all(), nil, func(i int, a *agentEntry, w *agentOut) agentResult {
		st, fail := f.runJob(a, w, "script.start", params)
		if fail != nil {
			return *fail
		}
		return jobResult(st)
	})
	return f.finish(false)
}

// onEach runs fn on an open connection to every selected agent, at most
// -parallel at a time, and returns the exit code after the summary. The
// table rows fn adds (cells apart by "\t") are printed under head, in file
// order, before the summary; -json has the same in the end events.
func (c *clientCmd) onEach(head string, fn func(x *onAgent) agentResult) int {
	f := newFanOut(c)
	if f == nil {
		return 1
	}
	stopProgress := f.out.runProgress()
	rows := make([][]string, len(f.agents))
	f.each(f.all(), nil, func(i int, a *agentEntry, w *agentOut) agentResult {
		cc, fail := f.connect(a)
		if fail != nil {
			return *fail
		}
		defer cc.Close()
		return fn(&onAgent{agentOut: w, f: f, a: a, cc: cc, rows: &rows[i]})
	})
	stopProgress()
	f.out.stopProgress()
	if head != "" && !f.out.json {
		tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, head)
		for _, rs := range rows {
			for _, r := range rs {
				fmt.Fprintln(tw, r)
			}
		}
		tw.Flush()
	}
	return f.finish(false)
}

// onAgent is one agent's turn in onEach: its output, its entry, its
// connection, and its rows of the table.
type onAgent struct {
	*agentOut
	f    *fanOut
	a    *agentEntry
	cc   *clientConn
	rows *[]string
}

// row adds a row to the table: the agent's name, then cells.
func (x *onAgent) row(cells ...string) {
	*x.rows = append(*x.rows, strings.Join(append([]string{x.a.Name}, cells...), "\t"))
}

// fanCall sends one request to every selected agent and prints each
// result on one line.
func (c *clientCmd) fanCall(method string, params json.RawMessage) int {
	return c.onEach("", func(x *onAgent) agentResult {
		var result json.RawMessage
		if err := callOn(x.cc, method, params, &result); err != nil {
			return callFailed(method, err)
		}
		x.say("%s", result)
		return agentResult{outcome: outOK, fields: map[string]any{"result": result}}
	})
}

// jobRow is one job of job.list.
type jobRow struct {
	Ticket  string  `json:"ticket"`
	Kind    string  `json:"kind"`
	State   string  `json:"state"`
	Outcome *string `json:"outcome"`
	Started *string `json:"started"`
}

// fanJobs lists the jobs of every selected agent in one table with an
// AGENT column.
func (c *clientCmd) fanJobs() int {
	return c.onEach("AGENT\tTICKET\tKIND\tSTATE\tOUTCOME\tSTARTED", func(x *onAgent) agentResult {
		var r struct {
			Jobs []jobRow `json:"jobs"`
		}
		if err := callOn(x.cc, "job.list", nil, &r); err != nil {
			return callFailed("job.list", err)
		}
		for _, j := range r.Jobs {
			x.row(j.Ticket, j.Kind, j.State, orDash(j.Outcome), orDash(j.Started))
		}
		return agentResult{outcome: outOK, fields: map[string]any{"jobs": r.Jobs}}
	})
}
