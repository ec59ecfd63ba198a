package main

// jobs_journal.go: where jobs live on disk. Job states are lines in a journal,
// <home>/work/jobs.journal; each job has a work directory
// <home>/work/<ticket>/ with the agent's files (log, script) in .tentacle/.
//
// Both are shaped by what the disk costs: on the machines this was measured
// on (virtualised storage), creating a file or a folder takes about half a
// millisecond, while appending to an open file or renaming takes a few
// microseconds. A state file per job, replaced atomically (temporary file
// and rename) on each change, would cost a creation per change; a journal
// line costs an append. Work directories are made ahead of time and renamed
// into place when a job starts.

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// jobJournal is the job states: an append-only file of JSON lines, one per
// change of a job's state. The last line of a ticket is its state; a line
// {"ticket":…,"removed":true} forgets it. An append is one write(2) on a
// file opened with O_APPEND, so a crash of the agent leaves whole lines; a
// line cut short by a power loss is ignored, leaving that job's previous
// state. A failed append (the disk is full) is cut off again, so the file
// always ends at a line boundary and a later line is never glued onto half
// of this one; the changes it held are written with the next append that
// succeeds. The journal is rewritten (temporary file and rename) when it
// has grown well past the number of jobs it describes.
type jobJournal struct {
	path string

	mu      sync.Mutex        // guards the fields below
	f       *os.File          // opened for appending
	size    int64             // bytes of whole lines in the file
	torn    bool              // a failed append could not be cut off: cut before the next
	lines   int               // lines in the file
	live    map[string][]byte // each known job's last line, for rewriting
	unsaved map[string]bool   // tickets whose last change a failed append lost
}

// journalRecord is one line: a state, or a removal.
type journalRecord struct {
	jobState
	Removed bool `json:"removed,omitempty"`
}

// openJournal reads the journal at path and returns it with the states it
// holds, rewritten without the history.
func openJournal(path string) (*jobJournal, map[string]jobState, error) {
	jr := &jobJournal{path: path, live: map[string][]byte{}, unsaved: map[string]bool{}}
	states := map[string]jobState{}
	if f, err := os.OpenFile(path, os.O_RDONLY|oNoFollow, 0); err == nil {
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			var r journalRecord
			if json.Unmarshal(sc.Bytes(), &r) != nil || !validTicket(r.Ticket) {
				continue // a line cut short by a crash
			}
			if r.Removed {
				delete(states, r.Ticket)
				delete(jr.live, r.Ticket)
				continue
			}
			states[r.Ticket] = r.jobState
			jr.live[r.Ticket] = append([]byte(nil), sc.Bytes()...)
		}
		err := sc.Err()
		f.Close()
		if err != nil {
			return nil, nil, fmt.Errorf("failed to read the job journal %q: %v", path, err)
		}
	} else if !os.IsNotExist(err) {
		return nil, nil, fmt.Errorf("failed to read the job journal %q: %v", path, err)
	}
	jr.mu.Lock()
	defer jr.mu.Unlock()
	if err := jr.rewriteLocked(); err != nil {
		return nil, nil, fmt.Errorf("failed to write the job journal %q: %v", path, err)
	}
	return jr, states, nil
}

// put records a job's state.
func (jr *jobJournal) put(st jobState) error {
	b, err := json.Marshal(journalRecord{jobState: st})
	if err != nil {
		return err
	}
	jr.mu.Lock()
	defer jr.mu.Unlock()
	jr.live[st.Ticket] = b
	return jr.appendLocked(st.Ticket)
}

// remove forgets a job.
func (jr *jobJournal) remove(ticket string) error {
	jr.mu.Lock()
	defer jr.mu.Unlock()
	delete(jr.live, ticket)
	return jr.appendLocked(ticket)
}

// lineLocked is the line that records ticket's last change: its state, or
// its removal. jr.mu held.
func (jr *jobJournal) lineLocked(ticket string) []byte {
	if b, ok := jr.live[ticket]; ok {
		return b
	}
	b, _ := json.Marshal(map[string]any{"ticket": ticket, "removed": true})
	return b
}

// appendLocked writes ticket's last change, after those of earlier failed
// appends, in one write. jr.mu held.
func (jr *jobJournal) appendLocked(ticket string) error {
	if jr.f == nil {
		return fmt.Errorf("the job journal %q is closed", jr.path)
	}
	jr.unsaved[ticket] = true
	if jr.torn {
		if err := jr.f.Truncate(jr.size); err != nil {
			return err
		}
		jr.torn = false
	}
	var b []byte
	for t := range jr.unsaved {
		b = append(append(b, jr.lineLocked(t)...), '\n')
	}
	if _, err := jr.f.Write(b); err != nil {
		jr.torn = jr.f.Truncate(jr.size) != nil
		return err
	}
	jr.size += int64(len(b))
	jr.lines += len(jr.unsaved)
	clear(jr.unsaved)
	if jr.lines > 4*len(jr.live)+1024 {
		return jr.rewriteLocked()
	}
	return nil
}

// rewriteLocked replaces the journal with one line per known job, fsynced
// (this happens rarely: at start-up and every thousand or so changes).
func (jr *jobJournal) rewriteLocked() error {
	var b []byte
	for _, line := range jr.live {
		b = append(append(b, line...), '\n')
	}
	if err := writeFileAtomic(jr.path, b, 0o600); err != nil {
		return err
	}
	f, err := os.OpenFile(jr.path, os.O_WRONLY|os.O_APPEND|oNoFollow, 0)
	if err != nil {
		return err
	}
	if jr.f != nil {
		jr.f.Close()
	}
	jr.f, jr.size, jr.lines, jr.torn = f, int64(len(b)), len(jr.live), false
	clear(jr.unsaved)
	return nil
}

// close closes the journal, writing it whole first if some change is not in
// it yet (an append failed and none has succeeded since).
func (jr *jobJournal) close() {
	jr.mu.Lock()
	defer jr.mu.Unlock()
	if len(jr.unsaved) > 0 && jr.f != nil {
		jr.rewriteLocked()
	}
	if jr.f != nil {
		jr.f.Close()
		jr.f = nil
	}
}

// Names in the work folder that are not tickets.
const (
	sparePrefix = ".spare-" // a work directory made ahead of time
	trashPrefix = ".trash-" // a completed job's directory, being removed
	journalName = "jobs.journal"
)

// fillDelay is how long after a job start the pool is refilled.
const fillDelay = 20 * time.Millisecond

// dirPool keeps a few work directories ready, each with its .tentacle
// folder and an empty log, so that starting a job renames one into place
// instead of creating three things on the request's path. The script is
// not made ahead: it is created, never opened, when the job runs.
type dirPool struct {
	root  string
	ready chan string   // ready directories
	kick  chan struct{} // asks the filler for more
	stop  chan struct{}
	done  chan struct{}
}

func newDirPool(root string, size int) *dirPool {
	p := &dirPool{root: root, ready: make(chan string, size), kick: make(chan struct{}, 1),
		stop: make(chan struct{}), done: make(chan struct{})}
	go p.fill()
	p.refill()
	return p
}

// take makes dir a fresh work directory: a ready one renamed, or a new one.
func (p *dirPool) take(dir string) error {
	defer p.refill()
	select {
	case spare := <-p.ready:
		if err := os.Rename(spare, dir); err == nil {
			return nil
		}
		os.RemoveAll(spare)
	default:
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	return os.Mkdir(filepath.Join(dir, metaDir), 0o700)
}

func (p *dirPool) refill() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// fill makes directories until the pool is full, whenever asked.
func (p *dirPool) fill() {
	defer close(p.done)
	for {
		select {
		case <-p.kick:
		case <-p.stop:
			return
		}
		// Let the job that took a directory start first: making one is
		// several file system operations that would compete with it.
		select {
		case <-time.After(fillDelay):
		case <-p.stop:
			return
		}
		for len(p.ready) < cap(p.ready) {
			dir, err := makeSpareDir(p.root)
			if err != nil {
				break // the disk is full or read-only: take makes directories itself
			}
			select {
			case p.ready <- dir:
			default:
				os.RemoveAll(dir)
			}
		}
	}
}

// close stops the filler; ready directories stay, and are removed at the
// next start.
func (p *dirPool) close() {
	close(p.stop)
	<-p.done
}

func makeSpareDir(root string) (string, error) {
	dir, err := os.MkdirTemp(root, sparePrefix)
	if err != nil {
		return "", err
	}
	meta := filepath.Join(dir, metaDir)
	err = os.Mkdir(meta, 0o700)
	for _, f := range []struct {
		name string
		perm os.FileMode
	}{{"log.jsonl", 0o600}} {
		if err == nil {
			var fh *os.File
			if fh, err = os.OpenFile(filepath.Join(meta, f.name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, f.perm); err == nil {
				err = fh.Close()
			}
		}
	}
	if err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}

// checkWorkDir makes sure the job's folder and its .tentacle are real
// folders of the agent's own user that nobody else can write, before
// anything is written or run in them: with a work folder another user could
// write, a job folder swapped for one of hers ran her script (issue 11).
func (j *job) checkWorkDir() error {
	for _, dir := range []string{j.dir, j.meta} {
		fi, err := os.Lstat(dir)
		if errors.Is(err, fs.ErrNotExist) {
			if err = os.Mkdir(dir, 0o700); err == nil {
				fi, err = os.Lstat(dir)
			}
		}
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			return fmt.Errorf("job folder %q is not a folder (%v): refusing to use it", dir, fi.Mode().Type())
		}
		if uid, ok := fileOwner(fi); ok {
			if uid != os.Geteuid() {
				return fmt.Errorf("job folder %q belongs to uid %d, not the agent's uid %d: refusing to use it", dir, uid, os.Geteuid())
			}
			if fi.Mode().Perm()&0o022 != 0 {
				return fmt.Errorf("job folder %q is writable by group or others (mode %04o): refusing to use it", dir, fi.Mode().Perm())
			}
		}
	}
	return nil
}

// discardDir removes a work directory: renamed out of the way at once (so
// the ticket's folder is gone), deleted in the background.
func discardDir(root, dir string) error {
	trash := filepath.Join(root, trashPrefix+filepath.Base(dir))
	if err := os.Rename(dir, trash); err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return os.RemoveAll(dir)
	}
	go os.RemoveAll(trash)
	return nil
}

// isScratch reports whether a name in the work folder is the agent's own
// leftover: a spare or trashed directory, or a journal's temporary file.
func isScratch(name string) bool {
	return strings.HasPrefix(name, sparePrefix) || strings.HasPrefix(name, trashPrefix) ||
		strings.HasPrefix(name, "."+journalName+".tmp")
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

	Owner        string `json:"owner,omitempty"`       // the starting client's thumbprint
	Client       string `json:"client,omitempty"`      // its trust-entry name
	Fingerprint  string `json:"fingerprint,omitempty"` // digest of the start's parameters
	LogTruncated bool   `json:"log_truncated,omitempty"`
	LogError     string `json:"log_error,omitempty"`
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
		j.owner, j.client, j.fingerprint, j.logCut, j.logErr = st.Owner, st.Client, st.Fingerprint, st.LogTruncated, st.LogError
		if st.Started != nil {
			j.started = *st.Started
		}
		if st.Finished != nil {
			j.finished = *st.Finished
		}
		// Start-up does not read job logs (a kept 2 GiB log once held the
		// port shut for 21.9 s): each is looked at when first used.
		j.log.lazy = true
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
			m.log.Warn("job lost: the agent stopped while it was queued or running", "ticket", j.id, "kind", j.kind, "client", j.client)
		}
		m.jobs[j.id] = j
	}
	return nil
}
