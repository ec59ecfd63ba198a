package main

// fleet_target.go: TARGET, the first word of every client command (FLEET
// §3). An address or a NAME is single mode, exactly as before the agents
// file existed; @TAG, all and comma lists are fan-out mode, handed to
// fleet_run.go. Also the fan-out flags each client command takes.

import (
	"flag"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// fanOutCommands are the client commands that take a selector; the others
// (job, download) need exactly one agent.
var fanOutCommands = map[string]bool{
	"call": true, "exec": true, "jobs": true, "upload": true, "push": true,
	"deploy": true, "releases": true, "rollback": true,
}

// Single mode dials with this timeout unless -connect-timeout is given, as
// it did before the flag existed.
const singleConnectTimeout = 15 * time.Second

// fleetFlags are the flags of fan-out mode.
type fleetFlags struct {
	parallel       int
	connectTimeout time.Duration
	json           *flag.Flag // -json: this file's, or the command's own where it has one
	group          bool
	batch          string
	maxFailures    int
	rollback       bool
	fanOnly        []string // the flags registered here that mean nothing in single mode
}

func (ff *fleetFlags) jsonOut() bool { return ff.json != nil && ff.json.Value.String() == "true" }

const targetsHelp = `
TARGET is an address (HOST[:PORT], with -pin), the NAME of an agent in
<home>/agents (its pin comes from there), or, to run on several agents at
once, @TAG, all, or a comma list of these (web1,web2,@db). With several
agents each output line is prefixed "NAME | ", a summary and a total line
go to stderr, and the exit code is 0 only when every agent is ok: see
"tentacle agents -h".
`

const singleTargetHelp = `
ADDR may also be the NAME of an agent in <home>/agents (its pin comes from
there); this command takes one agent only.
`

// addFleetFlags registers -connect-timeout and, on commands that fan out,
// the fan-out flags, unless the command already has a flag of that name
// (its own -json). It runs just before the flags are parsed.
func (c *clientCmd) addFleetFlags() {
	fs := c.fs
	ff := &fleetFlags{}
	c.fleet = ff
	fs.DurationVar(&ff.connectTimeout, "connect-timeout", 5*time.Second, "give up on an agent that has not answered within this `duration` (connection, TLS handshake, ping); one agent: 15s unless given")
	help := singleTargetHelp
	if fanOutCommands[c.name] {
		help = targetsHelp
		fanOnly := func(name string) { ff.fanOnly = append(ff.fanOnly, name) }
		fs.IntVar(&ff.parallel, "parallel", 32, "fan-out: contact at most `N` agents at a time")
		fanOnly("parallel")
		if fs.Lookup("json") == nil {
			fs.Bool("json", false, "fan-out: print JSON events on stdout, one object a line, instead of text")
			fanOnly("json")
		}
		ff.json = fs.Lookup("json")
		if c.name == "exec" || c.name == "deploy" {
			fs.BoolVar(&ff.group, "group", false, "fan-out: print each agent's output as one block when it ends, instead of prefixed lines")
			fanOnly("group")
		}
		if c.name == "deploy" {
			fs.StringVar(&ff.batch, "batch", "", "fan-out: deploy to `N` agents (or P% of them) at a time, a batch after the previous one (default all at once)")
			fs.IntVar(&ff.maxFailures, "max-failures", 0, "fan-out: start no further batch once more than `K` agents have failed")
			fs.BoolVar(&ff.rollback, "rollback-on-failure", false, "fan-out: when the rollout stops for failures, roll back the agents it deployed to")
			fanOnly("batch")
			fanOnly("max-failures")
			fanOnly("rollback-on-failure")
		}
	}
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), strings.TrimLeft(c.usageText, "\n"), help)
		fmt.Fprintln(fs.Output(), "\nFlags:")
		fs.PrintDefaults()
	}
}

// isSelector tells a fan-out TARGET from a single one.
func isSelector(word string) bool {
	return word == "all" || strings.HasPrefix(word, "@") || strings.Contains(word, ",")
}

// flagGiven reports whether the flag name was on the command line.
func flagGiven(fs *flag.FlagSet, name string) bool {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	return given
}

// resolveTarget reads the command's first word as a TARGET: a selector
// fills c.fan; a NAME makes the agents file's entry the one to dial; any
// other word stays an address, as before.
func (c *clientCmd) resolveTarget() (code int, ok bool) {
	if len(c.args) == 0 {
		return 0, true
	}
	word, ff := c.args[0], c.fleet
	if !isSelector(word) {
		for _, name := range ff.fanOnly {
			if flagGiven(c.fs, name) {
				return c.usage("-%s applies to several agents: give a TARGET such as @TAG, all or a list (%q is one agent)", name, word+","), false
			}
		}
		c.opts.timeout = singleConnectTimeout
		if flagGiven(c.fs, "connect-timeout") {
			c.opts.timeout = ff.connectTimeout
		}
		return c.resolveSingle(word)
	}
	if !fanOutCommands[c.name] {
		return c.usage("TARGET %q selects several agents, but %s takes one: give a NAME or an address", word, c.name), false
	}
	switch {
	case ff.parallel < 1:
		return c.usage("-parallel must be at least 1"), false
	case ff.connectTimeout <= 0:
		return c.usage("-connect-timeout must be more than 0"), false
	case ff.maxFailures < 0:
		return c.usage("-max-failures must not be negative"), false
	}
	if _, err := parseBatch(ff.batch, 1); err != nil {
		return c.usage("%v", err), false
	}
	af, err := readAgents(c.opts.home)
	if err != nil {
		fmt.Fprintf(c.stderr, "tentacle %s: %v\n", c.name, err)
		return 1, false
	}
	af.report(c.stderr)
	if c.fan, err = af.selectAgents(word); err != nil {
		return c.usage("%v", err), false
	}
	return 0, true
}

// resolveSingle resolves a single word: the agent of that name, else an
// address that needs a pin.
func (c *clientCmd) resolveSingle(word string) (code int, ok bool) {
	if !isWord(word) { // a name has no ':' or '[': an address, read no file
		return 0, true
	}
	af, err := readAgents(c.opts.home)
	if err != nil {
		fmt.Fprintf(c.stderr, "tentacle %s: %v\n", c.name, err)
		return 1, false
	}
	af.report(c.stderr)
	if e := af.byName[word]; e != nil {
		if flagGiven(c.fs, "pin") {
			pin, err := parseThumbprint(c.opts.pin)
			if err != nil {
				return c.usage("-pin: %v", err), false
			}
			if pin != e.Pin {
				return c.usage("-pin %s is not the pin of agent %q in %q (%s): leave -pin out, or change the agent with \"tentacle agents add -pin %s %s %s\"", pin, word, af.path, e.Pin, pin, word, e.Addr), false
			}
		}
		c.opts.pin, c.opts.agent = e.Pin, e
		return 0, true
	}
	if c.opts.pin == "" && len(af.entries) > 0 {
		return c.usage("%q is neither an agent in %q nor pinned: add it with \"tentacle agents add %s ADDRESS\", or pass -pin THUMBPRINT", word, af.path, word), false
	}
	return 0, true
}

// selectAgents resolves a selector: the union of its names, @tags and
// "all", each agent once, in file order.
func (a *agentsFile) selectAgents(word string) ([]*agentEntry, error) {
	want := map[*agentEntry]bool{}
	for part := range strings.SplitSeq(word, ",") {
		switch {
		case part == "": // "web1," is a list of one
		case part == "all":
			if len(a.entries) == 0 {
				return nil, fmt.Errorf("no agents in %q: add one with \"tentacle agents add NAME ADDRESS\"", a.path)
			}
			for _, e := range a.entries {
				want[e] = true
			}
		case strings.HasPrefix(part, "@"):
			n := 0
			for _, e := range a.entries {
				if slices.Contains(e.Tags, part[1:]) {
					want[e] = true
					n++
				}
			}
			if n == 0 {
				return nil, fmt.Errorf("tag %q matches no agent in %q", part, a.path)
			}
		default:
			e := a.byName[part]
			if e == nil {
				return nil, fmt.Errorf("no agent %q in %q: add it with \"tentacle agents add %s ADDRESS\"", part, a.path, part)
			}
			want[e] = true
		}
	}
	var sel []*agentEntry
	for _, e := range a.entries {
		if want[e] {
			sel = append(sel, e)
		}
	}
	if len(sel) == 0 {
		return nil, fmt.Errorf("TARGET %q selects no agent", word)
	}
	return sel, nil
}

// parseBatch reads -batch for n agents: "" is all at once, "N" that many,
// "P%" that share of n, rounded up.
func parseBatch(s string, n int) (int, error) {
	if s == "" {
		return max(n, 1), nil
	}
	if p, ok := strings.CutSuffix(s, "%"); ok {
		v, err := strconv.Atoi(p)
		if err != nil || v < 1 || v > 100 {
			return 0, fmt.Errorf("-batch %q: want a number of agents or a percentage from 1%% to 100%%", s)
		}
		return max((n*v+99)/100, 1), nil
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < 1 {
		return 0, fmt.Errorf("-batch %q: want a number of agents (at least 1) or a percentage such as 25%%", s)
	}
	return v, nil
}
