package main

// fleet_cmd.go: "tentacle agents add|remove|list|tag|untag|status" (FLEET
// §2), and learning a pin: -pin (offline), -accept-new (record what the
// agent presents), or a question on a terminal, never silently.

import (
	"bufio"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

const usageAgents = `
Usage:
  tentacle agents add [-home DIR] [-pin THUMBPRINT | -accept-new] [-proxy URL] NAME ADDRESS [TAG...]
  tentacle agents remove [-home DIR] NAME...
  tentacle agents list [-home DIR] [-json] [TARGET]
  tentacle agents tag [-home DIR] NAME TAG...
  tentacle agents untag [-home DIR] NAME TAG...
  tentacle agents status [-home DIR] [-parallel N] [-connect-timeout D] [-json] [-proxy URL] [TARGET]

Names the agents this client works with, in <home>/agents: one a line, a
NAME, an ADDRESS (HOST, HOST:PORT, [IPv6] or [IPv6]:PORT; port 10933 unless
given), the agent's pin (its thumbprint) and tags. Every client command
then takes NAME instead of an address and -pin, and @TAG, all or a comma
list to run on several agents at once.

add adds NAME, or replaces it (saying what it replaced). The pin comes from
-pin (the agent is not contacted: take it from "tentacle show-thumbprint"
on the agent, or its first start's log), or with -accept-new from what the
agent at ADDRESS presents, like ssh's StrictHostKeyChecking=accept-new; it
works before the agent trusts this client. With neither, on a terminal, add
shows the thumbprint and asks; without a terminal it refuses. A NAME pinned
already is re-pinned only with -pin or after that question.

status contacts the selected agents (default all) in parallel and prints
NAME, ADDRESS, STATE (ok, unreachable, refused, pin-mismatch, timeout,
error), RTT (TLS handshake and a ping), VERSION, UPTIME, JOBS (running) and
APPS (each app's current release), then why each one that is not ok is
not, and a total line. Exit 0 only when every agent is ok.

The file may be edited by hand: "#" starts a comment, a malformed line is
reported with its line number and ignored, rewrites keep comments and lines
they do not understand, and a file that group or others can write is
refused.

Example:
  tentacle agents add -accept-new web1 10.1.0.11 web staging
  tentacle agents add -pin 5B01…9A db1 [fd00::5]:11000 db
  tentacle agents tag web1 canary
  tentacle agents status @web
  tentacle exec @web -- uptime
`

var agentsSubcommands = []string{"add", "remove", "list", "tag", "untag", "status"}

func cmdAgents(args []string, stdout, stderr io.Writer) int {
	if code, ok := subcommand("agents", agentsSubcommands, usageAgents, args, stdout, stderr); !ok {
		return code
	}
	sub := args[0]
	c := &clientCmd{name: "agents " + sub, fs: newFlagSet("agents "+sub, usageAgents, stderr), stdout: stdout, stderr: stderr, usageText: usageAgents}
	fs := c.fs
	c.opts = &clientOpts{stderr: stderr}
	fs.StringVar(&c.opts.home, "home", cmp.Or(os.Getenv("TENTACLE_HOME"), defaultHome()), "the client's `dir`ectory: its identity and the agents file (env TENTACLE_HOME)")
	ff := &fleetFlags{parallel: 32}
	c.fleet = ff
	var pin string
	var acceptNew bool
	if sub == "add" || sub == "status" {
		fs.StringVar(&c.opts.proxy, "proxy", "", "reach the agents through an HTTP CONNECT proxy: http://[user:pass@]HOST:PORT")
		fs.DurationVar(&ff.connectTimeout, "connect-timeout", 5*time.Second, "give up on an agent that has not answered within this `duration` (connection, TLS handshake, ping)")
	}
	if sub == "list" || sub == "status" {
		fs.Bool("json", false, "print one JSON object per agent, a line each, instead of a table")
		ff.json = fs.Lookup("json")
	}
	min, max := 0, 1
	switch sub {
	case "add":
		fs.StringVar(&pin, "pin", "", "the agent's `thumbprint`, from its owner: the agent is not contacted")
		fs.BoolVar(&acceptNew, "accept-new", false, "contact the agent and record the thumbprint it presents")
		min, max = 2, -1
	case "remove":
		min, max = 1, -1
	case "tag", "untag":
		min, max = 2, -1
	case "status":
		fs.IntVar(&ff.parallel, "parallel", 32, "contact at most `N` agents at a time")
	}
	if code, ok := c.parse0(args[1:], min, max); !ok {
		return code
	}
	switch sub {
	case "add":
		if pin != "" && acceptNew {
			return c.usage("-pin and -accept-new exclude each other: -pin records a pin you were given, -accept-new the one the agent presents")
		}
		return c.agentsAdd(pin, acceptNew)
	case "remove":
		return c.agentsEdit(func(af *agentsFile) error { return agentsRemove(af, c.args, stdout) })
	case "tag", "untag":
		return c.agentsEdit(func(af *agentsFile) error { return agentsTag(af, sub == "tag", c.args[0], c.args[1:], stdout) })
	case "list":
		return c.agentsList()
	}
	return c.agentsStatus()
}

// parse0 parses the flags of an agents subcommand, without reading the
// first word as a TARGET.
func (c *clientCmd) parse0(args []string, min, max int) (code int, ok bool) {
	c.args, code, ok = parseFlags(c.fs, args, min, max)
	return code, ok
}

// readAgentsFor reads the agents file and reports its problems, or says
// why it cannot (nil).
func (c *clientCmd) readAgentsFor() *agentsFile {
	af, err := readAgents(c.opts.home)
	if err != nil {
		fmt.Fprintf(c.stderr, "tentacle %s: %v\n", c.name, err)
		return nil
	}
	af.report(c.stderr)
	return af
}

// agentsEdit reads the file, applies edit and rewrites it; an edit that
// fails changes nothing.
func (c *clientCmd) agentsEdit(edit func(*agentsFile) error) int {
	af := c.readAgentsFor()
	if af == nil {
		return 1
	}
	if err := edit(af); err != nil {
		fmt.Fprintf(c.stderr, "tentacle %s: %v\n", c.name, err)
		return 1
	}
	if err := af.write(); err != nil {
		fmt.Fprintf(c.stderr, "tentacle %s: failed to write %q: %v\n", c.name, af.path, err)
		return 1
	}
	return 0
}

func agentsRemove(af *agentsFile, names []string, w io.Writer) error {
	for _, n := range names {
		if af.byName[n] == nil {
			return fmt.Errorf("no agent %q in %q: nothing removed", n, af.path)
		}
	}
	for _, n := range names {
		fmt.Fprintf(w, "removed %s (%s)\n", n, af.byName[n].Addr)
	}
	af.remove(names)
	return nil
}

func agentsTag(af *agentsFile, add bool, name string, tags []string, w io.Writer) error {
	e := af.byName[name]
	if e == nil {
		return fmt.Errorf("no agent %q in %q", name, af.path)
	}
	next := slices.Clone(e.Tags)
	for _, t := range tags {
		if err := checkTag(t); err != nil {
			return err
		}
		has := slices.Contains(next, t)
		switch {
		case add && !has:
			next = append(next, t)
		case !add && !has:
			return fmt.Errorf("agent %q has no tag %q: nothing changed", name, t)
		case !add:
			next = slices.DeleteFunc(next, func(x string) bool { return x == t })
		}
	}
	e.Tags = next
	af.update(e)
	fmt.Fprintf(w, "%s: tags %s\n", name, tagsText(e.Tags))
	return nil
}

func tagsText(tags []string) string {
	if len(tags) == 0 {
		return "-"
	}
	return strings.Join(tags, " ")
}

// agentsList prints the selected agents (default all) as a table, or one
// JSON object each.
func (c *clientCmd) agentsList() int {
	af := c.readAgentsFor()
	if af == nil {
		return 1
	}
	sel := af.entries
	if len(c.args) == 1 {
		var err error
		if sel, err = af.selectAgents(c.args[0]); err != nil {
			return c.usage("%v", err)
		}
	}
	if c.fleet.jsonOut() {
		enc := json.NewEncoder(c.stdout)
		for _, e := range sel {
			enc.Encode(map[string]any{"name": e.Name, "address": e.Addr, "pin": e.Pin, "tags": append([]string{}, e.Tags...)})
		}
		return 0
	}
	if len(sel) == 0 {
		fmt.Fprintf(c.stderr, "no agents in %q: add one with \"tentacle agents add NAME ADDRESS\"\n", af.path)
		return 0
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tADDRESS\tPIN\tTAGS")
	for _, e := range sel {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.Name, e.Addr, shortPin(e.Pin), tagsText(e.Tags))
	}
	tw.Flush()
	return 0
}

// promptInput is where the pin question is answered: stdin when it is a
// terminal, else nothing (ok false). Tests answer it themselves.
var promptInput = func() (io.Reader, bool) {
	fi, err := os.Stdin.Stat()
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return nil, false
	}
	// /dev/null is a character device too, and the usual non-terminal one.
	if null, err := os.Stat(os.DevNull); err == nil && os.SameFile(fi, null) {
		return nil, false
	}
	return os.Stdin, true
}

// agentsAdd adds or replaces an agent, learning its pin one of the three
// ways.
func (c *clientCmd) agentsAdd(pinArg string, acceptNew bool) int {
	name, addr, tags := c.args[0], c.args[1], c.args[2:]
	if err := checkAgentName(name); err != nil {
		return c.usage("%v", err)
	}
	if err := checkAgentAddr(addr); err != nil {
		return c.usage("%v", err)
	}
	e := &agentEntry{Name: name, Addr: addr}
	for _, t := range tags {
		if err := checkTag(t); err != nil {
			return c.usage("%v", err)
		}
		if !slices.Contains(e.Tags, t) {
			e.Tags = append(e.Tags, t)
		}
	}
	af := c.readAgentsFor()
	if af == nil {
		return 1
	}
	old := af.byName[name]
	if pinArg != "" {
		pin, err := parseThumbprint(pinArg)
		if err != nil {
			return c.usage("-pin: %v", err)
		}
		e.Pin = pin
	} else {
		in, terminal := promptInput()
		if !acceptNew && !terminal {
			fmt.Fprintf(c.stderr, "tentacle agents add: no pin for %q and no terminal to ask on: pass -pin THUMBPRINT (from \"tentacle show-thumbprint\" on the agent), or -accept-new to record the thumbprint the agent at %s presents\n", name, addr)
			return 1
		}
		shown, client, outcome, err := c.learnPin(addr)
		if err != nil {
			fmt.Fprintf(c.stderr, "tentacle agents add: failed to learn the pin of %s: %v\n", addr, err)
			return 1
		}
		fmt.Fprintf(c.stdout, "%s presents thumbprint %s\n", addr, shown)
		if outcome == outRefused {
			fmt.Fprintf(c.stdout, "the agent does not trust this client yet: on it, run \"tentacle trust add %s\"\n", client)
		}
		changed := old != nil && old.Pin != shown
		switch {
		case changed && acceptNew:
			fmt.Fprintf(c.stderr, "tentacle agents add: %q is pinned to %s, but %s presents %s: nothing changed; if the agent's key really changed, replace the pin with \"tentacle agents add -pin %s %s %s\"\n", name, old.Pin, addr, shown, shown, name, addr)
			return 1
		case !acceptNew:
			if changed {
				fmt.Fprintf(c.stderr, "%s is pinned to %s now\n", name, old.Pin)
			}
			if !confirm(in, c.stderr, fmt.Sprintf("trust it as %s? [y/N] ", name)) {
				fmt.Fprintln(c.stderr, "not added")
				return 1
			}
		}
		e.Pin = shown
	}
	verb := "added"
	if old != nil {
		verb = "updated"
		if old.Pin != e.Pin {
			fmt.Fprintf(c.stdout, "replaced the pin of %s: was %s, now %s\n", name, old.Pin, e.Pin)
		}
	}
	af.put(e)
	if err := af.write(); err != nil {
		fmt.Fprintf(c.stderr, "tentacle agents add: failed to write %q: %v\n", af.path, err)
		return 1
	}
	fmt.Fprintf(c.stdout, "%s %s (%s, pin %s, tags %s) in %q\n", verb, name, addr, shortPin(e.Pin), tagsText(e.Tags), af.path)
	return 0
}

// learnPin contacts the agent at addr and returns the thumbprint it
// presents (even when it then refuses this client), this client's own, and
// how the contact went.
func (c *clientCmd) learnPin(addr string) (shown, client, outcome string, err error) {
	id, err := ensureIdentity(&config{Home: c.opts.home}, c.stderr)
	if err != nil {
		return "", "", "", err
	}
	cc, shown, _, outcome, err := fleetDial(agentAddr(addr), id, "", c.opts.proxy, c.fleet.connectTimeout, nil)
	if cc != nil {
		cc.Close()
	}
	if shown == "" {
		return "", "", "", err
	}
	return shown, id.thumbprint, outcome, nil
}

// confirm asks question and reads a yes from in.
func confirm(in io.Reader, w io.Writer, question string) bool {
	fmt.Fprint(w, question)
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return false
	}
	a := strings.ToLower(strings.TrimSpace(line))
	return a == "y" || a == "yes"
}
