package main

// ops_audit.go: the audit trail. Every request to a method that changes
// something (registered with mutates: true), and every file.download
// (audited: a key or a secret could be read), is appended to
// <home>/audit.log as one JSON line, whatever its outcome, refusals
// included: who (peer address, thumbprint, trust entry), what (method and
// the key parameters the handler chose, never file contents, script text
// or variable values), how it ended, and how long it took. Other reads
// (ping, info, job.status) are not written, so the log costs them nothing.
// Every string in a line is cut at maxAuditString bytes, so a client with
// long parameters cannot rotate everybody else's lines out of the log.
//
// Each line is one write(2) on a file opened with O_APPEND, so lines never
// interleave, even with another writer. A line the disk could take only in
// part is cut off again, so the log always ends at a line boundary. Past
// AuditMaxSize the file is
// rotated, under the same lock as writing, so no line is lost or split:
// audit.log → audit.log.1 → … → audit.log.N (auditKeep files kept). Lines
// are not fsynced one by one: the OS writes them out within seconds, and a
// small request should not pay a disk flush; a power cut can lose the last
// few lines.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// auditKeep is how many rotated files (audit.log.1 …) are kept.
const auditKeep = 5

// maxAuditString bounds each string of an audit line: enough for any real
// path (which file.* caps at 4096 bytes anyway) to be recognised.
const maxAuditString = 1024

// clipString cuts s to at most n bytes (at a rune boundary) and says how
// much was cut.
func clipString(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := runePrefix(s, n)
	return fmt.Sprintf("%s…[%d bytes cut]", cut, len(s)-len(cut))
}

// clipValue cuts every string in v, a parameter of c.audit.
func clipValue(v any) any {
	switch x := v.(type) {
	case string:
		return clipString(x, maxAuditString)
	case []string:
		out := make([]string, len(x))
		for i, s := range x {
			out[i] = clipString(s, maxAuditString)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = clipValue(e)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[clipString(k, maxAuditString)] = clipValue(e)
		}
		return out
	}
	return v
}

// auditTimeFormat is RFC 3339 in UTC with milliseconds, fixed width so the
// lines sort and align.
const auditTimeFormat = "2006-01-02T15:04:05.000Z07:00"

// auditLog appends one JSON line per changing request to <home>/audit.log.
type auditLog struct {
	path    string
	maxSize int64 // rotate when a line would take the file past this; <= 0: never

	mu   sync.Mutex // guards f and size: a write and a rotation never overlap
	f    *os.File
	size int64
}

// auditEntry is one line of audit.log; fields appear in this order.
type auditEntry struct {
	Time       string         `json:"time"` // RFC 3339, UTC, when the request arrived
	Peer       string         `json:"peer"`
	Thumbprint string         `json:"thumbprint"`
	Name       string         `json:"name"` // the trust entry's name
	Method     string         `json:"method"`
	Params     map[string]any `json:"params,omitempty"` // the handler's c.audit
	Outcome    string         `json:"outcome"`          // "ok" or the error's kind
	Error      string         `json:"error,omitempty"`
	DurationMS float64        `json:"duration_ms"`
}

// openAuditLog opens (creating, 0600) the audit log at path for appending.
func openAuditLog(path string, maxSize int64) (*auditLog, error) {
	a := &auditLog{path: path, maxSize: maxSize}
	if err := a.open(); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *auditLog) open() error {
	f, err := os.OpenFile(a.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("failed to open audit log %q: %v", a.path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("failed to open audit log %q: %v", a.path, err)
	}
	a.f, a.size = f, fi.Size()
	return nil
}

// record appends c's request: its method, peer, c.audit parameters, outcome
// (from err) and duration since start. A failure to write is logged by the
// agent; the request has happened either way.
func (a *auditLog) record(c *call, start time.Time, err error) {
	e := auditEntry{
		Time:       start.UTC().Format(auditTimeFormat),
		Peer:       c.peer.addr.String(),
		Thumbprint: c.peer.thumbprint,
		Method:     clipString(c.method, maxAuditString),
		Outcome:    "ok",
		DurationMS: float64(time.Since(start).Microseconds()) / 1000,
	}
	if c.audit != nil {
		e.Params = clipValue(c.audit).(map[string]any)
	}
	if c.peer.entry != nil {
		e.Name = clipString(c.peer.entry.Name, maxAuditString)
	}
	if err != nil {
		e.Outcome, e.Error = kindInternal, clipString(err.Error(), maxAuditString)
		var re *rpcError
		if errors.As(err, &re) {
			e.Outcome = re.Kind()
		}
	}
	line, merr := json.Marshal(e)
	if merr != nil { // a parameter JSON cannot hold: keep the line, drop them
		e.Params = map[string]any{"unencodable": merr.Error()}
		line, _ = json.Marshal(e)
	}
	line = append(line, '\n')
	if werr := a.write(line); werr != nil && c.srv != nil {
		c.srv.log.Error("failed to write the audit log", "path", a.path, "err", werr, "method", c.method,
			"thumbprint", c.peer.thumbprint)
	}
}

// write appends one line, rotating first if it would take the file past
// maxSize.
func (a *auditLog) write(line []byte) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.f == nil { // a failed rotation: try again
		if err := a.open(); err != nil {
			return err
		}
	}
	if a.maxSize > 0 && a.size > 0 && a.size+int64(len(line)) > a.maxSize {
		if err := a.rotate(); err != nil {
			return err
		}
	}
	n, err := a.f.Write(line)
	if err != nil && n > 0 {
		// A full disk took part of the line: cut it off (the file's end, not
		// a.size, as another writer may have appended), so the next line
		// does not glue onto half of this one.
		fi, serr := a.f.Stat()
		if serr == nil {
			serr = a.f.Truncate(fi.Size() - int64(n))
		}
		if serr != nil {
			return errors.Join(err, fmt.Errorf("the partial line could not be cut off: %v", serr))
		}
		return err
	}
	a.size += int64(n)
	return err
}

// rotate shifts audit.log.N-1 → .N … audit.log → .1 and opens a new
// audit.log. Called with mu held, so no write can land in between.
func (a *auditLog) rotate() error {
	a.f.Sync()
	a.f.Close()
	a.f = nil
	for i := auditKeep - 1; i >= 1; i-- {
		os.Rename(a.path+"."+strconv.Itoa(i), a.path+"."+strconv.Itoa(i+1))
	}
	if err := os.Rename(a.path, a.path+".1"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("failed to rotate audit log %q: %v", a.path, err)
	}
	syncDir(filepath.Dir(a.path))
	return a.open()
}

func (a *auditLog) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.f != nil {
		a.f.Sync()
		a.f.Close()
		a.f = nil
	}
}

// auditFiles lists the audit log's files, newest first: audit.log, then
// audit.log.1 … as far as they exist.
func auditFiles(path string) []string {
	files := []string{path}
	for i := 1; ; i++ {
		p := path + "." + strconv.Itoa(i)
		if _, err := os.Stat(p); err != nil {
			return files
		}
		files = append(files, p)
	}
}

// tailLines returns the last n lines of f (all of them if n <= 0), oldest
// first, reading backwards from the end in blocks, so a large log costs only
// what is printed. A last line without "\n" counts as a line.
func tailLines(f io.ReaderAt, size int64, n int) [][]byte {
	const block = 64 << 10
	var lines [][]byte
	var partial []byte // the start of a line whose beginning is not read yet
	end := size
	for end > 0 && (n <= 0 || len(lines) < n) {
		start := max(0, end-block)
		buf := make([]byte, end-start)
		if _, err := f.ReadAt(buf, start); err != nil && err != io.EOF {
			break
		}
		buf = append(buf, partial...)
		if end == size && len(buf) > 0 && buf[len(buf)-1] == '\n' {
			buf = buf[:len(buf)-1]
		}
		for {
			i := bytes.LastIndexByte(buf, '\n')
			if i < 0 {
				break
			}
			lines = append(lines, buf[i+1:])
			buf = buf[:i]
			if n > 0 && len(lines) == n {
				break
			}
		}
		partial = buf
		end = start
	}
	if end == 0 && (n <= 0 || len(lines) < n) && len(partial) > 0 {
		lines = append(lines, partial)
	}
	// lines were found newest first
	for i, j := 0, len(lines)-1; i < j; i, j = i+1, j-1 {
		lines[i], lines[j] = lines[j], lines[i]
	}
	return lines
}

// lastAuditLines returns the last n lines of the audit log at path (n <= 0:
// all), oldest first, reaching into rotated files when audit.log alone has
// fewer.
func lastAuditLines(path string, n int) ([][]byte, error) {
	var out [][]byte
	for _, p := range auditFiles(path) {
		f, err := os.Open(p)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) && p == path {
				continue // rotated away just now, or never written
			}
			return nil, err
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, err
		}
		want := 0
		if n > 0 {
			want = n - len(out)
		}
		got := tailLines(f, fi.Size(), want)
		f.Close()
		out = append(got, out...)
		if n > 0 && len(out) >= n {
			break
		}
	}
	return out, nil
}

const usageAudit = `
Usage:
  tentacle audit [-home DIR] [-n N]

Prints the last N lines (default 20; 0 for all that is kept) of the agent's
audit log, <home>/audit.log and its rotated files audit.log.1 …, oldest
first. Each line is one JSON object for one request that changed something
(script, file, package, deploy, rollback, cancel, complete), refused ones
included: time, peer, thumbprint, name (the trust entry), method, params (the
key parameters, never contents or variable values), outcome ("ok" or the
error's kind), error, duration_ms.

Example:
  tentacle audit -n 5
  tentacle audit -n 0 | jq -c 'select(.outcome != "ok")'
`

func cmdAudit(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("audit", usageAudit, stderr)
	home := homeFlag(fs)
	n := fs.Int("n", 20, "print the last `N` lines (0: all)")
	if _, code, ok := parseFlags(fs, args, 0, 0); !ok {
		return code
	}
	if *n < 0 {
		_, code, _ := usageError(fs, "-n must be 0 (all) or more, not %d", *n)
		return code
	}
	if fi, err := os.Stat(*home); err != nil || !fi.IsDir() {
		fmt.Fprintf(stderr, "tentacle audit: no agent home %q: pass the agent's -home (or set TENTACLE_HOME)\n", *home)
		return 1
	}
	path := (&config{Home: *home}).auditPath()
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) && len(auditFiles(path)) == 1 {
		fmt.Fprintf(stderr, "tentacle audit: no audit log in %q: an agent writes %q in its home from its first start, so this is not an agent's home: pass the agent's -home (or set TENTACLE_HOME)\n", *home, filepath.Base(path))
		return 1
	}
	lines, err := lastAuditLines(path, *n)
	if err != nil {
		fmt.Fprintf(stderr, "tentacle audit: %v\n", err)
		return 1
	}
	if len(lines) == 0 {
		fmt.Fprintf(stderr, "tentacle audit: %q is empty: no changing request has been made yet\n", path)
		return 0
	}
	var b bytes.Buffer
	for _, l := range lines {
		b.Write(l)
		b.WriteByte('\n')
	}
	stdout.Write(b.Bytes())
	return 0
}
