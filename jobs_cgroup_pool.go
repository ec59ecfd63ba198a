package main

// jobs_cgroup_pool.go: making job cgroups: for a job process as it starts
// (create), or ahead of time on cgroup v1 (spares), so that starting a job
// costs there what it costs without cgroups.
//
// On v1 a job's process is forked from an agent thread inside the job's
// cgroup (sys_linux.go), and moving a thread into a cgroup makes the kernel
// wait for an RCU grace period unless another move was made within about
// the last one (cgroup_threadgroup_rwsem's rcu_sync): 9-17 ms measured on
// the 2-core build machine, against ~1.5 ms for the whole start of a
// process. So the agent keeps a few spare cgroups, tentacle.spare.<pid>.<n>,
// each with its limits set and a thread of its own already moved into it and
// parked there. A job's start takes one, renames it tentacle-<ticket> in
// every hierarchy (rename(2) of a v1 cgroup within its parent is a
// directory rename, tens of microseconds) and forks from its thread. That
// thread then ends, which takes it out of the cgroup without a second move,
// and the pool is refilled in the background; moves made back to back
// share one grace period, so a refill of several spares costs about one.
// When no spare is ready (jobs started faster than spares are made) the
// job's cgroup is made and a thread moved in for it as before, slowly but
// correctly.
//
// What must hold, and why it does:
//   - The child is in its cgroup before it runs anything: it is forked from
//     a thread already there, and the cgroup already bears the job's name.
//   - The limits are set before the claim: pids.max and the memory limit are
//     written when the spare is made. The parked thread counts in pids.max,
//     so a spare's is one more than the job's, and the thread lowers it to
//     the job's own after the fork and before it ends: at no moment can the
//     job have more processes than -job-max-procs, and with -job-max-procs 1
//     the job's process can still be forked. (While the thread is ending,
//     microseconds after the fork, the job can have one fewer: erring that
//     way keeps the limit a limit.)
//   - A crash leaves spares without threads (they died with the agent), and
//     the next start removes every empty spare whose agent is gone; a job's
//     cgroup is renamed before its process is forked, so one the agent lost
//     is found by its name (killLostCgroups) as before.
//   - An agent that stops ends its parked threads and removes its spares. A
//     thread ends without a cgroup move, so that costs no grace period.

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// maxCgroupNames is how many names a job process's cgroup may try:
// tentacle-<ticket>, then tentacle-<ticket>.2 and so on.
const maxCgroupNames = 100

func jobCgroupName(ticket string, n int) string {
	if n > 1 {
		return "tentacle-" + ticket + "." + strconv.Itoa(n)
	}
	return "tentacle-" + ticket
}

func errNamesTaken(ticket string) error {
	return fmt.Errorf("cgroups %s to %s are all taken", jobCgroupName(ticket, 1), jobCgroupName(ticket, maxCgroupNames))
}

// create makes the cgroup for a process of ticket with its limits. A name
// already taken (by a kept process of the same job, or another agent's job
// of the same ticket under the same parent) is never shared: the next
// tentacle-<ticket>.N is used.
func (h *cgroupHost) create(ticket string, maxProcs int, maxMemory int64) (*cgroup, error) {
	for n := 1; n <= maxCgroupNames; n++ {
		g, err := h.makeCgroup(jobCgroupName(ticket, n), maxProcs, maxMemory)
		if !errors.Is(err, fs.ErrExist) {
			return g, err
		}
	}
	return nil, errNamesTaken(ticket)
}

// makeCgroup makes cgroup name (in each v1 hierarchy a job's cgroup is in)
// with the limits of a job's. On v1 pids.max is one more than maxProcs, for
// the thread moved in to fork the job's process (startInCgroup), which
// lowers it once it has.
func (h *cgroupHost) makeCgroup(name string, maxProcs int, maxMemory int64) (*cgroup, error) {
	g := &cgroup{host: h, name: name, maxProcs: maxProcs, maxMemory: maxMemory}
	parents := []string{h.v2}
	if h.v2 == "" {
		parents, g.ctrls = []string{h.pids}, []string{"pids"}
		if maxMemory > 0 && h.memory != "" {
			parents, g.ctrls = append(parents, h.memory), append(g.ctrls, "memory")
		}
		if h.freezer != "" {
			parents, g.ctrls = append(parents, h.freezer), append(g.ctrls, "freezer")
		}
	}
	for _, p := range parents {
		d := filepath.Join(p, name)
		if err := os.Mkdir(d, 0o755); err != nil {
			g.remove()
			return nil, err
		}
		g.dirs = append(g.dirs, d)
	}
	procs := maxProcs
	if h.v2 == "" && procs > 0 {
		procs++
	}
	if err := g.setLimits(procs); err != nil {
		g.remove()
		return nil, err
	}
	return g, nil
}

// cgroupSpares is how many spare cgroups an agent keeps on cgroup v1: each
// is an OS thread parked in a cgroup per hierarchy used. A variable so that
// a benchmark can measure the agent without them.
var cgroupSpares = 4

// spareSeq numbers this process's spare cgroups, and ownSpares holds the
// names of those not yet claimed or removed, so that an agent's start
// never removes a spare another agent of this process is still making.
var (
	spareSeq  atomic.Int64
	ownSpares sync.Map
)

const spareCgroupPrefix = "tentacle.spare."

// parkedThread is an OS thread of the agent's parked in a v1 cgroup, from
// which the job's process is forked (startInCgroup).
type parkedThread struct {
	fork chan *exec.Cmd  // the process to start
	done chan forkResult // its start's result
	quit chan struct{}   // closed: end without starting anything
	stop sync.Once       // closes quit
	gone chan struct{}   // closed when the goroutine ends, and the thread with it
}

type forkResult struct {
	err   error // the start failed: nothing runs
	limit error // started, but pids.max could not be lowered to the job's
}

// release tells t to end without starting anything (if it has not).
func (t *parkedThread) release() { t.stop.Do(func() { close(t.quit) }) }

// end ends g's parked thread, if it has one, and waits until it has left.
func (g *cgroup) end() {
	if t := g.thread; t != nil {
		t.release()
		<-t.gone
	}
}

// cgroupPool is an agent's spare cgroups (cgroup v1).
type cgroupPool struct {
	host      *cgroupHost
	maxProcs  int
	maxMemory int64
	log       *slog.Logger
	size      int           // how many spares it keeps
	kick      chan struct{} // a spare was taken: make another
	stop      chan struct{} // closed by close
	done      chan struct{} // closed when the refiller has ended

	mu     sync.Mutex // guards spares and closed
	spares []*cgroup  // ready, each with its thread parked in it
	closed bool
}

// newCgroupPool removes the spares an earlier agent left and starts making
// this one's; nil where there are none to make (cgroup v2, cgroupSpares 0).
func newCgroupPool(h *cgroupHost, maxProcs int, maxMemory int64, log *slog.Logger) *cgroupPool {
	if h.v2 != "" || cgroupSpares <= 0 {
		return nil
	}
	if n := h.sweepSpares(); n > 0 {
		log.Info("removed spare job cgroups an earlier agent left", "spares", n)
	}
	p := &cgroupPool{host: h, maxProcs: maxProcs, maxMemory: maxMemory, log: log, size: cgroupSpares,
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go p.refill()
	return p
}

// refill keeps the pool full until close.
func (p *cgroupPool) refill() {
	defer close(p.done)
	failing := false
	for {
		for p.short() {
			g, err := p.host.makeSpare(p.maxProcs, p.maxMemory)
			if err != nil {
				if !failing { // once per spell: each job start then says why
					p.log.Warn("cannot make spare job cgroups: jobs start without them, more slowly", "err", err)
				}
				failing = true
				break
			}
			failing = false
			p.mu.Lock()
			if p.closed {
				p.mu.Unlock()
				g.discard()
				return
			}
			p.spares = append(p.spares, g)
			p.mu.Unlock()
		}
		select {
		case <-p.kick:
		case <-p.stop:
			return
		}
	}
}

func (p *cgroupPool) short() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.closed && len(p.spares) < p.size
}

// claim takes a spare, renamed for ticket, for a job process's start; nil
// when none is ready (or p is nil). Either way the pool is then refilled
// (or, after a failure to make spares, tried again).
func (p *cgroupPool) claim(ticket string) (*cgroup, error) {
	if p == nil {
		return nil, nil
	}
	p.mu.Lock()
	var g *cgroup
	if len(p.spares) > 0 {
		g = p.spares[0]
		p.spares = p.spares[1:]
	}
	p.mu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default: // a refill is already due
	}
	if g == nil {
		return nil, nil
	}
	if err := g.rename(ticket); err != nil {
		g.discard()
		return nil, err
	}
	return g, nil
}

// close ends the spares' threads and removes them. A refill under way is
// waited for: at most one thread's move into a cgroup.
func (p *cgroupPool) close() {
	if p == nil {
		return
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	spares := p.spares
	p.spares = nil
	p.mu.Unlock()
	close(p.stop)
	<-p.done
	for _, g := range spares { // all threads first: they end side by side
		g.thread.release()
	}
	for _, g := range spares {
		g.discard()
	}
}

// makeSpare makes a spare cgroup with the limits of a job's, and parks a
// thread in it.
func (h *cgroupHost) makeSpare(maxProcs int, maxMemory int64) (*cgroup, error) {
	name := spareCgroupPrefix + strconv.Itoa(os.Getpid()) + "." + strconv.FormatInt(spareSeq.Add(1), 10)
	ownSpares.Store(name, true)
	g, err := h.makeCgroup(name, maxProcs, maxMemory)
	if err == nil {
		if err = parkThread(g); err != nil {
			g.remove()
		}
	}
	if err != nil {
		ownSpares.Delete(name)
		return nil, err
	}
	return g, nil
}

// rename renames spare g for a process of ticket, the first of the names
// create would try that is free in every hierarchy.
func (g *cgroup) rename(ticket string) error {
	spare := g.name
	for n := 1; n <= maxCgroupNames; n++ {
		name := jobCgroupName(ticket, n)
		var err error
		for i, d := range g.dirs {
			to := filepath.Join(filepath.Dir(d), name)
			if d == to {
				continue
			}
			if err = os.Rename(d, to); err != nil {
				break
			}
			g.dirs[i] = to
		}
		if err == nil {
			g.name = name
			ownSpares.Delete(spare)
			return nil
		}
		if !errors.Is(err, fs.ErrExist) { // EEXIST, or ENOTEMPTY: the name is taken
			return fmt.Errorf("failed to rename spare cgroup %q for the job: %v", spare, err)
		}
	}
	return errNamesTaken(ticket)
}

// discard ends g's thread and removes g.
func (g *cgroup) discard() {
	g.end()
	g.remove()
	ownSpares.Delete(g.name)
}

// sweepSpares removes the spare cgroups that agents no longer running left
// (killed, they could not remove them): those of a process that is gone,
// or of this one that none of its agents holds. Another live agent's are
// left alone; a spare with a thread in it cannot be removed anyway (EBUSY).
// It returns how many spares it removed.
func (h *cgroupHost) sweepSpares() int {
	removed := map[string]bool{}
	for _, parent := range []string{h.pids, h.memory, h.freezer} {
		if parent == "" {
			continue
		}
		ents, _ := os.ReadDir(parent)
		for _, e := range ents {
			rest, ok := strings.CutPrefix(e.Name(), spareCgroupPrefix)
			pid, err := strconv.Atoi(strings.Split(rest, ".")[0])
			if !ok || err != nil || !e.IsDir() {
				continue
			}
			if _, held := ownSpares.Load(e.Name()); held || (pid != os.Getpid() && processAlive(pid)) {
				continue
			}
			if os.Remove(filepath.Join(parent, e.Name())) == nil {
				removed[e.Name()] = true
			}
		}
	}
	return len(removed)
}
