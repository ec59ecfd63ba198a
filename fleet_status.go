package main

// fleet_status.go: "tentacle agents status", the fleet at a glance (FLEET
// §2): every selected agent contacted in parallel, one row each.

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// statusRow is one agent's row of agents status.
type statusRow struct {
	Name    string            `json:"name"`
	Address string            `json:"address"`
	State   string            `json:"state"`
	RTTms   *float64          `json:"rtt_ms"`
	Version *string           `json:"version"`
	UptimeS *int64            `json:"uptime_s"`
	Jobs    *int              `json:"jobs"`
	Apps    map[string]string `json:"apps"`
	Error   *string           `json:"error"`
}

func (c *clientCmd) agentsStatus() int {
	ff := c.fleet
	switch {
	case ff.parallel < 1:
		return c.usage("-parallel must be at least 1")
	case ff.connectTimeout <= 0:
		return c.usage("-connect-timeout must be more than 0")
	}
	af := c.readAgentsFor()
	if af == nil {
		return 1
	}
	word := "all"
	if len(c.args) == 1 {
		word = c.args[0]
	}
	sel, err := af.selectAgents(word)
	if err != nil {
		if len(af.entries) == 0 && len(c.args) == 0 {
			fmt.Fprintf(c.stderr, "tentacle agents status: %v\n", err)
			return 1
		}
		return c.usage("%v", err)
	}
	c.fan = sel
	f := newFanOut(c)
	if f == nil {
		return 1
	}
	f.hold = true
	rows := make([]statusRow, len(sel))
	stopProgress := f.out.runProgress()
	f.each(f.all(), nil, func(i int, a *agentEntry, w *agentOut) agentResult {
		row := &rows[i]
		*row = statusRow{Name: a.Name, Address: a.Addr}
		r := f.status(a, row)
		row.State = r.outcome
		if r.detail != "" {
			row.Error = &r.detail
		}
		return r
	})
	stopProgress()
	f.out.stopProgress()
	if f.out.json {
		enc := json.NewEncoder(c.stdout)
		for _, r := range rows {
			enc.Encode(r)
		}
	} else {
		printStatus(c.stdout, rows, colourful(c.stdout))
	}
	return f.finish(false)
}

// status fills row for agent a: the handshake and a ping, then info,
// job.list and deploy.list on the same connection.
func (f *fanOut) status(a *agentEntry, row *statusRow) agentResult {
	cc, _, rtt, outcome, err := fleetDial(a.address(), f.id, a.Pin, f.c.opts.proxy, f.ff.connectTimeout, f.sessions)
	if err != nil {
		return agentResult{outcome: outcome, detail: err.Error()}
	}
	defer cc.Close()
	ms := float64(rtt.Microseconds()) / 1000
	row.RTTms = &ms
	// The rest must come within the connect timeout too: a status is a
	// glance, and one slow agent must not hold up the table.
	cc.tc.SetDeadline(time.Now().Add(f.ff.connectTimeout))
	var info struct {
		Version string `json:"version"`
		UptimeS int64  `json:"uptime_s"`
	}
	var jobs jobsReply
	var apps appsReply
	for _, q := range []struct {
		method string
		into   any
	}{{"info", &info}, {"job.list", &jobs}, {"deploy.list", &apps}} {
		if err := cc.call(q.method, nil, q.into); err != nil {
			r := callFailed(q.method, err)
			r.outcome = outError
			return r
		}
	}
	row.Version, row.UptimeS = &info.Version, &info.UptimeS
	running := 0
	for _, j := range jobs.Jobs {
		if j.State == stateRunning {
			running++
		}
	}
	row.Jobs = &running
	row.Apps = map[string]string{}
	for _, x := range apps.Apps {
		row.Apps[x.App] = orDash(x.Current)
	}
	return agentResult{outcome: outOK}
}

// colourful tells whether w is a terminal that may get colour.
func colourful(w any) bool {
	f, ok := w.(*os.File)
	if !ok || os.Getenv("NO_COLOR") != "" {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// printStatus writes the table; with colour, STATE is green when ok, red
// otherwise (every cell of the column gets the same escapes, so the
// columns stay aligned).
func printStatus(w io.Writer, rows []statusRow, colour bool) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	head := "STATE"
	if colour {
		head = "\x1b[39m" + head + "\x1b[0m" // as wide as a cell's escapes
	}
	fmt.Fprintf(tw, "NAME\tADDRESS\t%s\tRTT\tVERSION\tUPTIME\tJOBS\tAPPS\n", head)
	for _, r := range rows {
		state := r.State
		if colour {
			code := "31"
			if state == outOK {
				code = "32"
			}
			state = "\x1b[" + code + "m" + state + "\x1b[0m"
		}
		rtt, version, uptime, jobs, apps := "-", "-", "-", "-", "-"
		if r.RTTms != nil {
			rtt = fmt.Sprintf("%.1fms", *r.RTTms)
		}
		if r.Version != nil {
			version = *r.Version
		}
		if r.UptimeS != nil {
			uptime = fmtUptime(*r.UptimeS)
		}
		if r.Jobs != nil {
			jobs = fmt.Sprint(*r.Jobs)
		}
		if len(r.Apps) > 0 {
			var parts []string
			for _, app := range slices.Sorted(maps.Keys(r.Apps)) {
				parts = append(parts, app+"="+r.Apps[app])
			}
			apps = strings.Join(parts, " ")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.Address, state, rtt, version, uptime, jobs, apps)
	}
	tw.Flush()
}

// fmtUptime writes a duration in seconds as its two largest units: 45s,
// 12m30s, 3h12m, 2d3h.
func fmtUptime(s int64) string {
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	case s < 86400:
		return fmt.Sprintf("%dh%02dm", s/3600, s/60%60)
	}
	return fmt.Sprintf("%dd%dh", s/86400, s/3600%24)
}
