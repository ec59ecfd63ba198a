package main

// jobs.go: scripts and deploys run as jobs (PROTOCOL §5 "Jobs"). A job is
// admitted under its named mutex (reader-writer rule), runs its body in its
// own goroutine, runs processes in cgroups of their own (jobs_contain.go), and keeps its
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
	contain *containment // how job processes are held (jobs_contain.go)

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
	m.contain = newContainment(cfg, log)
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

// remove forgets a finished job and deletes its work directory. The
// folder is out of sight before the job reads as gone, so whoever sees
// not_found also finds no folder; a status read meanwhile waits on smu.
func (m *jobManager) remove(j *job) error {
	j.smu.Lock()
	// The journal first: a crash from here on leaves a folder the journal
	// does not know, which the next start removes.
	err := m.journal.remove(j.id)
	if derr := discardDir(m.cfg.workDir(), j.dir); err == nil {
		err = derr
	}
	j.mu.Lock()
	j.removed = true
	j.mu.Unlock()
	j.smu.Unlock()
	m.mu.Lock()
	delete(m.jobs, j.id)
	m.mu.Unlock()
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

// list returns every job, oldest first, as job.list shows them.
func (m *jobManager) list() []jobListItem {
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
	return items
}
