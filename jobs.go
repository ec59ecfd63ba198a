package main

// jobs.go: scripts and deploys run as jobs (PROTOCOL §5 "Jobs"). A job is
// admitted under its named mutex (reader-writer rule), runs its body in its
// own goroutine, runs processes in cgroups of their own (jobs_contain.go), and keeps its
// state (in the journal) and output (in <home>/work/<ticket>/.tentacle/) on
// disk, so that it outlives the connection that started it and, once
// finished, the agent (see jobs_journal.go). A job belongs to the client
// that started it (see jobViewer in jobs_control.go), and a client may name
// it itself, so that a start can be sent again safely (see start).

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
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

// metaDir is the agent's own folder inside a job's work directory: log and
// script. Hidden, so that a script's "rm -rf *" in its work directory does
// not take it.
const metaDir = ".tentacle"

// jobOrigin is the part of a job's start that comes from the request: who
// asks, under which ticket, with which parameters (see call.jobOrigin).
type jobOrigin struct {
	Ticket      string // chosen by the client (PROTOCOL §5 retried starts); "" mints one
	Fingerprint string // digest of the start's parameters, which a retried start must repeat
	Owner       string // the client's thumbprint: the job is its own (see jobViewer)
	Client      string // the client's trust-entry name, for the agent's log
}

// jobSpec describes a job to start.
type jobSpec struct {
	jobOrigin
	Kind     string             // "script" or "deploy"
	Mutex    string             // mutex name ("" means "default")
	Full     bool               // isolation full: runs alone within Mutex (reader-writer rule)
	Timeout  time.Duration      // 0: none; counted from when the job starts running; on expiry the job's context is cancelled and outcome is timed_out
	Run      func(j *job) error // the job's body, run in its own goroutine once admitted
	LogAttrs []any              // added to the agent's "job finished" line (a deploy's app and version)
	// BodyDecides: a nil error from Run is success, whatever cancel or
	// timeout came after it had done its work (a deploy whose release is
	// recorded successful is successful, also when a cancel lands during
	// its retention).
	BodyDecides bool
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
	contain *containment // how job processes are held (jobs_contain.go)

	mu       sync.Mutex // guards jobs, starting, queue, holds, closing
	jobs     map[string]*job
	starting map[string]chan struct{} // tickets being started, closed once in jobs (or failed)
	queue    []*job                   // waiting for their mutex, in arrival order
	holds    map[string]*mutexHold
	closing  bool
	running  sync.WaitGroup // admitted jobs whose body has not returned
}

// mutexHold is who holds one mutex: shared (isolation none) jobs or one
// full job.
type mutexHold struct {
	shared []*job
	full   *job
}

// job is one script or deploy.
type job struct {
	m           *jobManager
	id          string
	kind        string
	mutex       string
	full        bool
	owner       string // the starting client's thumbprint ("" for jobs from before owners)
	client      string // its trust-entry name
	fingerprint string // digest of the start's parameters
	logAttrs    []any
	bodyDecides bool // see jobSpec.BodyDecides
	timeout     time.Duration
	run         func(*job) error
	dir         string // the work directory
	meta        string // dir/.tentacle
	log         *jobLog

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
	blocked  time.Time     // when it first had to wait for another job's hold on its mutex
	logCut   bool          // output past -job-max-log was dropped
	logErr   string        // why output could not be written, if it could not
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
		jobs: map[string]*job{}, starting: map[string]chan struct{}{}, holds: map[string]*mutexHold{},
	}
	if err := os.MkdirAll(cfg.workDir(), 0o700); err != nil {
		return nil, fmt.Errorf("failed to create the work folder %q: %v", cfg.workDir(), err)
	}
	m.contain = newContainment(cfg, log)
	if err := m.loadJobs(); err != nil {
		m.contain.close()
		return nil, err
	}
	m.pool = newDirPool(cfg.workDir(), 4)
	go m.reaper()
	return m, nil
}

// newTicket makes a job's ticket: 16 random lowercase hex digits.
func newTicket() string { return randomHex(8) }

// randomHex is n random bytes in lowercase hex: tickets, the suffixes of
// temporary names.
func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// validTicket reports whether s can be a ticket: 16 to 64 of a-z 0-9 -
// (PROTOCOL §5), which the minted form is too. It also keeps any other
// string away from the file system: a ticket names a work directory.
func validTicket(s string) bool {
	if len(s) < 16 || len(s) > 64 {
		return false
	}
	return !strings.ContainsFunc(s, func(c rune) bool { return (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' })
}

func (m *jobManager) newJob(id, kind, mutex string, full bool) *job {
	dir := filepath.Join(m.cfg.workDir(), id)
	j := &job{m: m, id: id, kind: kind, mutex: mutex, full: full, dir: dir, meta: filepath.Join(dir, metaDir)}
	j.log = newJobLog(filepath.Join(j.meta, "log.jsonl"), j.notify)
	j.log.max = m.cfg.JobMaxLog
	return j
}

func errJobsClosing() error {
	return errorf(kindConflict, "the agent is shutting down: start the job again once it is back")
}

// start persists the job (queued or running) and returns at once. A start
// whose ticket names a job already there starts nothing: if that job was
// started by the same client with the same parameters it is returned with
// fresh false (a retried start, PROTOCOL §5), else the start is conflict.
func (m *jobManager) start(spec jobSpec) (j *job, fresh bool, err error) {
	if spec.Run == nil || spec.Kind == "" {
		return nil, false, errors.New("jobSpec needs Kind and Run")
	}
	if spec.Ticket != "" && !validTicket(spec.Ticket) {
		return nil, false, errorf(kindInvalidParams, "ticket %q: want 16 to 64 of a-z 0-9 -", spec.Ticket)
	}
	if spec.Mutex == "" {
		spec.Mutex = "default"
	}
	id, old, err := m.reserve(cmp.Or(spec.Ticket, newTicket()), spec)
	if old != nil || err != nil {
		return old, false, err
	}
	j = m.newJob(id, spec.Kind, spec.Mutex, spec.Full)
	j.owner, j.client, j.fingerprint, j.logAttrs = spec.Owner, spec.Client, spec.Fingerprint, spec.LogAttrs
	j.timeout, j.run, j.bodyDecides = spec.Timeout, spec.Run, spec.BodyDecides
	j.state, j.created = stateQueued, time.Now().UTC()
	abandon := func(err error) (*job, bool, error) {
		m.mu.Lock()
		m.unreserveLocked(id)
		m.mu.Unlock()
		return nil, false, err
	}
	if err := m.pool.take(j.dir); err != nil {
		return abandon(ioError(err))
	}
	if err := j.checkWorkDir(); err != nil {
		discardDir(m.cfg.workDir(), j.dir)
		return abandon(ioError(err))
	}
	if err := j.save(); err != nil {
		discardDir(m.cfg.workDir(), j.dir)
		return abandon(ioError(err))
	}
	m.mu.Lock()
	if m.closing {
		m.mu.Unlock()
		j.mu.Lock()
		j.removed = true
		j.mu.Unlock()
		m.journal.remove(j.id)
		discardDir(m.cfg.workDir(), j.dir)
		return abandon(errJobsClosing())
	}
	m.jobs[j.id] = j
	m.unreserveLocked(id)
	m.queue = append(m.queue, j)
	admitted := m.admitLocked()
	var why string
	if !slices.Contains(admitted, j) {
		why = m.blockerLocked(j)
		j.mu.Lock()
		j.blocked = time.Now().UTC()
		j.mu.Unlock()
	}
	m.mu.Unlock()
	if why != "" {
		j.logf("waiting for mutex %q: %s", j.mutex, why)
	}
	m.log.Debug("job queued", "ticket", j.id, "kind", j.kind, "mutex", j.mutex, "full", j.full, "client", j.client)
	for _, a := range admitted {
		m.launch(a)
	}
	return j, true, nil
}

// reserve claims ticket id for a new job (a minted one that is taken is
// minted again) and returns the ticket claimed, or returns the job a
// retried start of spec names. Starts of one ticket are serialised: a
// second waits until the first is in jobs (or has failed), then looks again.
func (m *jobManager) reserve(id string, spec jobSpec) (string, *job, error) {
	for {
		m.mu.Lock()
		if m.closing {
			m.mu.Unlock()
			return "", nil, errJobsClosing()
		}
		if old := m.jobs[id]; old != nil && !old.isRemoved() {
			m.mu.Unlock()
			if spec.Ticket == "" { // a minted ticket met another: mint again
				id = newTicket()
				continue
			}
			if old.kind == spec.Kind && old.owner == spec.Owner && old.fingerprint == spec.Fingerprint {
				return id, old, nil
			}
			// The same answer whoever holds the ticket: it tells another
			// client nothing it could not learn by starting a job.
			return "", nil, errorf(kindConflict, "ticket %q is taken by another job: a retried start must repeat the first one's parameters; use a new ticket for a new job", id)
		}
		if wait := m.starting[id]; wait != nil {
			m.mu.Unlock()
			<-wait
			continue
		}
		m.starting[id] = make(chan struct{})
		m.mu.Unlock()
		return id, nil, nil
	}
}

// unreserveLocked ends reserve's claim on id. m.mu held.
func (m *jobManager) unreserveLocked(id string) {
	if wait := m.starting[id]; wait != nil {
		close(wait)
		delete(m.starting, id)
	}
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
	// Only a job that had to wait for another job's hold on its mutex says
	// so: time spent on its own start (a slow disk, a busy journal) is not
	// waiting for a mutex.
	j.mu.Lock()
	blocked, started := j.blocked, j.started
	j.mu.Unlock()
	if !blocked.IsZero() {
		j.logf("mutex %q acquired after waiting %s", j.mutex, started.Sub(blocked).Round(time.Millisecond))
	}
	if err := j.save(); err != nil {
		m.log.Error("failed to save job state", "ticket", j.id, "err", err)
	}
	j.notify()
	m.log.Debug("job started", "ticket", j.id, "kind", j.kind, "client", j.client)
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
	if err := j.checkWorkDir(); err != nil {
		return err
	}
	return j.run(j)
}

// finish records a job's outcome once its body has returned, and lets the
// jobs waiting for its mutex in.
func (m *jobManager) finish(j *job, err error) {
	outcome := outcomeFailed
	switch cause := context.Cause(j.ctx); {
	case err == nil && j.bodyDecides:
		outcome = outcomeSuccess
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
	m.logFinished(j)

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

// logFinished writes the agent's one INFO line for a finished job.
func (m *jobManager) logFinished(j *job) {
	j.mu.Lock()
	var ran time.Duration
	if !j.started.IsZero() {
		ran = j.finished.Sub(j.started)
	}
	attrs := []any{"ticket", j.id, "kind", j.kind, "outcome", j.outcome, "duration", ran.Round(time.Millisecond), "client", j.client}
	if j.logCut {
		attrs = append(attrs, "log_truncated", true)
	}
	if j.logErr != "" {
		attrs = append(attrs, "log_error", j.logErr)
	}
	j.mu.Unlock()
	m.log.Info("job finished", append(attrs, j.logAttrs...)...)
}

func (j *job) ticket() string { return j.id }

func (j *job) isRemoved() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.removed
}

// currentState is the job's state now.
func (j *job) currentState() string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.state
}

// startState is the state a start answers with: a job admitted that has
// finished already still reads running, as it was when it started.
func (j *job) startState() string {
	if s := j.currentState(); s != stateDone {
		return s
	}
	return stateRunning
}

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

// notify wakes whoever waits for a change of the job (a log line, a state).
func (j *job) notify() {
	j.mu.Lock()
	if j.changed != nil {
		close(j.changed)
		j.changed = nil
	}
	j.mu.Unlock()
}

// save writes the job's state to the journal (see jobs_journal.go).
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
		Owner: j.owner, Client: j.client, Fingerprint: j.fingerprint, LogTruncated: j.logCut, LogError: j.logErr,
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
