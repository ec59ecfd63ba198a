package main

// jobs_methods.go: the job methods' handlers (script.start, job.status,
// job.cancel, job.complete, job.list) and the status they answer.

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// jobHead is what every status of a job says of it (PROTOCOL §5
// job.status), on the agent's side and the client's.
type jobHead struct {
	Ticket   string  `json:"ticket"`
	Kind     string  `json:"kind"`
	State    string  `json:"state"`
	Outcome  *string `json:"outcome"`
	ExitCode *int    `json:"exit_code"`
	Started  *string `json:"started"`
	Finished *string `json:"finished"`
}

// jobStatus is the answer of job.status, job.cancel and job.complete.
type jobStatus struct {
	jobHead
	Logs   []json.RawMessage `json:"logs"`
	Next   int64             `json:"next"`
	Result json.RawMessage   `json:"result,omitempty"`
	// LogTruncated: output past -job-max-log was dropped. LogError: why
	// output could not be written (a script then fails).
	LogTruncated bool   `json:"log_truncated,omitempty"`
	LogError     string `json:"log_error,omitempty"`
}

func timeString(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := t.UTC().Format(timeLayout)
	return &s
}

// status answers job.status: the state, then the log entries after after
// that were written by then (so "done" always comes with every entry).
func (j *job) status(after int64) (*jobStatus, error) {
	j.mu.Lock()
	st := &jobStatus{
		jobHead: jobHead{Ticket: j.id, Kind: j.kind, State: j.state, ExitCode: j.exitCode,
			Started: timeString(j.started), Finished: timeString(j.finished)},
		Result: j.result, Logs: []json.RawMessage{}, Next: after, LogTruncated: j.logCut, LogError: j.logErr,
	}
	if j.outcome != "" {
		o := j.outcome
		st.Outcome = &o
	}
	removed := j.removed
	j.mu.Unlock()
	if removed {
		return nil, errorf(kindNotFound, "no job %q: it was completed or reaped", j.id)
	}
	logs, next, err := j.log.read(after)
	if err != nil {
		j.smu.Lock() // a removal in progress holds it until the job is gone
		j.mu.Lock()
		removed = j.removed
		j.mu.Unlock()
		j.smu.Unlock()
		if removed {
			return nil, errorf(kindNotFound, "no job %q: it was completed or reaped", j.id)
		}
		return nil, ioError(err)
	}
	if logs != nil {
		st.Logs = logs
	}
	st.Next = next
	return st, nil
}

// waitChange returns a channel closed at the job's next change, and whether
// there is already something new: an entry after after, or a state other
// than was.
func (j *job) waitChange(after int64, was string) (<-chan struct{}, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.state != was || j.removed {
		return nil, true
	}
	if last, _ := j.log.extent(); last > after {
		return nil, true
	}
	if j.changed == nil {
		j.changed = make(chan struct{})
	}
	return j.changed, false
}

// maxMutexName bounds a mutex name, which appears in log lines.
const maxMutexName = 200

// jobOrigin is what a start of a job takes from its request: the client's
// ticket (checked), a fingerprint of params (the decoded parameters), and
// who the client is.
func (c *call) jobOrigin(ticket string, params any) (jobOrigin, error) {
	if ticket != "" && !validTicket(ticket) {
		return jobOrigin{}, errorf(kindInvalidParams, "ticket %q: want 16 to 64 of a-z 0-9 - (or leave it out for the agent to choose one)", ticket)
	}
	// Re-encoded from the decoded values, so key order, white space and
	// the spelling of numbers and strings do not make a retry differ.
	b, err := json.Marshal(params)
	if err != nil {
		return jobOrigin{}, err
	}
	sum := sha256.Sum256(b)
	return jobOrigin{Ticket: ticket, Fingerprint: hex.EncodeToString(sum[:]), Owner: c.peer.thumbprint, Client: c.peer.entry.Name}, nil
}

// decodeStart decodes a start's params into p, a pointer to a struct whose
// field *ticket is its "ticket", and returns the job's origin: its ticket
// and the fingerprint of every other param, which a retried start must
// match.
func (c *call) decodeStart(p any, ticket *string) (jobOrigin, error) {
	if err := decodeParams(c.params, p); err != nil {
		return jobOrigin{}, err
	}
	t := *ticket
	*ticket = "" // the ticket names the job; the rest must match
	origin, err := c.jobOrigin(t, p)
	*ticket = t
	return origin, err
}

// jobViewer is the caller, as the job methods see it.
func (c *call) jobViewer() jobViewer {
	return jobViewer{thumbprint: c.peer.thumbprint, all: c.peer.entry.allows(groupOthersJobs)}
}

// startAnswer is what script.start and deploy.start answer: a new job's
// state as it started (queued or running, never done, so a client always
// follows it), a retried start's job's state now.
func startAnswer(j *job, fresh bool) map[string]string {
	state := j.currentState()
	if fresh {
		state = j.startState()
	}
	return map[string]string{"ticket": j.id, "state": state}
}

func handleScriptStart(c *call) (any, error) {
	var p struct {
		Script    string            `json:"script,required"`
		Shell     string            `json:"shell"`
		Args      []string          `json:"args"`
		Env       map[string]string `json:"env"`
		Cwd       string            `json:"cwd"`
		TimeoutS  float64           `json:"timeout_s"`
		Isolation string            `json:"isolation"`
		Mutex     string            `json:"mutex"`
		Ticket    string            `json:"ticket"`
	}
	origin, err := c.decodeStart(&p, &p.Ticket)
	if err != nil {
		return nil, err
	}
	interp, ext, err := resolveShell(p.Shell)
	if err != nil {
		return nil, err
	}
	if !(p.TimeoutS >= 0 && p.TimeoutS <= 1e9) { // also refuses NaN
		return nil, errorf(kindInvalidParams, "timeout_s must be a number of seconds from 0 (none) to 1e9, not %v", p.TimeoutS)
	}
	switch p.Isolation {
	case "", "none", "full":
	default:
		return nil, errorf(kindInvalidParams, "isolation must be \"none\" or \"full\", not %q", p.Isolation)
	}
	if len(p.Mutex) > maxMutexName || strings.ContainsFunc(p.Mutex, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return nil, errorf(kindInvalidParams, "mutex must be at most %d characters without control characters", maxMutexName)
	}
	for _, a := range p.Args {
		if strings.ContainsRune(a, 0) {
			return nil, errorf(kindInvalidParams, "args must not contain NUL characters")
		}
	}
	keys := make([]string, 0, len(p.Env))
	for k, v := range p.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.ContainsRune(v, 0) {
			return nil, errorf(kindInvalidParams, "env: %q is not a valid variable (names are not empty and hold no \"=\" or NUL, values no NUL)", k)
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if p.Cwd != "" {
		if !filepath.IsAbs(p.Cwd) {
			return nil, errorf(kindInvalidParams, "cwd %q must be an absolute path", p.Cwd)
		}
		if fi, err := os.Stat(p.Cwd); err != nil || !fi.IsDir() {
			return nil, errorf(kindInvalidParams, "cwd %q is not a folder on this agent", p.Cwd)
		}
	}
	env := os.Environ()
	for _, k := range keys {
		env = append(env, k+"="+p.Env[k])
	}
	// Audit the shape of the request, never the script, argument or
	// variable values (they may hold secrets).
	c.audit = map[string]any{"shell": p.Shell, "isolation": p.Isolation, "mutex": p.Mutex,
		"timeout_s": p.TimeoutS, "cwd": p.Cwd, "args": len(p.Args), "env": keys}
	if p.Ticket != "" {
		c.audit["ticket"] = p.Ticket
	}
	script, args, cwd := p.Script, p.Args, p.Cwd
	j, fresh, err := c.srv.jobs.start(jobSpec{
		jobOrigin: origin,
		Kind:      "script",
		Mutex:     p.Mutex,
		Full:      p.Isolation == "full",
		Timeout:   time.Duration(p.TimeoutS * float64(time.Second)),
		Run: func(j *job) error {
			path := filepath.Join(j.meta, "script"+ext)
			if err := writeNewFile(path, []byte(script), 0o700); err != nil {
				return fmt.Errorf("failed to write the script: %v", err)
			}
			dir := cwd
			if dir == "" {
				dir = j.workDir()
			}
			code, err := j.runProcess(shellArgv(interp, path, args), dir, env)
			if err != nil {
				return fmt.Errorf("failed to run %q: %v", interp, err)
			}
			j.setExitCode(code)
			if code != 0 {
				return exitCodeError(code)
			}
			return j.outputLost()
		},
	})
	if err != nil {
		return nil, err
	}
	c.audit["ticket"] = j.id
	if !fresh {
		c.audit["retried"] = true
	}
	return startAnswer(j, fresh), nil
}

// writeNewFile creates path, which must not exist (nor be a link), with
// data: a file planted in its place beforehand is refused, not opened.
func writeNewFile(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|oNoFollow, perm)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	return errors.Join(err, f.Close())
}

func handleJobStatus(c *call) (any, error) {
	var p struct {
		Ticket string `json:"ticket,required"`
		After  int64  `json:"after"`
		WaitMs int64  `json:"wait_ms"`
	}
	if err := decodeParams(c.params, &p); err != nil {
		return nil, err
	}
	if p.After < 0 || p.WaitMs < 0 {
		return nil, errorf(kindInvalidParams, "after and wait_ms must not be negative")
	}
	j, err := c.srv.jobs.get(p.Ticket, c.jobViewer())
	if err != nil {
		return nil, err
	}
	wait := time.Duration(min(p.WaitMs, c.srv.cfg.Limits.MaxWait.Milliseconds())) * time.Millisecond
	if wait > 0 {
		was := j.currentState()
		timer := time.NewTimer(wait)
		defer timer.Stop()
	wait:
		for was != stateDone {
			ch, ready := j.waitChange(p.After, was)
			if ready {
				break
			}
			select {
			case <-ch:
			case <-timer.C:
				break wait
			case <-c.ctx.Done():
				break wait
			}
		}
	}
	return j.status(p.After)
}

func handleJobCancel(c *call) (any, error) {
	var p struct {
		Ticket string `json:"ticket,required"`
	}
	if err := decodeParams(c.params, &p); err != nil {
		return nil, err
	}
	c.audit = map[string]any{"ticket": p.Ticket}
	j, err := c.srv.jobs.get(p.Ticket, c.jobViewer())
	if err != nil {
		return nil, err
	}
	by := fmt.Sprintf("%q (%s)", c.peer.entry.Name, c.peer.thumbprint)
	c.srv.jobs.cancelJob(j, by)
	return j.status(0)
}

func handleJobComplete(c *call) (any, error) {
	var p struct {
		Ticket string `json:"ticket,required"`
		After  int64  `json:"after"`
	}
	if err := decodeParams(c.params, &p); err != nil {
		return nil, err
	}
	if p.After < 0 {
		return nil, errorf(kindInvalidParams, "after must not be negative")
	}
	c.audit = map[string]any{"ticket": p.Ticket}
	j, err := c.srv.jobs.get(p.Ticket, c.jobViewer())
	if err != nil {
		return nil, err
	}
	if state := j.currentState(); state != stateDone {
		return nil, errorf(kindConflict, "job %s is still %s: wait for it to finish, or cancel it with job.cancel", j.id, state)
	}
	st, err := j.status(p.After)
	if err != nil {
		return nil, err
	}
	if err := c.srv.jobs.remove(j); err != nil {
		c.srv.log.Warn("failed to remove a completed job's work folder", "ticket", j.id, "err", err)
	}
	return st, nil
}

// jobsReply is job.list's answer, as the agent encodes it and the client
// decodes it.
type jobsReply struct {
	Jobs []jobListItem `json:"jobs"`
}

// jobListItem is one job in job.list.
type jobListItem struct {
	Ticket  string  `json:"ticket"`
	Kind    string  `json:"kind"`
	State   string  `json:"state"`
	Outcome *string `json:"outcome"`
	Started *string `json:"started"`
	created time.Time
}

func handleJobList(c *call) (any, error) {
	if err := decodeParams(c.params, &struct{}{}); err != nil {
		return nil, err
	}
	return jobsReply{Jobs: c.srv.jobs.list(c.jobViewer())}, nil
}
