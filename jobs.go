package main

// jobs.go: scripts and deploys run as jobs (PROTOCOL §5 "Jobs"). A job is
// admitted under its named mutex (reader-writer rule), runs its body in its
// own goroutine, runs processes in their own process groups, and keeps its
// state (in the journal) and output (in <home>/work/<ticket>/.tentacle/) on
// disk, so that it outlives the connection that started it and, once
// finished, the agent (see jobstore.go).

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Job states and outcomes (PROTOCOL §5).
const (
	stateQueued  = "queued"
	stateRunning = "running"
	stateDone    = "done"

	outcomeSuccess   = "success"
	outcomeFailed    = "failed"
	outcomeCancelled = "cancelled"
	outcomeTimedOut  = "timed_out"
	outcomeLost      = "lost"
)

// Why a job's context ended (its cause).
var (
	errJobCancelled  = errors.New("cancelled")
	errJobTimedOut   = errors.New("timed out")
	errAgentShutdown = errors.New("the agent is shutting down")
	errJobFinished   = errors.New("finished")
)

// drainDelay is how long a job's output is still read after its process has
// exited while something else (a background process it started) holds the
// output open. Past it the pipes are closed, so a job always ends.
const drainDelay = 2 * time.Second

// metaDir is the agent's own folder inside a job's work directory: log and
// script. Hidden, so that a script's "rm -rf *" in its work directory does
// not take it.
const metaDir = ".tentacle"

// jobSpec describes a job to start.
type jobSpec struct {
	Kind    string             // "script" or "deploy"
	Mutex   string             // mutex name ("" means "default")
	Full    bool               // isolation full: runs alone within Mutex (reader-writer rule)
	Timeout time.Duration      // 0: none; counted from when the job starts running; on expiry the job's context is cancelled and outcome is timed_out
	Run     func(j *job) error // the job's body, run in its own goroutine once admitted
}

// jobManager runs and remembers jobs.
type jobManager struct {
	cfg  *config
	log  *slog.Logger
	base context.Context // parent of every job's context; killed after the shutdown grace
	kill context.CancelCauseFunc
	stop chan struct{} // ends the reaper
	done chan struct{} // closed when the reaper has ended

	journal *jobJournal
	pool    *dirPool

	mu      sync.Mutex // guards jobs, queue, holds, closing
	jobs    map[string]*job
	queue   []*job // waiting for their mutex, in arrival order
	holds   map[string]*mutexHold
	closing bool
	running sync.WaitGroup // admitted jobs whose body has not returned
}

// mutexHold is who holds one mutex: shared (isolation none) jobs or one
// full job.
type mutexHold struct {
	shared []*job
	full   *job
}

// job is one script or deploy.
type job struct {
	m       *jobManager
	id      string
	kind    string
	mutex   string
	full    bool
	timeout time.Duration
	run     func(*job) error
	dir     string // the work directory
	meta    string // dir/.tentacle
	log     *jobLog

	smu sync.Mutex // serialises writes of the job's state to the journal

	mu       sync.Mutex // guards the fields below
	ctx      context.Context
	cancel   context.CancelCauseFunc
	state    string
	outcome  string
	exitCode *int
	created  time.Time
	started  time.Time
	finished time.Time
	result   json.RawMessage
	pgid     int           // the running process's group, for the journal
	changed  chan struct{} // closed at the next change; made only when someone waits
	removed  bool          // completed or reaped: its files are gone
}

// jobState is a job's state as the journal keeps it.
type jobState struct {
	Ticket   string          `json:"ticket"`
	Kind     string          `json:"kind"`
	Mutex    string          `json:"mutex"`
	Full     bool            `json:"full,omitempty"`
	State    string          `json:"state"`
	Outcome  string          `json:"outcome,omitempty"`
	ExitCode *int            `json:"exit_code,omitempty"`
	Created  time.Time       `json:"created"`
	Started  *time.Time      `json:"started,omitempty"`
	Finished *time.Time      `json:"finished,omitempty"`
	PGID     int             `json:"pgid,omitempty"`
	Result   json.RawMessage `json:"result,omitempty"`
}

// exitCodeError is a script's non-zero exit: the job failed, and the exit
// code says all there is to say, so no agent line repeats it.
type exitCodeError int

func (e exitCodeError) Error() string { return fmt.Sprintf("exit code %d", int(e)) }

func newJobManager(cfg *config, log *slog.Logger) (*jobManager, error) {
	base, kill := context.WithCancelCause(context.Background())
	m := &jobManager{
		cfg: cfg, log: log, base: base, kill: kill,
		stop: make(chan struct{}), done: make(chan struct{}),
		jobs: map[string]*job{}, holds: map[string]*mutexHold{},
	}
	if err := os.MkdirAll(cfg.workDir(), 0o700); err != nil {
		return nil, fmt.Errorf("failed to create the work folder %q: %v", cfg.workDir(), err)
	}
	if err := m.loadJobs(); err != nil {
		return nil, err
	}
	m.pool = newDirPool(cfg.workDir(), 4)
	go m.reaper()
	return m, nil
}

// newTicket makes a job's ticket: 16 random lowercase hex digits.
func newTicket() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// validTicket also keeps any other string away from the file system.
func validTicket(s string) bool {
	if len(s) != 16 {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func (m *jobManager) newJob(id, kind, mutex string, full bool) *job {
	dir := filepath.Join(m.cfg.workDir(), id)
	j := &job{m: m, id: id, kind: kind, mutex: mutex, full: full, dir: dir, meta: filepath.Join(dir, metaDir)}
	j.log = newJobLog(filepath.Join(j.meta, "log.jsonl"), j.notify)
	return j
}

// start persists the job (queued or running) and returns at once.
func (m *jobManager) start(spec jobSpec) (*job, error) {
	if spec.Run == nil || spec.Kind == "" {
		return nil, errors.New("jobSpec needs Kind and Run")
	}
	if spec.Mutex == "" {
		spec.Mutex = "default"
	}
	j := m.newJob(newTicket(), spec.Kind, spec.Mutex, spec.Full)
	j.timeout, j.run = spec.Timeout, spec.Run
	j.state, j.created = stateQueued, time.Now().UTC()
	m.mu.Lock()
	closing := m.closing
	m.mu.Unlock()
	if closing {
		return nil, errorf(kindConflict, "the agent is shutting down: start the job again once it is back")
	}
	if err := m.pool.take(j.dir); err != nil {
		return nil, ioError(err)
	}
	if err := j.save(); err != nil {
		discardDir(m.cfg.workDir(), j.dir)
		return nil, ioError(err)
	}
	m.mu.Lock()
	if m.closing {
		m.mu.Unlock()
		j.mu.Lock()
		j.removed = true
		j.mu.Unlock()
		m.journal.remove(j.id)
		discardDir(m.cfg.workDir(), j.dir)
		return nil, errorf(kindConflict, "the agent is shutting down: start the job again once it is back")
	}
	m.jobs[j.id] = j
	m.queue = append(m.queue, j)
	admitted := m.admitLocked()
	var why string
	if !slices.Contains(admitted, j) {
		why = m.blockerLocked(j)
	}
	m.mu.Unlock()
	if why != "" {
		j.logf("waiting for mutex %q: %s", j.mutex, why)
	}
	m.log.Info("job queued", "ticket", j.id, "kind", j.kind, "mutex", j.mutex, "full", j.full)
	for _, a := range admitted {
		m.launch(a)
	}
	return j, nil
}

// admitLocked admits queued jobs whose mutex allows them, in order: a full
// job needs its mutex free, a none job needs it free of full jobs. The queue
// is first come, first served within a mutex, so a job never overtakes an
// earlier one waiting for the same mutex: a stream of none jobs cannot
// starve a full one. m.mu held.
func (m *jobManager) admitLocked() []*job {
	var admitted []*job
	blocked := map[string]bool{}
	rest := m.queue[:0]
	for _, j := range m.queue {
		h := m.holds[j.mutex]
		free := h == nil || (h.full == nil && (!j.full || len(h.shared) == 0))
		if blocked[j.mutex] || !free {
			blocked[j.mutex] = true
			rest = append(rest, j)
			continue
		}
		if h == nil {
			h = &mutexHold{}
			m.holds[j.mutex] = h
		}
		if j.full {
			h.full = j
		} else {
			h.shared = append(h.shared, j)
		}
		j.mu.Lock()
		j.ctx, j.cancel = context.WithCancelCause(m.base)
		j.state, j.started = stateRunning, time.Now().UTC()
		j.mu.Unlock()
		m.running.Add(1)
		admitted = append(admitted, j)
	}
	clear(m.queue[len(rest):])
	m.queue = rest
	return admitted
}

// blockerLocked says what a queued job waits for. m.mu held.
func (m *jobManager) blockerLocked(j *job) string {
	if h := m.holds[j.mutex]; h != nil {
		if h.full != nil {
			return fmt.Sprintf("job %s holds it with isolation full", h.full.id)
		}
		if j.full && len(h.shared) > 0 {
			ids := make([]string, len(h.shared))
			for i, s := range h.shared {
				ids[i] = s.id
			}
			return fmt.Sprintf("isolation full needs it free, and %d running job(s) hold it: %s", len(ids), strings.Join(ids, ", "))
		}
	}
	for _, q := range m.queue {
		if q == j {
			break
		}
		if q.mutex == j.mutex {
			return fmt.Sprintf("job %s is waiting for it first", q.id)
		}
	}
	return "it is busy"
}

// launch runs an admitted job's body.
func (m *jobManager) launch(j *job) {
	j.mu.Lock()
	waited := j.started.Sub(j.created)
	j.mu.Unlock()
	if waited > 100*time.Millisecond {
		j.logf("mutex %q acquired after waiting %s", j.mutex, waited.Round(time.Millisecond))
	}
	if err := j.save(); err != nil {
		m.log.Error("failed to save job state", "ticket", j.id, "err", err)
	}
	j.notify()
	m.log.Info("job started", "ticket", j.id, "kind", j.kind)
	go func() {
		defer m.running.Done()
		var timer *time.Timer
		if j.timeout > 0 {
			timer = time.AfterFunc(j.timeout, func() {
				if j.ctx.Err() == nil {
					j.logf("timed out after %s: stopping the job", j.timeout)
					j.cancel(errJobTimedOut)
				}
			})
		}
		err := j.runBody()
		if timer != nil {
			timer.Stop()
		}
		m.finish(j, err)
	}()
}

// runBody runs the job's body; a panic in it fails the job, not the agent.
func (j *job) runBody() (err error) {
	defer func() {
		if r := recover(); r != nil {
			j.m.log.Error("job body panicked", "ticket", j.id, "panic", r)
			err = fmt.Errorf("internal error: %v", r)
		}
	}()
	if err := os.MkdirAll(j.dir, 0o700); err != nil {
		return err
	}
	return j.run(j)
}

// finish records a job's outcome once its body has returned, and lets the
// jobs waiting for its mutex in.
func (m *jobManager) finish(j *job, err error) {
	outcome := outcomeFailed
	switch cause := context.Cause(j.ctx); {
	case errors.Is(cause, errJobCancelled), errors.Is(cause, errAgentShutdown):
		outcome = outcomeCancelled
	case errors.Is(cause, errJobTimedOut):
		outcome = outcomeTimedOut
	case err == nil:
		outcome = outcomeSuccess
	}
	var ec exitCodeError
	if err != nil && outcome == outcomeFailed && !errors.As(err, &ec) {
		j.logf("failed: %v", err)
	}
	j.cancel(errJobFinished)
	j.end(outcome)
	m.log.Info("job finished", "ticket", j.id, "kind", j.kind, "outcome", outcome)

	m.mu.Lock()
	if h := m.holds[j.mutex]; h != nil {
		if h.full == j {
			h.full = nil
		}
		h.shared = slices.DeleteFunc(h.shared, func(s *job) bool { return s == j })
		if h.full == nil && len(h.shared) == 0 {
			delete(m.holds, j.mutex)
		}
	}
	admitted := m.admitLocked()
	m.mu.Unlock()
	for _, a := range admitted {
		m.launch(a)
	}
}

// end makes the job done with outcome: the log is closed, the state saved,
// waiters woken. Every log line is written before, so a reader that sees
// "done" sees them all.
func (j *job) end(outcome string) {
	j.log.closeWriter()
	// Under smu, so that job.complete, which needs the state done, cannot
	// forget the job between the change and its journal line.
	j.smu.Lock()
	j.mu.Lock()
	j.state, j.outcome, j.finished, j.pgid = stateDone, outcome, time.Now().UTC(), 0
	j.mu.Unlock()
	if err := j.saveLocked(); err != nil {
		j.m.log.Error("failed to save job state", "ticket", j.id, "err", err)
	}
	j.smu.Unlock()
	j.notify()
}

func (j *job) ticket() string { return j.id }

// context is done on cancel, timeout, or agent-shutdown kill.
func (j *job) context() context.Context {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.ctx
}

// workDir is <home>/work/<ticket>, created before Run.
func (j *job) workDir() string { return j.dir }

// setResult sets the JSON shown as "result" in job.status (deploys).
func (j *job) setResult(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		j.m.log.Error("job result is not JSON", "ticket", j.id, "err", err)
		return
	}
	j.mu.Lock()
	j.result = b
	j.mu.Unlock()
}

func (j *job) setExitCode(code int) {
	j.mu.Lock()
	j.exitCode = &code
	j.mu.Unlock()
}

// logf writes one "agent" log line (split like output if long).
func (j *job) logf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	var texts [][]byte
	for _, line := range strings.Split(msg, "\n") {
		splitText([]byte(line), func(piece []byte) { texts = append(texts, piece) })
	}
	j.appendLog("agent", texts)
}

func (j *job) appendLog(stream string, texts [][]byte) {
	if err := j.log.append(stream, time.Now(), texts); err != nil {
		j.m.log.Error("failed to write a job's log: its output is being lost", "ticket", j.id, "err", err)
	}
}

// notify wakes whoever waits for a change of the job (a log line, a state).
func (j *job) notify() {
	j.mu.Lock()
	if j.changed != nil {
		close(j.changed)
		j.changed = nil
	}
	j.mu.Unlock()
}

// save writes the job's state to the journal (see jobstore.go).
func (j *job) save() error {
	j.smu.Lock()
	defer j.smu.Unlock()
	return j.saveLocked()
}

// saveLocked is save with smu held.
func (j *job) saveLocked() error {
	j.mu.Lock()
	if j.removed {
		j.mu.Unlock()
		return nil
	}
	st := jobState{
		Ticket: j.id, Kind: j.kind, Mutex: j.mutex, Full: j.full, State: j.state, Outcome: j.outcome,
		ExitCode: j.exitCode, Created: j.created, PGID: j.pgid, Result: j.result,
	}
	if !j.started.IsZero() {
		st.Started = &j.started
	}
	if !j.finished.IsZero() {
		st.Finished = &j.finished
	}
	j.mu.Unlock()
	return j.m.journal.put(st)
}

// runProcess runs argv in its own process group with stdin /dev/null and
// env as its whole environment (plus TENTACLE_TICKET and TENTACLE_WORK_DIR),
// its stdout and stderr lines going into the job's log. When the job's
// context ends the group gets SIGTERM, then SIGKILL after cfg.KillGrace.
// The exit code of a process killed by a signal is 128 + the signal. err
// is set only when the process could not be started or waited for.
func (j *job) runProcess(argv []string, dir string, env []string) (exitCode int, err error) {
	return j.runProcessUntil(j.context(), argv, dir, env)
}

// runProcessUntil is runProcess, stopped when ctx (rather than the job's
// context) ends: a deploy's DeployFailed.sh runs on its own clock after the
// job's time is over.
func (j *job) runProcessUntil(ctx context.Context, argv []string, dir string, env []string) (exitCode int, err error) {
	if len(argv) == 0 {
		return -1, errors.New("no command to run")
	}
	if ctx.Err() != nil {
		return -1, context.Cause(ctx)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	// exec.Cmd keeps the last of duplicate keys, so these two always win.
	cmd.Env = append(slices.Clip(env), "TENTACLE_TICKET="+j.id, "TENTACLE_WORK_DIR="+j.dir)
	setProcessGroup(cmd)
	stdout := &lineWriter{log: j.log, stream: "stdout", err: j.logWriteFailed}
	stderr := &lineWriter{log: j.log, stream: "stderr", err: j.logWriteFailed}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.WaitDelay = drainDelay
	if err := startChild(cmd); err != nil {
		return -1, err
	}
	pid := cmd.Process.Pid
	j.mu.Lock()
	j.pgid = pid
	j.mu.Unlock()
	if err := j.save(); err != nil {
		j.m.log.Error("failed to save job state", "ticket", j.id, "err", err)
	}
	done := make(chan error, 1)
	go func() { done <- waitChild(cmd) }()
	var werr error
	select {
	case werr = <-done:
	case <-ctx.Done():
		werr = j.stopGroup(pid, done)
	}
	stdout.flush()
	stderr.flush()
	j.mu.Lock()
	j.pgid = 0
	j.mu.Unlock()
	if errors.Is(werr, exec.ErrWaitDelay) {
		j.logf("stopped reading output %s after the process exited: a background process still holds it open", drainDelay)
		werr = nil
	}
	var ee *exec.ExitError
	if werr != nil && !errors.As(werr, &ee) {
		return -1, werr
	}
	return exitStatus(cmd.ProcessState), nil
}

func (j *job) logWriteFailed(err error) {
	j.m.log.Error("failed to write a job's log: its output is being lost", "ticket", j.id, "err", err)
}

// stopGroup stops process group pgid after the job's context ended: SIGTERM,
// then SIGKILL once KillGrace has passed with the group still alive. It
// returns the Wait result of the group's leader.
func (j *job) stopGroup(pgid int, done <-chan error) error {
	if !killNeedsGrace {
		j.logf("killing the process tree of process %d", pgid)
		signalGroup(pgid, true)
		return <-done
	}
	j.logf("sending SIGTERM to process group %d", pgid)
	if err := signalGroup(pgid, false); err != nil {
		j.logf("failed to signal process group %d: %v", pgid, err)
	}
	grace := time.NewTimer(j.m.cfg.KillGrace)
	defer grace.Stop()
	var werr error
	exited := false
	var poll <-chan time.Time
	for {
		select {
		case werr = <-done:
			exited = true
			if !groupAlive(pgid) {
				return werr
			}
			// The leader is gone but others of its group are not: see
			// whether they go within the grace period.
			t := time.NewTicker(50 * time.Millisecond)
			defer t.Stop()
			poll = t.C
			done = nil
			continue
		case <-poll:
			if !groupAlive(pgid) {
				return werr
			}
			continue
		case <-grace.C:
		}
		break
	}
	j.logf("still running %s after SIGTERM: sending SIGKILL to process group %d", j.m.cfg.KillGrace, pgid)
	signalGroup(pgid, true)
	if !exited {
		werr = <-done
	}
	return werr
}

// jobStatus is the answer of job.status, job.cancel and job.complete.
type jobStatus struct {
	Ticket   string            `json:"ticket"`
	Kind     string            `json:"kind"`
	State    string            `json:"state"`
	Outcome  *string           `json:"outcome"`
	ExitCode *int              `json:"exit_code"`
	Started  *string           `json:"started"`
	Finished *string           `json:"finished"`
	Logs     []json.RawMessage `json:"logs"`
	Next     int64             `json:"next"`
	Result   json.RawMessage   `json:"result,omitempty"`
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
		Ticket: j.id, Kind: j.kind, State: j.state, ExitCode: j.exitCode,
		Started: timeString(j.started), Finished: timeString(j.finished), Result: j.result,
		Logs: []json.RawMessage{}, Next: after,
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
	_, size := j.log.extent()
	logs, next, err := j.log.read(after, size)
	if err != nil {
		j.mu.Lock()
		removed = j.removed
		j.mu.Unlock()
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

// get finds a job by ticket.
func (m *jobManager) get(ticket string) (*job, error) {
	if validTicket(ticket) {
		m.mu.Lock()
		j := m.jobs[ticket]
		m.mu.Unlock()
		if j != nil {
			return j, nil
		}
	}
	return nil, errorf(kindNotFound, "no job %q (finished jobs are forgotten once completed, or after %s)", ticket, m.cfg.JobRetention)
}

// cancelJob cancels a queued job (it never starts) or a running one (its
// process group is stopped); a finished job is left as it is.
func (m *jobManager) cancelJob(j *job, by string) {
	m.mu.Lock()
	i := slices.Index(m.queue, j)
	var admitted []*job
	if i >= 0 {
		m.queue = slices.Delete(m.queue, i, i+1)
		// Later jobs may have waited only because this one was first.
		admitted = m.admitLocked()
	}
	m.mu.Unlock()
	if i >= 0 {
		j.logf("cancelled by %s before it started", by)
		j.end(outcomeCancelled)
		m.log.Info("job finished", "ticket", j.id, "kind", j.kind, "outcome", outcomeCancelled)
	} else {
		j.mu.Lock()
		running := j.state == stateRunning && j.ctx.Err() == nil
		j.mu.Unlock()
		if running {
			j.logf("cancelled by %s", by)
			j.cancel(errJobCancelled)
		}
	}
	for _, a := range admitted {
		m.launch(a)
	}
}

// remove forgets a finished job and deletes its work directory.
func (m *jobManager) remove(j *job) error {
	m.mu.Lock()
	delete(m.jobs, j.id)
	m.mu.Unlock()
	j.smu.Lock()
	j.mu.Lock()
	j.removed = true
	j.mu.Unlock()
	err := m.journal.remove(j.id)
	j.smu.Unlock()
	if derr := discardDir(m.cfg.workDir(), j.dir); err == nil {
		err = derr
	}
	j.notify()
	return err
}

// shutdown waits for running jobs until ctx is done, then kills them: they
// end cancelled with an agent line saying why. Queued jobs are cancelled at
// once: they would never start.
func (m *jobManager) shutdown(ctx context.Context) {
	m.mu.Lock()
	m.closing = true
	queued := m.queue
	m.queue = nil
	var running []*job
	for _, h := range m.holds {
		running = append(running, h.shared...)
		if h.full != nil {
			running = append(running, h.full)
		}
	}
	m.mu.Unlock()
	for _, j := range queued {
		j.logf("the agent shut down before this job could start")
		j.end(outcomeCancelled)
	}
	waited := make(chan struct{})
	go func() { m.running.Wait(); close(waited) }()
	start := time.Now()
	select {
	case <-waited:
	case <-ctx.Done():
		for _, j := range running {
			if j.context().Err() == nil {
				j.logf("the agent is shutting down and waited %s for this job: stopping it", time.Since(start).Round(time.Second))
			}
		}
		m.log.Warn("stopping jobs still running at shutdown", "jobs", len(running))
		m.kill(errAgentShutdown)
		<-waited
	}
	close(m.stop)
	<-m.done
	m.pool.close()
	m.journal.close()
}

// reaper removes finished jobs nobody completed once JobRetention has
// passed, so lost clients cannot fill the disk with work directories.
func (m *jobManager) reaper() {
	defer close(m.done)
	every := min(max(m.cfg.JobRetention/4, 10*time.Millisecond), time.Minute)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		m.reap(time.Now())
		select {
		case <-t.C:
		case <-m.stop:
			return
		}
	}
}

func (m *jobManager) reap(now time.Time) {
	m.mu.Lock()
	var old []*job
	for _, j := range m.jobs {
		j.mu.Lock()
		if j.state == stateDone && now.Sub(j.finished) >= m.cfg.JobRetention {
			old = append(old, j)
		}
		j.mu.Unlock()
	}
	m.mu.Unlock()
	for _, j := range old {
		err := m.remove(j)
		m.log.Info("reaped job nobody completed", "ticket", j.id, "kind", j.kind, "retention", m.cfg.JobRetention, "err", err)
	}
}

// loadJobs reads the jobs of an earlier run from the journal. Finished
// jobs stay readable; jobs that were queued or running end as lost, and what
// is left of a running job's process group is killed when it can be told
// apart safely (see killLeftovers). Work directories the journal does not
// know (the agent stopped while making or removing them) are removed.
func (m *jobManager) loadJobs() error {
	root := m.cfg.workDir()
	jr, states, err := openJournal(filepath.Join(root, journalName))
	if err != nil {
		return err
	}
	m.journal = jr
	ents, err := os.ReadDir(root)
	if err != nil {
		return fmt.Errorf("failed to read the work folder %q: %v", root, err)
	}
	for _, e := range ents {
		name := e.Name()
		if _, known := states[name]; isScratch(name) || (e.IsDir() && validTicket(name) && !known) {
			if err := os.RemoveAll(filepath.Join(root, name)); err != nil {
				m.log.Warn("failed to remove a leftover work directory", "path", filepath.Join(root, name), "err", err)
			}
		}
	}
	for id, st := range states {
		j := m.newJob(id, st.Kind, st.Mutex, st.Full)
		j.state, j.outcome, j.exitCode, j.created, j.result = st.State, st.Outcome, st.ExitCode, st.Created, st.Result
		if st.Started != nil {
			j.started = *st.Started
		}
		if st.Finished != nil {
			j.finished = *st.Finished
		}
		if err := j.log.load(); err != nil {
			m.log.Warn("unreadable job log", "ticket", j.id, "err", err)
		}
		if j.state != stateDone {
			if n := killLeftovers(st.PGID, j.id); n > 0 {
				j.logf("killed %d process(es) left over in process group %d", n, st.PGID)
			}
			if j.state == stateQueued {
				j.logf("the agent stopped before this job could start")
			} else {
				j.logf("the agent stopped while this job was running: its outcome is unknown")
			}
			j.end(outcomeLost)
			m.log.Warn("job lost: the agent stopped while it was queued or running", "ticket", j.id, "kind", j.kind)
		}
		m.jobs[j.id] = j
	}
	return nil
}

// resolveShell turns script.start's shell into an interpreter path and the
// script file's extension. The default is sh, or PowerShell where there is
// no sh (Windows).
func resolveShell(shell string) (path, ext string, err error) {
	names := []string{shell}
	if shell == "" {
		names = []string{"sh", "pwsh", "powershell"}
	}
	switch shell {
	case "", "sh", "bash", "pwsh", "powershell":
		for _, n := range names {
			if p, err := exec.LookPath(n); err == nil {
				return p, shellExt(n), nil
			}
		}
		if shell == "" {
			return "", "", errorf(kindInvalidParams, "no shell installed: the agent found none of sh, pwsh, powershell")
		}
		return "", "", errorf(kindInvalidParams, "shell %q is not installed on this agent (installed: %s)", shell, strings.Join(availableShells(), ", "))
	}
	if !filepath.IsAbs(shell) {
		return "", "", errorf(kindInvalidParams, "shell %q: want sh, bash, pwsh or an absolute interpreter path", shell)
	}
	fi, err := os.Stat(shell)
	if err != nil || fi.IsDir() {
		return "", "", errorf(kindInvalidParams, "shell %q is not installed on this agent", shell)
	}
	if _, err := exec.LookPath(shell); err != nil {
		return "", "", errorf(kindInvalidParams, "shell %q is not executable", shell)
	}
	return shell, shellExt(filepath.Base(shell)), nil
}

func shellExt(name string) string {
	name = strings.TrimSuffix(strings.ToLower(name), ".exe")
	switch name {
	case "pwsh", "powershell":
		return ".ps1"
	case "sh", "bash", "dash", "zsh", "ksh":
		return ".sh"
	}
	return ""
}

// shellArgv is the command that runs script with interpreter.
func shellArgv(interp, script string, args []string) []string {
	argv := []string{interp}
	if shellExt(filepath.Base(interp)) == ".ps1" {
		argv = append(argv, "-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-File")
	}
	return append(append(argv, script), args...)
}

// availableShells lists the shells script.start accepts that are installed.
func availableShells() []string {
	out := []string{} // [] rather than null in info when there is none
	for _, s := range []string{"sh", "bash", "pwsh"} {
		if _, err := exec.LookPath(s); err == nil {
			out = append(out, s)
		}
	}
	return out
}

// notYet is the answer of a command whose issue is not built yet.
func notYet(stderr io.Writer, name string) int {
	fmt.Fprintf(stderr, "tentacle %s: not implemented yet\n", name)
	return 1
}

func init() {
	register("script.start", method{groups: []string{"script"}, mutates: true, fn: handleScriptStart})
	register("job.status", method{groups: []string{"read"}, fn: handleJobStatus})
	register("job.cancel", method{groups: []string{"script", "deploy"}, mutates: true, fn: handleJobCancel})
	register("job.complete", method{groups: []string{"script", "deploy"}, mutates: true, fn: handleJobComplete})
	register("job.list", method{groups: []string{"read"}, fn: handleJobList})
}

// maxMutexName bounds a mutex name, which appears in log lines.
const maxMutexName = 200

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
	}
	if err := decodeParams(c.params, &p); err != nil {
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
	script, args, cwd := p.Script, p.Args, p.Cwd
	j, err := c.srv.jobs.start(jobSpec{
		Kind:    "script",
		Mutex:   p.Mutex,
		Full:    p.Isolation == "full",
		Timeout: time.Duration(p.TimeoutS * float64(time.Second)),
		Run: func(j *job) error {
			path := filepath.Join(j.meta, "script"+ext)
			if err := os.WriteFile(path, []byte(script), 0o700); err != nil {
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
			return nil
		},
	})
	if err != nil {
		return nil, err
	}
	c.audit["ticket"] = j.id
	j.mu.Lock()
	state := j.state
	j.mu.Unlock()
	if state == stateDone { // it was admitted and has already finished
		state = stateRunning
	}
	return map[string]string{"ticket": j.id, "state": state}, nil
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
	j, err := c.srv.jobs.get(p.Ticket)
	if err != nil {
		return nil, err
	}
	wait := time.Duration(min(p.WaitMs, c.srv.cfg.Limits.MaxWait.Milliseconds())) * time.Millisecond
	if wait > 0 {
		j.mu.Lock()
		was := j.state
		j.mu.Unlock()
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
	j, err := c.srv.jobs.get(p.Ticket)
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
	j, err := c.srv.jobs.get(p.Ticket)
	if err != nil {
		return nil, err
	}
	j.mu.Lock()
	state := j.state
	j.mu.Unlock()
	if state != stateDone {
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
	m := c.srv.jobs
	m.mu.Lock()
	items := make([]jobListItem, 0, len(m.jobs))
	for _, j := range m.jobs {
		j.mu.Lock()
		it := jobListItem{Ticket: j.id, Kind: j.kind, State: j.state, Started: timeString(j.started), created: j.created}
		if j.outcome != "" {
			o := j.outcome
			it.Outcome = &o
		}
		j.mu.Unlock()
		items = append(items, it)
	}
	m.mu.Unlock()
	slices.SortFunc(items, func(a, b jobListItem) int {
		if c := a.created.Compare(b.created); c != 0 {
			return c
		}
		return strings.Compare(a.Ticket, b.Ticket)
	})
	return map[string]any{"jobs": items}, nil
}
