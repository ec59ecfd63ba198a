package main

// jobs_contain.go: what holds a job's processes together, so that stopping
// a job stops all of them and no job can starve the agent.
//
// Where the agent can make cgroups (Linux with cgroup v2, or v1's pids
// hierarchy, and a /sys/fs/cgroup it may write), every process a job runs
// starts inside a cgroup of its own, tentacle-<ticket>, made under the
// agent's own cgroup (on v1 ahead of time: jobs_cgroup_pool.go), before it
// runs a single instruction (sys_linux.go).
// The cgroup caps its processes and threads (pids.max, -job-max-procs), so
// a fork flood fails inside the job while the agent goes on creating
// threads, and optionally its memory (-job-max-memory). It also lists every
// descendant, double-forked and setsid ones included, so stopping the job
// reaches them all. Elsewhere (not Linux, not permitted, a read-only
// /sys/fs/cgroup) a job's process leads its own process group, which a
// process can leave; the agent says so at start and in info.
//
// Stopping: cancel, timeout and agent shutdown send SIGTERM to the whole
// tree, then SIGKILL after -kill-grace, always. When a job's process exits
// by itself, what it left running is stopped the same way, except the
// processes whose environment has TENTACLE_KEEP_RUNNING=1 (inherited by
// their children): a deploy starts a service it means to keep with
// "TENTACLE_KEEP_RUNNING=1 nohup svc >svc.log 2>&1 &". Kept processes stay
// in their cgroup, under its limits, and the cgroup goes once they have all
// exited. Processes of a job the agent lost (it was killed while the job
// ran) are killed at the next start, found by their cgroup's name.

import (
	"cmp"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

// keepRunning in a process's environment exempts it (and so its children)
// from being stopped when its job's process exits by itself.
const keepRunning = "TENTACLE_KEEP_RUNNING=1"

// Containment modes, as the start log and info name them.
const (
	containV2    = "cgroup v2"
	containV1    = "cgroup v1"
	containGroup = "process group"
)

// containment is how one agent holds its jobs' processes.
type containment struct {
	mode      string
	reason    string      // why not cgroups, or why a limit cannot be applied
	host      *cgroupHost // nil: process groups only
	maxProcs  int         // what is enforced: 0 for nothing
	maxMemory int64
	pool      *cgroupPool // spare cgroups (v1; nil else)

	mu   sync.Mutex // guards left
	left []procTree // cgroups kept for processes that outlived their job
}

// newContainment finds how jobs can be contained here and says so in the
// log: once, at start, a WARN line with the reason when it is not cgroups.
func newContainment(cfg *config, log *slog.Logger) *containment {
	host, reason := sharedCgroups()
	if cfg.noCgroups {
		host, reason = nil, "turned off for this agent"
	}
	c := &containment{mode: containGroup, reason: reason, host: host, maxProcs: cfg.JobMaxProcs, maxMemory: cfg.JobMaxMemory}
	if host == nil {
		c.maxMemory = 0
		limit := procLimitNote(cfg.JobMaxProcs)
		if limit == "" {
			c.maxProcs = 0
			limit = "none"
		}
		log.Warn("jobs are not contained in cgroups: falling back to process groups, which a job's processes can leave (setsid)",
			"reason", reason, "process_limit", limit, "memory_limit", "none")
		return c
	}
	c.mode = containV1
	if host.v2 != "" {
		c.mode = containV2
	}
	if c.maxMemory > 0 && !host.hasMemory() {
		c.maxMemory = 0
		c.reason = "the memory controller is not available: -job-max-memory is not applied"
		log.Warn("job memory limit not applied", "reason", c.reason, "containment", c.mode)
	}
	if host.moved != "" {
		log.Info("moved the agent into a cgroup of its own, so that its jobs' cgroups can have controllers", "cgroup", host.moved)
	}
	log.Info("containing jobs in cgroups", "containment", c.mode, "parent", host.parent(), "max_procs", c.maxProcs, "max_memory", c.maxMemory)
	c.pool = newCgroupPool(host, c.maxProcs, c.maxMemory, log)
	return c
}

// close ends what the containment keeps running for the jobs to come: its
// spare cgroups and their threads.
func (c *containment) close() { c.pool.close() }

// info is the containment as the info method reports it.
func (c *containment) info() map[string]any {
	m := map[string]any{"mode": c.mode, "max_procs": c.maxProcs, "max_memory": c.maxMemory}
	if c.reason != "" {
		m["reason"] = c.reason
	}
	return m
}

// start starts cmd, which leads its own process group, inside a cgroup of
// its own for ticket (a spare renamed for it, where there is one), or,
// without cgroups, in its process group alone.
func (c *containment) start(cmd *exec.Cmd, ticket string) (procTree, error) {
	if c.host == nil {
		if err := startChild(cmd); err != nil {
			return nil, err
		}
		limitProcs(cmd.Process.Pid, c.maxProcs)
		return procGroup(cmd.Process.Pid), nil
	}
	c.sweep()
	g, err := c.pool.claim(ticket)
	if g == nil && err == nil { // no spare ready: make it now
		g, err = c.host.create(ticket, c.maxProcs, c.maxMemory)
	}
	if err != nil {
		return nil, fmt.Errorf("failed to make the job's cgroup: %v", err)
	}
	if err := startInCgroup(cmd, g); err != nil {
		g.remove()
		return nil, err
	}
	return g, nil
}

// finish closes t once the job's process has been waited for (see
// procTree.close), and keeps what had to stay for a later sweep.
func (c *containment) finish(t procTree, spare func(int) bool) []string {
	notes, left := t.close(spare)
	if left {
		c.mu.Lock()
		c.left = append(c.left, t)
		c.mu.Unlock()
	}
	return notes
}

// sweep removes the cgroups kept for processes that outlived their job
// once those have all exited. It runs as each job process starts: the
// kernel does not say when a cgroup empties (but through a release agent
// for the whole host, on v1).
func (c *containment) sweep() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.left = slices.DeleteFunc(c.left, func(t procTree) bool {
		pids, _ := t.live(nil)
		return len(pids) == 0 && t.(*cgroup).remove() == nil
	})
}

// procTree is the processes one job process started, as far as the agent
// can find them: its cgroup, or its process group.
type procTree interface {
	String() string // for the job's log: `cgroup "tentacle-…"`, "process group 123"
	// live lists the tree's live processes that spare (if not nil) does not
	// exempt, never the agent; exact is false where the processes cannot be
	// listed (no /proc), and then a live tree lists one pid standing for all.
	live(spare func(pid int) bool) (pids []int, exact bool)
	// signal sends SIGTERM, or SIGKILL when force, to the tree's processes
	// that spare does not exempt.
	signal(force bool, spare func(pid int) bool) error
	// close removes what start made, once the job's process has been waited
	// for and the processes spare does not exempt are stopping, and returns
	// lines for the job's log (a limit that was hit, processes kept); left
	// is true when something had to stay (kept processes in a cgroup).
	close(spare func(pid int) bool) (notes []string, left bool)
}

// keptRunning reports whether pid's environment has TENTACLE_KEEP_RUNNING=1.
func keptRunning(pid int) bool { return procEnvHas(pid, keepRunning) }

// procGroup is a job process's tree where there are no cgroups: its
// process group (on Windows, its process tree).
type procGroup int

func (g procGroup) String() string { return groupName(int(g)) }

func (g procGroup) live(spare func(int) bool) ([]int, bool) {
	pids, exact := groupMembers(int(g))
	if !exact || spare == nil {
		return pids, exact
	}
	return slices.DeleteFunc(pids, spare), true
}

func (g procGroup) signal(force bool, spare func(int) bool) error {
	if spare == nil {
		return signalGroup(int(g), force)
	}
	pids, _ := g.live(spare)
	for _, p := range pids {
		signalProcess(p, force)
	}
	return nil
}

func (g procGroup) close(spare func(int) bool) ([]string, bool) { return nil, false }

// killLostCgroups kills what is left in the cgroups of a job the agent lost
// (it died while the job ran), except what asked to keep running, and
// removes the cgroups that are then empty. It touches only cgroups named for
// ticket under the agent's own. It returns how many processes it killed.
func killLostCgroups(ticket string) int {
	h, _ := sharedCgroups()
	if h == nil {
		return 0
	}
	primary := cmp.Or(h.v2, h.pids)
	ents, _ := os.ReadDir(primary)
	n := 0
	for _, e := range ents {
		name := e.Name()
		if name != "tentacle-"+ticket && !strings.HasPrefix(name, "tentacle-"+ticket+".") {
			continue
		}
		g := &cgroup{host: h, name: name}
		if h.v2 != "" {
			g.dirs = []string{filepath.Join(h.v2, name)}
		}
		for _, hc := range [][2]string{{"pids", h.pids}, {"memory", h.memory}, {"freezer", h.freezer}} {
			if d := filepath.Join(hc[1], name); hc[1] != "" && dirExists(d) {
				g.dirs, g.ctrls = append(g.dirs, d), append(g.ctrls, hc[0]) // pids first: its cgroup.procs is read
			}
		}
		pids, _ := g.live(keptRunning)
		n += len(pids)
		g.signal(true, keptRunning)
		g.close(keptRunning)
	}
	return n
}

// dirExists reports a folder at p, following links (a cgroup controller
// may be mounted under a linked name).
func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}
