package main

// fleet_jobs.go: the fan-out forms of exec, call and jobs.

import (
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"
)

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

// fanJobs lists the jobs of every selected agent in one table with an
// AGENT column.
func (c *clientCmd) fanJobs() int {
	return c.onEach("AGENT\tTICKET\tKIND\tSTATE\tOUTCOME\tSTARTED", func(x *onAgent) agentResult {
		var r jobsReply
		if err := callOn(x.cc, "job.list", nil, &r); err != nil {
			return callFailed("job.list", err)
		}
		for _, j := range r.Jobs {
			x.row(j.Ticket, j.Kind, j.State, orDash(j.Outcome), orDash(j.Started))
		}
		return agentResult{outcome: outOK, fields: map[string]any{"jobs": r.Jobs}}
	})
}
