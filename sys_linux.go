//go:build linux

package main

// sys_linux.go: platform code for Linux: early writeback of large files
// (sync_file_range), file identity for the digest cache, the orphan
// reaper, and starting a job's process inside its cgroup.
//
// Orphaned processes. While the agent runs it is a child
// subreaper (prctl PR_SET_CHILD_SUBREAPER), and in a container it is PID 1:
// either way the orphaned descendants of its jobs (a script's "daemon &", a
// double fork) are handed to it when their parent exits, and unless it
// collects their exit they stay zombies for as long as it runs.
//
// A naive wait4(-1) would also collect the agent's own job processes and
// steal the exit statuses os/exec is waiting for. So the reaper waits for one
// zombie child at a time, by pid, and only for one that
//   - startChild did not register (the registry below), and
//   - no os.Process in this process still holds a pidfd for: Go keeps one for
//     every process os/exec starts (Linux 5.4+) until Wait has collected it,
//     so a child that other code started directly is left alone too.
//
// It is on whenever the agent runs on Linux, not only as PID 1: then the
// agent never depends on what its PID 1 does (a shell as a container's
// entrypoint, an init that reaps late), a job's escaped descendants stay
// under the agent rather than under init, and the behaviour is the same, and
// tested the same way, everywhere. Long-running processes a deploy leaves
// behind are not affected: they run on, and if the agent stops they pass to
// the next reaper up (init).

import (
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

const prSetChildSubreaper = 36 // from <linux/prctl.h>

// reapInterval is the sweep without a signal: it catches a zombie that was
// protected when its SIGCHLD came (an os.Process released without Wait) and a
// child the children lists missed while it was exiting.
const reapInterval = 5 * time.Second

// reapSpacing is the least time between two sweeps a SIGCHLD asks for: a
// sweep reads the children of every thread in /proc, and a burst of jobs
// ending (every job's process is a child) would otherwise pay one sweep
// each. An orphan is reaped at most this much later.
const reapSpacing = 50 * time.Millisecond

// reaper is process-wide: one per process, shared by every agent running in
// it (tests run several, one after another and sometimes overlapping).
var reaper struct {
	// mu guards everything below. startChild holds it across cmd.Start, and a
	// sweep across each check-and-wait, so a child that exits at once cannot
	// be taken for an orphan before it is registered.
	mu    sync.Mutex
	pids  map[int]bool // started by startChild and not yet waited for
	users int          // running agents
	stop  chan struct{}
	done  chan struct{}
}

// startChild starts cmd and registers its pid as the agent's own, so the
// reaper never collects it: waitChild does.
func startChild(cmd *exec.Cmd) error {
	reaper.mu.Lock()
	defer reaper.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return err
	}
	if reaper.pids == nil {
		reaper.pids = map[int]bool{}
	}
	reaper.pids[cmd.Process.Pid] = true
	return nil
}

// waitChild waits for cmd (started by startChild) and forgets its pid.
func waitChild(cmd *exec.Cmd) error {
	err := cmd.Wait()
	reaper.mu.Lock()
	delete(reaper.pids, cmd.Process.Pid)
	reaper.mu.Unlock()
	return err
}

// startReaper makes the process a child subreaper and reaps orphans on every
// SIGCHLD until stop is called (by the last agent, if several run).
func startReaper(log *slog.Logger) (stop func()) {
	reaper.mu.Lock()
	defer reaper.mu.Unlock()
	reaper.users++
	if reaper.users == 1 {
		_, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0)
		if errno != 0 && os.Getpid() != 1 {
			log.Warn("cannot become a child subreaper: orphaned processes of jobs go to init", "err", errno.Error())
		}
		reaper.stop, reaper.done = make(chan struct{}), make(chan struct{})
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGCHLD)
		go reapLoop(log, sig, reaper.stop, reaper.done)
		log.Info("reaping orphaned processes", "pid", os.Getpid(), "subreaper", errno == 0)
	}
	var once sync.Once
	return func() { once.Do(releaseReaper) }
}

// releaseReaper is one agent's stop: the last one ends the loop (after a
// final sweep) and gives up the subreaper role.
func releaseReaper() {
	reaper.mu.Lock()
	reaper.users--
	if reaper.users > 0 {
		reaper.mu.Unlock()
		return
	}
	stop, done := reaper.stop, reaper.done
	close(stop)
	reaper.mu.Unlock()
	<-done // outside the lock: the loop takes it to sweep
	reaper.mu.Lock()
	if reaper.users == 0 { // no agent started meanwhile
		syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 0, 0)
	}
	reaper.mu.Unlock()
}

func reapLoop(log *slog.Logger, sig chan os.Signal, stop, done chan struct{}) {
	defer close(done)
	defer signal.Stop(sig)
	tick := time.NewTicker(reapInterval)
	defer tick.Stop()
	var last time.Time
	var spaced <-chan time.Time // a sweep put off by reapSpacing
	for {
		select {
		case <-stop:
			reapOrphans(log)
			return
		case <-sig: // signals coalesce: a sweep takes every zombie there is
			if wait := reapSpacing - time.Since(last); wait > 0 {
				if spaced == nil {
					spaced = time.After(wait)
				}
				continue
			}
		case <-spaced:
			spaced = nil
		case <-tick.C:
		}
		reapOrphans(log)
		last = time.Now()
	}
}

// reapOrphans waits for every zombie child that nobody else will wait for,
// and returns how many it collected.
func reapOrphans(log *slog.Logger) int {
	zombies := zombieChildren(os.Getpid())
	if len(zombies) == 0 {
		return 0
	}
	reaper.mu.Lock()
	defer reaper.mu.Unlock()
	var owned map[int]bool // read only when needed: it lists every open fd
	n := 0
	for _, pid := range zombies {
		if reaper.pids[pid] {
			continue
		}
		if owned == nil {
			owned = pidfdTargets()
		}
		if owned[pid] {
			continue
		}
		var ws syscall.WaitStatus
		if got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil); err == nil && got == pid {
			n++
			log.Debug("reaped orphaned process", "pid", pid, "status", waitStatusString(ws))
		}
	}
	return n
}

func waitStatusString(ws syscall.WaitStatus) string {
	if ws.Signaled() {
		return "killed by " + ws.Signal().String()
	}
	return fmt.Sprintf("exit %d", ws.ExitStatus())
}

// zombieChildren lists pid's children that have exited and wait to be
// collected.
func zombieChildren(pid int) []int {
	var zombies []int
	for _, c := range childPids(pid) {
		if p, ok := readProcStat(c); ok && p.state == 'Z' && p.ppid == pid {
			zombies = append(zombies, c)
		}
	}
	return zombies
}

// childPids lists pid's children from /proc/PID/task/*/children (a child
// belongs to the thread that forked it, or that it was handed to), or, on a
// kernel without those files, by scanning every process's parent.
func childPids(pid int) []int {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, err := os.ReadDir(dir)
	var kids []int
	found := false
	for _, t := range tasks {
		data, err := os.ReadFile(dir + "/" + t.Name() + "/children")
		if err != nil {
			continue
		}
		found = true
		for _, f := range strings.Fields(string(data)) {
			if k, err := strconv.Atoi(f); err == nil {
				kids = append(kids, k)
			}
		}
	}
	if found || err != nil {
		return kids
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		k, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		if p, ok := readProcStat(k); ok && p.ppid == pid {
			kids = append(kids, k)
		}
	}
	return kids
}

// pidfdTargets lists the processes this process holds a pidfd for: those an
// os.Process will still Wait for. Without /proc it is empty, and the
// registry alone protects the agent's children.
func pidfdTargets() map[int]bool {
	m := map[int]bool{}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return m
	}
	for _, fd := range fds {
		if link, err := os.Readlink("/proc/self/fd/" + fd.Name()); err != nil || !strings.Contains(link, "pidfd") {
			continue
		}
		info, err := os.ReadFile("/proc/self/fdinfo/" + fd.Name())
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(line, "Pid:"); ok {
				if p, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && p > 0 {
					m[p] = true
				}
			}
		}
	}
	return m
}

// sync_file_range flags (linux/fs.h).
const (
	syncFileRangeWaitBefore = 1
	syncFileRangeWrite      = 2
	syncFileRangeWaitAfter  = 4
)

// writeback starts the disk writing a large file while it is still being
// received, so the fsync at its end is short and dirty pages stay bounded:
// every kickEvery bytes the range just written is queued for writeback
// (without waiting), and the range waitBehind bytes back is waited for.
// This is the streaming-write pattern Linux's own authors recommend; the
// final fsync remains what makes the file durable.
type writeback struct {
	fd      uintptr
	start   int64 // where the current unkicked range begins
	off     int64 // bytes written so far, from the file's start
	waited  int64 // everything before this is on disk
	disable bool  // the filesystem does not support it
}

const (
	kickEvery  = 8 << 20
	waitBehind = 64 << 20
)

func newWriteback(f *os.File, off int64) *writeback {
	return &writeback{fd: f.Fd(), start: off, off: off, waited: off}
}

// advance records n more bytes written.
func (w *writeback) advance(n int) {
	w.off += int64(n)
	if w.disable || w.off-w.start < kickEvery {
		return
	}
	if !w.syncRange(w.start, w.off-w.start, syncFileRangeWrite) {
		return
	}
	w.start = w.off
	if behind := w.off - waitBehind; behind > w.waited {
		w.syncRange(w.waited, behind-w.waited, syncFileRangeWaitBefore|syncFileRangeWrite|syncFileRangeWaitAfter)
		w.waited = behind
	}
}

func (w *writeback) syncRange(off, n int64, flags int) bool {
	_, _, e := syscall.Syscall6(syscall.SYS_SYNC_FILE_RANGE, w.fd, uintptr(off), uintptr(n), uintptr(flags), 0, 0)
	if e != 0 {
		w.disable = true // e.g. ESPIPE, EINVAL on some filesystems: the final fsync does it all
		return false
	}
	return true
}

// fileVersion identifies a version of a file for the hash cache: device,
// inode, size, mtime and ctime. ctime cannot be set by a user, so a file
// written in place always gets a new stamp.
func fileVersion(fi os.FileInfo) fileID {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}
	}
	return fileID{uint64(st.Dev), st.Ino, fi.Size(), fi.ModTime().UnixNano(), st.Ctim.Nano()}
}

// cgroupSupport: Linux has cgroups.
func cgroupSupport() error { return nil }

// cgroupV2Support checks that a process can be started inside a v2
// cgroup: clone3 with CLONE_INTO_CGROUP, from Linux 5.7.
func cgroupV2Support() error {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return fmt.Errorf("cannot tell the kernel's version: %v", err)
	}
	rel := strings.TrimSpace(string(b))
	var major, minor int
	fmt.Sscanf(rel, "%d.%d", &major, &minor)
	if major < 5 || (major == 5 && minor < 7) {
		return fmt.Errorf("Linux %s cannot start a process inside a cgroup (clone3 CLONE_INTO_CGROUP needs 5.7)", rel)
	}
	return nil
}

// startInCgroup starts cmd inside g, so that it runs nothing outside it.
// On v2 the kernel does it: clone3 with CLONE_INTO_CGROUP (Go's
// SysProcAttr.UseCgroupFD). v1 has no such call, but a v1 cgroup holds
// threads, and a child starts in the cgroups of the thread that forked it:
// so the fork is made from a thread of the agent's parked in g, ahead of
// time for a spare (jobs_cgroup_pool.go), else now. An error means nothing
// runs.
func startInCgroup(cmd *exec.Cmd, g *cgroup) error {
	if g.host.v2 != "" {
		f, err := os.Open(g.dirs[0])
		if err != nil {
			return err
		}
		defer f.Close()
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(f.Fd())
		return startChild(cmd)
	}
	if g.thread == nil {
		if err := parkThread(g); err != nil {
			return err
		}
	}
	g.thread.fork <- cmd
	r := <-g.thread.done
	if r.limit != nil {
		g.signal(true, nil)
		waitChild(cmd)
		return fmt.Errorf("failed to set the job's process limit: %v", r.limit)
	}
	return r.err
}

// parkThread moves a thread of the agent's into g's v1 cgroups, where it
// waits for the one process it is to fork (or to be told to end).
func parkThread(g *cgroup) error {
	t := &parkedThread{fork: make(chan *exec.Cmd), done: make(chan forkResult, 1), quit: make(chan struct{}), gone: make(chan struct{})}
	ready := make(chan error, 1)
	go t.run(g, ready)
	if err := <-ready; err != nil {
		<-t.gone
		return err
	}
	g.thread = t
	return nil
}

// run is the parked thread's goroutine. It locks itself to its thread for
// good, so the thread ends with it: that takes it out of g without another
// move (and its wait), and no other goroutine ever runs there. The Go
// runtime never clones a thread from a locked one (it asks its template
// thread), so no other agent thread lands in g. Go never ends the main
// thread (it would stay in g for ever), and in a job's memory cgroup that
// thread would stand for the whole agent in an out-of-memory kill: if run
// finds itself there, it holds that thread while another one parks.
func (t *parkedThread) run(g *cgroup, ready chan<- error) {
	runtime.LockOSThread()
	if syscall.Gettid() == os.Getpid() {
		inner := make(chan struct{})
		go func() { t.run(g, ready); close(inner) }()
		<-inner
		runtime.UnlockOSThread()
		return
	}
	defer close(t.gone)
	err := moveThread(g.dirs, []byte(strconv.Itoa(syscall.Gettid())))
	ready <- err
	if err != nil {
		return
	}
	select {
	case cmd := <-t.fork:
		var r forkResult
		if r.err = startChild(cmd); r.err == nil && g.maxProcs > 0 {
			r.limit = g.setProcs(g.maxProcs) // the job's own limit, now this thread leaves
		}
		t.done <- r
	case <-t.quit:
	}
}

// moveThread moves thread tid into each of the v1 cgroups dirs.
func moveThread(dirs []string, tid []byte) error {
	for _, d := range dirs {
		if err := os.WriteFile(d+"/tasks", tid, 0); err != nil {
			return fmt.Errorf("failed to move a thread into cgroup %q: %v", d, err)
		}
	}
	return nil
}

const (
	rlimitNproc  = 6 // RLIMIT_NPROC on x86 and arm (asm-generic/resource.h)
	nprocReserve = 128
)

// procLimitNote says what caps a job's processes without cgroups:
// RLIMIT_NPROC, set by limitProcs; "" where it cannot: the kernel never
// holds root to it.
func procLimitNote(maxProcs int) string {
	if maxProcs <= 0 || os.Getuid() == 0 {
		return ""
	}
	return fmt.Sprintf("RLIMIT_NPROC of uid %d", os.Getuid())
}

// limitProcs caps the processes job process pid and its descendants may
// make, without cgroups. RLIMIT_NPROC counts every process and thread of
// the real uid, the agent's own included, and the kernel checks it against
// the limit of the process that forks. So the job gets what its uid runs
// now plus maxProcs, and never more than the agent's own limit less a
// reserve: however a job floods, its forks fail while the agent can still
// make threads, and floods of several jobs at once do not add up. Hard and
// soft are set, so the job cannot raise it again. The limit lands as soon
// as the process has started (prlimit), microseconds after its exec and
// before its shell has read the script.
func limitProcs(pid, maxProcs int) {
	if procLimitNote(maxProcs) == "" {
		return
	}
	limit := uint64(userTasks(os.Getuid()) + maxProcs)
	var own syscall.Rlimit
	if syscall.Getrlimit(rlimitNproc, &own) == nil && own.Cur != ^uint64(0) && own.Cur > nprocReserve {
		limit = min(limit, own.Cur-nprocReserve)
	}
	lim := syscall.Rlimit{Cur: limit, Max: limit}
	syscall.RawSyscall6(syscall.SYS_PRLIMIT64, uintptr(pid), rlimitNproc, uintptr(unsafe.Pointer(&lim)), 0, 0, 0)
}

// userTasks counts the processes and threads whose real uid is uid.
func userTasks(uid int) int {
	ents, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue // self, thread-self and the rest
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err != nil {
			continue
		}
		var real, threads int
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "Uid:"); ok {
				fmt.Sscan(v, &real)
			} else if v, ok := strings.CutPrefix(line, "Threads:"); ok {
				fmt.Sscan(v, &threads)
			}
		}
		if real == uid {
			n += threads
		}
	}
	return n
}

// Creating an extracted file with bare syscalls. An *os.File costs five
// more syscalls per file on Linux (the poller tries, and fails, to register
// a regular file), which for a package of many small files is a measurable
// part of a deploy.

// dirHandle is an open folder of the release, opened through the os.Root,
// that files are created in by a single-component name.
type dirHandle struct {
	f  *os.File
	fd int
}

func openDirHandle(root *os.Root, dir string) (*dirHandle, error) {
	if dir == "" {
		dir = "."
	}
	f, err := root.Open(dir)
	if err != nil {
		return nil, err
	}
	return &dirHandle{f: f, fd: int(f.Fd())}, nil
}

func (d *dirHandle) close() error { return d.f.Close() }

// create makes base, which must not exist and is never followed if it is a
// symlink, and returns it open for writing.
func (d *dirHandle) create(base string, mode fs.FileMode) (fileWriter, error) {
	for {
		fd, err := syscall.Openat(d.fd, base, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, uint32(mode))
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "create", Path: base, Err: err}
		}
		return rawFile(fd), nil
	}
}

// rawFile is a file descriptor written with bare syscalls.
type rawFile int

func (f rawFile) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := syscall.Write(int(f), p[n:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return n, &fs.PathError{Op: "write", Path: "", Err: err}
		}
		n += m
	}
	return n, nil
}

func (f rawFile) Seek(off int64, whence int) (int64, error) {
	n, err := syscall.Seek(int(f), off, whence)
	if err != nil {
		return n, &fs.PathError{Op: "seek", Path: "", Err: err}
	}
	return n, nil
}

func (f rawFile) Truncate(size int64) error {
	if err := syscall.Ftruncate(int(f), size); err != nil {
		return &fs.PathError{Op: "truncate", Path: "", Err: err}
	}
	return nil
}

func (f rawFile) Close() error {
	if err := syscall.Close(int(f)); err != nil {
		return &fs.PathError{Op: "close", Path: "", Err: err}
	}
	return nil
}

// One syncfs for a whole release instead of an fsync per file, which
// would make a package of many small files several times slower to deploy
// than tar.

// sysSyncfs is syncfs(2)'s number; the syscall package lacks it on amd64.
var sysSyncfs = map[string]uintptr{"amd64": 306, "386": 344, "arm64": 267, "arm": 373, "riscv64": 267, "loong64": 267, "ppc64le": 348, "s390x": 338}[runtime.GOARCH]

// syncTree makes everything written under dir durable.
func syncTree(dir string) error {
	if sysSyncfs == 0 {
		return syncTreeWalk(dir)
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if _, _, e := syscall.Syscall(sysSyncfs, d.Fd(), 0, 0); e != 0 {
		return syncTreeWalk(dir)
	}
	return nil
}
