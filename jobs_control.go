package main

// jobs_control.go: what clients do with jobs once started: find them (only
// their own, see jobViewer), cancel, complete (remove) and list them; and
// what the agent does to all of them: reap the forgotten ones and stop them
// at shutdown.

import (
	"context"
	"slices"
	"strings"
	"time"
)

// jobViewer is who asks about jobs. Jobs belong to who started them: a
// client sees and touches its own jobs only, unless its trust entry has the
// group "jobs" (an entry without allow= has every group). Another client's
// job reads exactly like an unknown ticket, so a ticket's existence leaks
// nothing. Jobs journaled before owners were recorded have none: only
// "jobs" sees them.
type jobViewer struct {
	thumbprint string
	all        bool
}

func (v jobViewer) sees(j *job) bool {
	return v.all || (j.owner != "" && j.owner == v.thumbprint)
}

// get finds a job by ticket, among the jobs v may see.
func (m *jobManager) get(ticket string, v jobViewer) (*job, error) {
	if validTicket(ticket) {
		m.mu.Lock()
		j := m.jobs[ticket]
		m.mu.Unlock()
		if j != nil && v.sees(j) {
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
		m.logFinished(j)
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
	if m.jobs[j.id] == j { // not a new job that reused the ticket meanwhile
		delete(m.jobs, j.id)
	}
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
		m.logFinished(j)
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

// list returns every job v may see, oldest first, as job.list shows them.
func (m *jobManager) list(v jobViewer) []jobListItem {
	m.mu.Lock()
	items := []jobListItem{}
	for _, j := range m.jobs {
		if !v.sees(j) {
			continue
		}
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
