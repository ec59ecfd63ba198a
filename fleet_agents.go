package main

// fleet_agents.go: the agents file, <home>/agents (FLEET §1): one agent a
// line, a name, an address, a pin and tags. It is read the way the trust
// list is (a bounded reader, lines capped at 8 KiB, "#" comments, a
// malformed line reported with its number and ignored, a file that group or
// others can write refused), and rewritten atomically with its comments and
// the lines it does not understand kept as they were.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

const (
	maxAgentsLine = 8 << 10  // FLEET §1, as the trust list's
	maxAgentsFile = 16 << 20 // 1,000 agents take about 150 KB
)

// agentEntry is one agent of the agents file.
type agentEntry struct {
	Name string
	Addr string // as written: HOST, HOST:PORT, [IPv6] or [IPv6]:PORT
	Pin  string // 64 uppercase hex
	Tags []string
	line int // its index in agentsFile.lines
}

// address is where to dial the agent: its address with the default port.
func (e *agentEntry) address() string { return agentAddr(e.Addr) }

// text is the entry as a line of the file, in columns for the common
// lengths of names and addresses.
func (e *agentEntry) text() string {
	return strings.TrimRight(fmt.Sprintf("%-8s  %-17s  %s  %s", e.Name, e.Addr, e.Pin, strings.Join(e.Tags, "  ")), " ")
}

// agentsFile is the file as read: its lines as they are, for rewrites, and
// the entries of the lines that parsed.
type agentsFile struct {
	path     string
	lines    []string
	entries  []*agentEntry // in file order
	byName   map[string]*agentEntry
	problems []string // malformed lines, each naming the file and the line
	perm     os.FileMode
	exists   bool
}

// droppedLine stands for a line too long to have been read whole, which a
// rewrite could not keep: the file is then not rewritten. No line read
// holds "\n".
const droppedLine = "\n"

func agentsPath(home string) string { return filepath.Join(home, "agents") }

// agentsHeader starts a new agents file, so that a person opening it sees
// its format.
const agentsHeader = "# tentacle agents: NAME ADDRESS PIN [TAG...]; edit with \"tentacle agents\" or by hand"

// readAgents reads the agents file of home. A missing file is an empty one;
// a file that group or others can write is refused with the chmod that
// fixes it.
func readAgents(home string) (*agentsFile, error) {
	a := &agentsFile{path: agentsPath(home), byName: map[string]*agentEntry{}, perm: 0o644}
	// Opened as the trust list is (StrictModes: owner, links, the folders
	// on the way, all checked on the descriptor read).
	f, err := openStrict(a.path, fmt.Sprintf("agents file %q", a.path), false)
	if errors.Is(err, fs.ErrNotExist) {
		return a, nil
	}
	if me, ok := err.(*modeError); ok {
		me.problem += ", so its pins cannot be relied on"
		return nil, me
	}
	if err != nil {
		return nil, fmt.Errorf("failed to read agents file %q: %v", a.path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("failed to read agents file %q: %v", a.path, err)
	}
	a.exists, a.perm = true, fi.Mode().Perm()
	if err := a.parse(io.LimitReader(f, maxAgentsFile+1)); err != nil {
		return nil, fmt.Errorf("failed to read agents file %q: %v", a.path, err)
	}
	return a, nil
}

// parse reads the lines of r into a.
func (a *agentsFile) parse(r io.Reader) error {
	size := 0
	return eachLine(r, maxAgentsLine, func(n int, raw []byte, tooLong bool) error {
		if tooLong {
			a.problem(n, fmt.Errorf("longer than %d bytes", maxAgentsLine))
			a.lines = append(a.lines, droppedLine) // keeps the numbering
			return nil
		}
		if size += len(raw) + 1; size > maxAgentsFile {
			return fmt.Errorf("larger than %d MiB", maxAgentsFile>>20)
		}
		line := string(raw)
		a.lines = append(a.lines, line)
		text := strings.TrimSpace(line)
		if text == "" || text[0] == '#' {
			return nil
		}
		e, err := parseAgentLine(text)
		if err == nil {
			if first, dup := a.byName[e.Name]; dup {
				err = fmt.Errorf("name %q is already at line %d", e.Name, first.line+1)
			}
		}
		if err != nil {
			a.problem(n, err)
			return nil
		}
		e.line = len(a.lines) - 1
		a.entries = append(a.entries, e)
		a.byName[e.Name] = e
		return nil
	})
}

func (a *agentsFile) problem(line int, err error) {
	a.problems = append(a.problems, fmt.Sprintf("%q: malformed agent at line %d: %v", a.path, line, err))
}

// parseAgentLine parses one non-blank, non-comment line.
func parseAgentLine(text string) (*agentEntry, error) {
	f := strings.Fields(text)
	if len(f) < 3 {
		return nil, errors.New("want NAME ADDRESS PIN [TAG...]")
	}
	if err := checkAgentName(f[0]); err != nil {
		return nil, err
	}
	if err := checkAgentAddr(f[1]); err != nil {
		return nil, err
	}
	pin, err := parseThumbprint(f[2])
	if err != nil {
		return nil, fmt.Errorf("pin: %v", err)
	}
	e := &agentEntry{Name: f[0], Addr: f[1], Pin: pin}
	for _, t := range f[3:] {
		if err := checkTag(t); err != nil {
			return nil, err
		}
		if !slices.Contains(e.Tags, t) {
			e.Tags = append(e.Tags, t)
		}
	}
	return e, nil
}

// isWordChar is the alphabet of names and tags: A-Z a-z 0-9 . _ -.
func isWordChar(c byte) bool { return isAlnum(c) || c == '.' || c == '_' || c == '-' }

func isWord(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := range len(s) {
		if !isWordChar(s[i]) {
			return false
		}
	}
	return true
}

// checkAgentName: 1–64 of A-Z a-z 0-9 . _ -, starting with a letter or a
// digit; "all" is the target of every agent.
func checkAgentName(s string) error {
	switch {
	case s == "all":
		return errors.New(`the name "all" is reserved: it selects every agent`)
	case !isWord(s) || !isAlnum(s[0]):
		return fmt.Errorf("name %q: want 1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or digit", s)
	}
	return nil
}

// checkTag: a word of A-Z a-z 0-9 . _ -; a word with "=" is an option,
// reserved for later, so it is refused rather than taken for a tag.
func checkTag(s string) error {
	switch {
	case strings.Contains(s, "="):
		return fmt.Errorf("option %q: options are reserved and not understood yet", s)
	case !isWord(s):
		return fmt.Errorf("tag %q: want 1 to 64 of A-Z a-z 0-9 . _ -", s)
	}
	return nil
}

// checkAgentAddr accepts HOST, HOST:PORT, [IPv6] and [IPv6]:PORT.
func checkAgentAddr(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		host, port = s, ""
		if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
			host = s[1 : len(s)-1]
		} else if strings.Contains(s, ":") {
			if _, perr := netip.ParseAddr(s); perr == nil {
				return fmt.Errorf("address %q: write an IPv6 address in brackets, as [%s] or [%s]:%s", s, s, s, defaultPort)
			}
			return fmt.Errorf("address %q: want HOST, HOST:PORT, [IPv6] or [IPv6]:PORT", s)
		}
	}
	if port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("address %q: port %q is not a number from 1 to 65535", s, port)
		}
	}
	if strings.Contains(s, "[") {
		if a, err := netip.ParseAddr(host); err != nil || !a.Is6() {
			return fmt.Errorf("address %q: %q in brackets is not an IPv6 address", s, host)
		}
		return nil
	}
	if host == "" || len(host) > 253 || strings.ContainsFunc(host, func(r rune) bool {
		return !(r < 0x80 && (isAlnum(byte(r)) || r == '.' || r == '-' || r == '_'))
	}) {
		return fmt.Errorf("address %q: want HOST, HOST:PORT, [IPv6] or [IPv6]:PORT", s)
	}
	return nil
}

// report prints the file's problems, as every command that reads it does.
func (a *agentsFile) report(w io.Writer) {
	for _, p := range a.problems {
		fmt.Fprintf(w, "tentacle: %s (line ignored)\n", p)
	}
}

// update rewrites the line of an entry that was changed in place.
func (a *agentsFile) update(e *agentEntry) { a.lines[e.line] = e.text() }

// put adds e, or replaces the entry of the same name in place.
func (a *agentsFile) put(e *agentEntry) {
	if old := a.byName[e.Name]; old != nil {
		e.line = old.line
		a.lines[old.line] = e.text()
		a.entries[slices.Index(a.entries, old)] = e
	} else {
		if len(a.lines) == 0 {
			a.lines = append(a.lines, agentsHeader)
		}
		e.line = len(a.lines)
		a.lines = append(a.lines, e.text())
		a.entries = append(a.entries, e)
	}
	a.byName[e.Name] = e
}

// remove drops the entries of names from the file.
func (a *agentsFile) remove(names []string) {
	drop := map[int]bool{}
	for _, n := range names {
		if e := a.byName[n]; e != nil {
			drop[e.line] = true
			delete(a.byName, n)
		}
	}
	a.entries = slices.DeleteFunc(a.entries, func(e *agentEntry) bool { return drop[e.line] })
	moved := make([]int, len(a.lines)) // old line index → new
	var kept []string
	for i, l := range a.lines {
		moved[i] = len(kept)
		if !drop[i] {
			kept = append(kept, l)
		}
	}
	a.lines = kept
	for _, e := range a.entries {
		e.line = moved[e.line]
	}
}

// write rewrites the file atomically, every line as it is (entries that
// were not changed keep their hand-made spacing).
func (a *agentsFile) write() error {
	if i := slices.Index(a.lines, droppedLine); i >= 0 {
		return fmt.Errorf("%q has a line longer than %d bytes at line %d, which a rewrite would lose: shorten or remove it by hand first", a.path, maxAgentsLine, i+1)
	}
	if err := os.MkdirAll(filepath.Dir(a.path), 0o700); err != nil {
		return err
	}
	var b bytes.Buffer
	for _, l := range a.lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return writeFileAtomic(a.path, b.Bytes(), a.perm&^0o022)
}

// shortPin shortens a pin for a table: its first and last four digits.
func shortPin(pin string) string {
	if len(pin) < 12 {
		return pin
	}
	return pin[:4] + "…" + pin[len(pin)-4:]
}
