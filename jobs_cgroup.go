package main

// jobs_cgroup.go: the cgroups of jobs (see jobs_contain.go for why): where
// the agent may make them, found once at start; their limits; listing,
// signalling and killing what is in them; removing them. Making them, at a
// job's start or ahead of time, is in jobs_cgroup_pool.go. This is all files
// under /sys/fs/cgroup, read and written the same way on cgroup v2 and v1
// with their different names; the one part that needs system calls,
// starting a process inside a cgroup, is in sys_linux.go.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// How long the agent waits for a killed cgroup to empty, and how often it
// looks.
const (
	killWait = 10 * time.Second
	killPoll = 10 * time.Millisecond
)

// cgroupHost is where the agent makes its jobs' cgroups: under its own
// cgroup in the v2 hierarchy, or in each v1 hierarchy it uses.
type cgroupHost struct {
	v2      string // cgroup v2: the parent of job cgroups ("" on v1)
	v2Kill  bool   // cgroup v2: cgroup.kill exists (Linux 5.14)
	v2Mem   bool   // cgroup v2: the memory controller is enabled for job cgroups
	pids    string // cgroup v1: the agent's own cgroup in the pids hierarchy
	memory  string // cgroup v1: ... in the memory hierarchy ("" where not mounted)
	freezer string // cgroup v1: ... in the freezer hierarchy ("" where not mounted)
	moved   string // cgroup v2: the child cgroup the agent moved itself into, if it did
	mounts  []cgroupMount
}

func (h *cgroupHost) hasMemory() bool { return h.v2Mem || h.memory != "" }

// parent names where job cgroups go, for the start log.
func (h *cgroupHost) parent() string {
	if h.v2 != "" {
		return h.v2
	}
	return strings.Join(slices.DeleteFunc([]string{h.pids, h.memory, h.freezer}, func(s string) bool { return s == "" }), ",")
}

// cgroup is one job process's cgroup (in each v1 hierarchy used).
type cgroup struct {
	host      *cgroupHost
	name      string   // tentacle-<ticket>, or tentacle-<ticket>.N when that is taken
	dirs      []string // v2: the cgroup; v1: in pids, then memory, then freezer
	ctrls     []string // v1: the controller of each of dirs
	maxProcs  int
	maxMemory int64
	thread    *parkedThread // v1: the agent thread parked in it to fork from, if any (jobs_cgroup_pool.go)
}

func (g *cgroup) String() string { return fmt.Sprintf("cgroup %q", g.name) }

// dir is g's directory in the hierarchy of ctrl ("" if not there); on v2
// the one directory holds every controller.
func (g *cgroup) dir(ctrl string) string {
	if g.host.v2 != "" {
		return g.dirs[0]
	}
	if i := slices.Index(g.ctrls, ctrl); i >= 0 {
		return g.dirs[i]
	}
	return ""
}

// setLimits sets g's limits, with procs for pids.max.
func (g *cgroup) setLimits(procs int) error {
	if err := g.setProcs(procs); err != nil {
		return err
	}
	mem := g.dir("memory")
	if g.maxMemory <= 0 || mem == "" {
		return nil
	}
	limit := strconv.FormatInt(g.maxMemory, 10)
	if g.host.v2 != "" {
		// No swapping instead of hitting the limit, and an out-of-memory
		// kill takes the whole job, not one process of it.
		return errors.Join(writeCgroup(mem, "memory.max", limit),
			writeCgroupIf(mem, "memory.swap.max", "0"), writeCgroupIf(mem, "memory.oom.group", "1"))
	}
	// memsw (memory plus swap) exists only with swap accounting on.
	return errors.Join(writeCgroup(mem, "memory.limit_in_bytes", limit), writeCgroupIf(mem, "memory.memsw.limit_in_bytes", limit))
}

// setProcs sets g's pids.max; a new cgroup's is "max", and stays so for 0.
func (g *cgroup) setProcs(n int) error {
	if n <= 0 {
		return nil
	}
	return writeCgroup(g.dir("pids"), "pids.max", strconv.Itoa(n))
}

func writeCgroup(dir, file, value string) error {
	if err := os.WriteFile(filepath.Join(dir, file), []byte(value), 0); err != nil {
		return fmt.Errorf("failed to write %q to %q: %v", value, filepath.Join(dir, file), err)
	}
	return nil
}

// writeCgroupIf is writeCgroup for a file this kernel may not have.
func writeCgroupIf(dir, file, value string) error {
	if _, err := os.Stat(filepath.Join(dir, file)); err != nil {
		return nil
	}
	return writeCgroup(dir, file, value)
}

func (g *cgroup) live(spare func(int) bool) ([]int, bool) {
	b, err := os.ReadFile(filepath.Join(g.dirs[0], "cgroup.procs"))
	if err != nil {
		return nil, true // gone: nothing is left in it
	}
	self := os.Getpid()
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		p, err := strconv.Atoi(f)
		if err != nil || p == self || !processAlive(p) || (spare != nil && spare(p)) {
			continue
		}
		pids = append(pids, p)
	}
	return pids, true
}

func (g *cgroup) signal(force bool, spare func(int) bool) error {
	g.end() // never freeze or kill with the agent's thread still inside
	if !force {
		pids, _ := g.live(spare)
		for _, p := range pids {
			signalProcess(p, false)
		}
		return nil
	}
	if spare == nil {
		if g.host.v2Kill && writeCgroup(g.dirs[0], "cgroup.kill", "1") == nil {
			return nil
		}
		if g.dir("freezer") != "" && g.freezeKill() == nil {
			return nil
		}
	}
	return g.killLoop(spare)
}

// killLoop sends SIGKILL to every process in g that spare does not exempt,
// again and again until there are none: each round catches what the last
// one's processes forked meanwhile, and pids.max bounds how many that is.
func (g *cgroup) killLoop(spare func(int) bool) error {
	deadline := time.Now().Add(killWait)
	for {
		pids, _ := g.live(spare)
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d process(es) of %s still alive after %s of SIGKILL", len(pids), g, killWait)
		}
		for _, p := range pids {
			signalProcess(p, true)
		}
		time.Sleep(killPoll)
	}
}

// freezeKill kills every process in g at once (cgroup v1): frozen, they
// cannot fork, so one round of SIGKILL reaches all; it lands on thaw.
func (g *cgroup) freezeKill() error {
	dir := g.dir("freezer")
	if err := writeCgroup(dir, "freezer.state", "FROZEN"); err != nil {
		return err
	}
	defer writeCgroup(dir, "freezer.state", "THAWED")
	deadline := time.Now().Add(2 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(dir, "freezer.state"))
		if err != nil {
			return err
		}
		if strings.TrimSpace(string(b)) == "FROZEN" {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not freeze within 2s", g)
		}
		time.Sleep(killPoll)
	}
	pids, _ := g.live(nil)
	for _, p := range pids {
		signalProcess(p, true)
	}
	return nil
}

func (g *cgroup) close(spare func(int) bool) (notes []string, left bool) {
	g.end()
	notes = g.limitNotes()
	deadline := time.Now().Add(killWait)
	for {
		pids, _ := g.live(spare)
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return append(notes, fmt.Sprintf("%d process(es) still running in %s after SIGKILL: it is left in place", len(pids), g)), true
		}
		time.Sleep(killPoll)
	}
	if kept, _ := g.live(nil); len(kept) > 0 {
		return append(notes, fmt.Sprintf("left %d process(es) running, started with %s: they stay in %s, under its limits", len(kept), keepRunning, g)), true
	}
	if err := g.remove(); err != nil {
		return append(notes, fmt.Sprintf("failed to remove %s: %v", g, err)), true
	}
	return notes, false
}

// remove removes g's directories; the kernel refuses while a process (or
// the agent's thread) is still exiting from it, so a short wait is allowed.
func (g *cgroup) remove() error {
	g.end()
	deadline := time.Now().Add(2 * time.Second)
	var errs []error
	for _, d := range g.dirs {
		for {
			err := os.Remove(d)
			if err == nil || errors.Is(err, fs.ErrNotExist) {
				break
			}
			if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
				errs = append(errs, err)
				break
			}
			time.Sleep(time.Millisecond) // exits take microseconds: do not make the agent's stop wait
		}
	}
	return errors.Join(errs...)
}

// limitNotes says which of g's limits its processes ran into.
func (g *cgroup) limitNotes() []string {
	var notes []string
	if n := cgroupCounter(g.dir("pids"), "pids.events", "max"); n > 0 && g.maxProcs > 0 {
		notes = append(notes, fmt.Sprintf("the job reached its limit of %d processes (-job-max-procs): %d fork(s) failed", g.maxProcs, n))
	}
	file := "memory.oom_control"
	if g.host.v2 != "" {
		file = "memory.events"
	}
	if mem := g.dir("memory"); mem != "" && g.maxMemory > 0 {
		if n := cgroupCounter(mem, file, "oom_kill"); n > 0 {
			notes = append(notes, fmt.Sprintf("the kernel killed %d process(es) of the job for going over its memory limit of %d bytes (-job-max-memory)", n, g.maxMemory))
		}
	}
	return notes
}

// cgroupCounter reads "key N" from a cgroup's flat-keyed file; 0 if absent.
func cgroupCounter(dir, file, key string) int64 {
	if dir == "" {
		return 0
	}
	b, _ := os.ReadFile(filepath.Join(dir, file))
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key+" "); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// sharedCgroups is the cgroup set-up of this process, found once: finding
// it may move the agent into a cgroup of its own (cgroup v2).
var sharedCgroups = sync.OnceValues(detectCgroups)

// detectCgroups finds where this process may make cgroups for its jobs:
// cgroup v2 first, else v1's pids hierarchy. Without either, it says why.
func detectCgroups() (*cgroupHost, string) {
	if err := cgroupSupport(); err != nil {
		return nil, err.Error()
	}
	own, err := readOwnCgroups("/proc/self/cgroup")
	if err != nil {
		return nil, err.Error()
	}
	mounts, err := readCgroupMounts("/proc/self/mountinfo")
	if err != nil {
		return nil, err.Error()
	}
	var reasons []string
	if path, ok := own[""]; ok {
		h, err := setupCgroupV2(mounts, path)
		if err == nil {
			return h, ""
		}
		reasons = append(reasons, "cgroup v2: "+err.Error())
	}
	h, err := setupCgroupV1(mounts, own)
	if err == nil {
		return h, ""
	}
	return nil, strings.Join(append(reasons, "cgroup v1: "+err.Error()), "; ")
}

// readOwnCgroups parses /proc/self/cgroup ("id:controllers:path" lines)
// into controller → path; the v2 hierarchy's line ("0::path") is "".
func readOwnCgroups(file string) (map[string]string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("cannot read %q: %v", file, err)
	}
	own := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		if f[0] == "0" && f[1] == "" {
			own[""] = f[2]
			continue
		}
		for _, c := range strings.Split(f[1], ",") {
			own[c] = f[2]
		}
	}
	return own, nil
}

// cgroupMount is a mounted cgroup hierarchy.
type cgroupMount struct {
	point string   // where it is mounted
	root  string   // the cgroup at point, within the hierarchy
	v2    bool     // cgroup2
	ctrls []string // cgroup v1: its controllers
}

// readCgroupMounts lists the cgroup file systems in /proc/self/mountinfo.
func readCgroupMounts(file string) ([]cgroupMount, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("cannot read %q: %v", file, err)
	}
	var out []cgroupMount
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		// id parent major:minor root point options [optional…] - type source superoptions
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 3 || (g[0] != "cgroup" && g[0] != "cgroup2") {
			continue
		}
		m := cgroupMount{point: unescapeMount(f[4]), root: unescapeMount(f[3]), v2: g[0] == "cgroup2"}
		if !m.v2 {
			m.ctrls = strings.Split(g[2], ",")
		}
		out = append(out, m)
	}
	return out, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// cgroupDir is the directory of cgroup path (as /proc/self/cgroup names
// it) in the first of mounts that shows it and matches.
func cgroupDir(mounts []cgroupMount, path string, match func(cgroupMount) bool) (string, error) {
	found := false
	for _, m := range mounts {
		if !match(m) {
			continue
		}
		found = true
		rel, ok := strings.CutPrefix(path, m.root)
		if m.root == "/" {
			rel, ok = path, true
		}
		if ok && (rel == "" || rel[0] == '/') {
			return filepath.Join(m.point, rel), nil
		}
	}
	if found {
		return "", fmt.Errorf("the agent's cgroup %q is outside what is mounted", path)
	}
	return "", errors.New("not mounted")
}

// setupCgroupV2 readies the agent's v2 cgroup at path to hold job cgroups
// with the pids controller (and memory, where it is available) enabled in
// its cgroup.subtree_control. The kernel allows that only in a cgroup
// without processes of its own (the root aside), so where the agent's
// cgroup has them (a systemd service, a container) the agent first moves
// itself into a child, tentacle.agent, as systemd asks of a service it
// delegates a cgroup to. Job cgroups are then siblings of tentacle.agent.
func setupCgroupV2(mounts []cgroupMount, path string) (*cgroupHost, error) {
	dir, err := cgroupDir(mounts, path, func(m cgroupMount) bool { return m.v2 })
	if err != nil {
		return nil, err
	}
	b, _ := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	avail := strings.Fields(string(b))
	if !slices.Contains(avail, "pids") {
		return nil, fmt.Errorf("the pids controller is not available to cgroup %q (it has %q): the host keeps it in cgroup v1, or the parent cgroup does not delegate it", dir, strings.Join(avail, " "))
	}
	if err := cgroupV2Support(); err != nil {
		return nil, err
	}
	want := []string{"pids"}
	if slices.Contains(avail, "memory") {
		want = append(want, "memory")
	}
	moved, err := enableControllers(dir, want)
	if err != nil {
		return nil, err
	}
	h := &cgroupHost{v2: dir, moved: moved, mounts: mounts}
	err = probeCgroup(dir, func(p string) error {
		if !isFile(filepath.Join(p, "pids.max")) {
			return fmt.Errorf("cgroups made in %q have no pids.max", dir)
		}
		h.v2Kill, h.v2Mem = isFile(filepath.Join(p, "cgroup.kill")), isFile(filepath.Join(p, "memory.max"))
		return nil
	})
	if err != nil {
		return nil, err
	}
	return h, nil
}

// enableControllers enables ctrls for dir's children, moving the agent out
// of dir first if it must (see setupCgroupV2); moved is where it went.
func enableControllers(dir string, ctrls []string) (moved string, err error) {
	b, _ := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
	var add []string
	for _, c := range ctrls {
		if !slices.Contains(strings.Fields(string(b)), c) {
			add = append(add, "+"+c)
		}
	}
	if len(add) == 0 {
		return "", nil
	}
	enable := func() error {
		return os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte(strings.Join(add, " ")), 0)
	}
	if err := enable(); !errors.Is(err, syscall.EBUSY) {
		return "", cgroupWriteError(dir, err)
	}
	leaf := filepath.Join(dir, "tentacle.agent")
	self := []byte(strconv.Itoa(os.Getpid()))
	if err := os.Mkdir(leaf, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", cgroupWriteError(dir, err)
	}
	if err := os.WriteFile(filepath.Join(leaf, "cgroup.procs"), self, 0); err != nil {
		os.Remove(leaf)
		return "", cgroupWriteError(leaf, err)
	}
	if err := enable(); err != nil {
		os.WriteFile(filepath.Join(dir, "cgroup.procs"), self, 0) // back where it was
		os.Remove(leaf)
		if errors.Is(err, syscall.EBUSY) {
			return "", fmt.Errorf("cgroup %q holds other processes than the agent, so its children cannot have controllers: run the agent in a cgroup of its own (systemd: Delegate=yes)", dir)
		}
		return "", cgroupWriteError(dir, err)
	}
	return leaf, nil
}

// setupCgroupV1 finds the agent's own cgroups in the v1 hierarchies it
// uses: pids (needed), memory and freezer (where mounted and writable).
func setupCgroupV1(mounts []cgroupMount, own map[string]string) (*cgroupHost, error) {
	h := &cgroupHost{mounts: mounts}
	for _, ctrl := range []string{"pids", "memory", "freezer"} {
		dir, err := "", errors.New("not mounted")
		if path, ok := own[ctrl]; ok {
			dir, err = cgroupDir(mounts, path, func(m cgroupMount) bool { return !m.v2 && slices.Contains(m.ctrls, ctrl) })
		}
		if err == nil {
			err = probeCgroup(dir, func(string) error { return nil })
		}
		switch {
		case err != nil && ctrl == "pids":
			return nil, fmt.Errorf("the pids controller: %v", err)
		case err != nil:
		case ctrl == "pids":
			h.pids = dir
		case ctrl == "memory":
			h.memory = dir
		default:
			h.freezer = dir
		}
	}
	return h, nil
}

// probeCgroup makes a cgroup in dir, runs check on it and removes it: the
// proof that the agent may make its jobs' cgroups there.
func probeCgroup(dir string, check func(probe string) error) error {
	p := filepath.Join(dir, "tentacle.probe."+strconv.Itoa(os.Getpid()))
	if err := os.Mkdir(p, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return cgroupWriteError(dir, err)
	}
	defer os.Remove(p)
	return check(p)
}

// cgroupWriteError says why the agent may not write in cgroup dir, and
// what would let it.
func cgroupWriteError(dir string, err error) error {
	switch {
	case err == nil:
		return nil
	case isReadOnlyFS(err):
		return fmt.Errorf("%q is read-only (as in a container by default): make /sys/fs/cgroup writable for the agent to make cgroups", dir)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("uid %d may not make cgroups in %q: run the agent as root, or delegate that cgroup to it (systemd: Delegate=yes)", os.Getuid(), dir)
	}
	return err
}

func isFile(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
