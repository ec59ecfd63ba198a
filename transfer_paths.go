package main

// transfer_paths.go: how a path a client names becomes a file the agent
// opens (PROTOCOL §5 "Files"), and what file.* may never reach.
//
// A path is walked one real folder at a time (pathWalk): each folder is
// opened from its parent's descriptor (os.Root), checked by device and
// inode, and only then is the next name looked up in it; a symbolic link
// is read and its target walked the same way, never left to the kernel to
// follow. So what the checks saw is what is opened, whatever another
// process renames or links meanwhile, and neither ".." nor a link leads
// anywhere the walk has not checked. The same walk serves StrictModes
// (trust_modes.go), which checks each folder's owner and mode instead.
//
// The agent's own state is off-limits to file.*, whatever a client's
// allow= (fileGuard): in its home only files/ and apps/<app>/shared/ are
// reachable, and its key, certificate and trust list nowhere, by name or by
// inode (a hard link, a bind mount). A trust entry's files= confines a
// client further, to folders opened as roots that ".." and links cannot
// leave.

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

const (
	maxPathBytes    = 4096 // PATH_MAX on Linux
	maxPathElements = 256  // deeper than any real tree; bounds the walk's work
	maxLinkHops     = 40   // Linux's MAXSYMLINKS
)

// walkDir is one open folder of a walk.
type walkDir struct {
	root *os.Root
	fi   os.FileInfo // of the folder itself, from its descriptor
	zone zone        // where it lies for fileGuard
}

// path is the folder's path as the walk reached it: no link in it.
func (d *walkDir) path(name string) string {
	if name == "" {
		return d.root.Name()
	}
	return filepath.Join(d.root.Name(), name)
}

// pathWalk resolves a path from a bottom folder, one real folder at a time.
type pathWalk struct {
	dirs   []*walkDir // from the bottom to the folder the walk is in
	opened []*os.Root // every folder opened, closed by close

	// confined, when set, is the files= folder the bottom was opened from:
	// ".." above it, and absolute links outside it, are refused.
	confined string
	// enter checks a folder before the walk goes into it (parent is nil for
	// the bottom) and sets its zone; an error stops the walk.
	enter func(parent *walkDir, name string, d *walkDir) error
	// link checks a symbolic link before it is followed.
	link func(dir *walkDir, name string, fi os.FileInfo) error
	// mkdir, when set, makes a missing folder on the way.
	mkdir func(parent *walkDir, name string) error
}

func (w *pathWalk) close() {
	for _, r := range w.opened {
		r.Close()
	}
}

// splitPath is a path's names, without its volume and separators.
func splitPath(p string) []string {
	return strings.FieldsFunc(p[len(filepath.VolumeName(p)):], func(r rune) bool { return os.IsPathSeparator(uint8(r)) })
}

// open opens a folder from its parent (nil: name is an absolute path) and
// checks that it is the folder fi describes, so a rename or link in between
// is noticed rather than followed.
func (w *pathWalk) open(parent *walkDir, name string, fi os.FileInfo) (*walkDir, error) {
	var r *os.Root
	var err error
	if parent == nil {
		r, err = os.OpenRoot(name)
	} else {
		r, err = parent.root.OpenRoot(name)
	}
	if err != nil {
		return nil, walkError("open", parent, name, err)
	}
	w.opened = append(w.opened, r)
	st, err := r.Stat(".")
	if err != nil {
		return nil, walkError("stat", parent, name, err)
	}
	if fi != nil && !os.SameFile(st, fi) {
		return nil, errorf(kindConflict, "%q changed while it was being opened: try again", filepath.Join(parent.root.Name(), name))
	}
	d := &walkDir{root: r, fi: st}
	if err := w.enter(parent, name, d); err != nil {
		return nil, err
	}
	return d, nil
}

// walkError names the whole path in an error of the walk.
func walkError(op string, dir *walkDir, name string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	p := name
	if dir != nil {
		p = dir.path(name)
	}
	return &fs.PathError{Op: op, Path: p, Err: err}
}

// resolve walks rel from bottom (an absolute folder) and returns the
// folder that holds what rel names, open, with its name there and, when it
// exists, what it is (never a link: links are followed). A rel naming a
// folder itself returns that folder and name "". The walk's folders stay
// open until close.
func (w *pathWalk) resolve(bottom, rel string) (dir *walkDir, name string, fi os.FileInfo, err error) {
	b, err := w.open(nil, bottom, nil)
	if err != nil {
		return nil, "", nil, err
	}
	w.dirs = []*walkDir{b}
	pending := splitPath(rel)
	hops, steps := 0, 0
	for len(pending) > 0 {
		if steps++; steps > maxPathElements*4 {
			return nil, "", nil, errorf(kindInvalidParams, "path %q: its links lead through more than %d names", rel, maxPathElements*4)
		}
		name, pending = pending[0], pending[1:]
		cur := w.dirs[len(w.dirs)-1]
		switch name {
		case ".":
			continue
		case "..":
			if len(w.dirs) > 1 {
				w.dirs = w.dirs[:len(w.dirs)-1]
			} else if w.confined != "" {
				return nil, "", nil, errorf(kindForbidden, "path %q leaves %q, the folder this client may reach (files=)", rel, w.confined)
			}
			continue
		}
		fi, err := cur.root.Lstat(name)
		if errors.Is(err, fs.ErrNotExist) && len(pending) > 0 && w.mkdir != nil {
			if merr := w.mkdir(cur, name); merr != nil && !errors.Is(merr, fs.ErrExist) {
				if re := (*rpcError)(nil); errors.As(merr, &re) {
					return nil, "", nil, re
				}
				return nil, "", nil, walkError("mkdir", cur, name, merr)
			}
			fi, err = cur.root.Lstat(name)
		}
		switch {
		case errors.Is(err, fs.ErrNotExist) && len(pending) == 0:
			return cur, name, nil, nil
		case err != nil:
			return nil, "", nil, walkError("lstat", cur, name, err)
		case fi.Mode()&fs.ModeSymlink != 0:
			if hops++; hops > maxLinkHops {
				return nil, "", nil, errorf(kindInvalidParams, "path %q: more than %d symbolic links", rel, maxLinkHops)
			}
			if w.link != nil {
				if err := w.link(cur, name, fi); err != nil {
					return nil, "", nil, err
				}
			}
			target, err := cur.root.Readlink(name)
			if err != nil {
				return nil, "", nil, walkError("readlink", cur, name, err)
			}
			if filepath.IsAbs(target) {
				if target, err = w.restart(target); err != nil {
					return nil, "", nil, err
				}
			}
			pending = append(splitPath(target), pending...)
			continue
		case len(pending) == 0:
			return cur, name, fi, nil
		case !fi.IsDir():
			return nil, "", nil, walkError("open", cur, name, errors.New("not a folder"))
		}
		d, err := w.open(cur, name, fi)
		if err != nil {
			return nil, "", nil, err
		}
		w.dirs = append(w.dirs, d)
	}
	top := w.dirs[len(w.dirs)-1]
	return top, "", top.fi, nil
}

// restart goes back to the bottom for an absolute link target and returns
// what is left to walk from there: within a files= folder only when the
// target lies in it, the target relative to the folder; elsewhere the
// target itself, from its volume's root.
func (w *pathWalk) restart(target string) (string, error) {
	target = filepath.Clean(target)
	if w.confined != "" {
		rel, ok := within(w.confined, target)
		if !ok {
			return "", errorf(kindForbidden, "a link to %q leaves %q, the folder this client may reach (files=)", target, w.confined)
		}
		w.dirs = w.dirs[:1]
		return rel, nil
	}
	w.dirs = w.dirs[:1]
	if vol := filepath.VolumeName(target) + string(filepath.Separator); vol != w.dirs[0].root.Name() {
		b, err := w.open(nil, vol, nil)
		if err != nil {
			return "", err
		}
		w.dirs[0] = b
	}
	return target, nil
}

// within reports whether the clean absolute path p is dir or below it, and
// p relative to dir.
func within(dir, p string) (string, bool) {
	if p == dir {
		return ".", true
	}
	prefix := dir
	if !strings.HasSuffix(prefix, string(filepath.Separator)) {
		prefix += string(filepath.Separator)
	}
	if rest, ok := strings.CutPrefix(p, prefix); ok {
		return rest, true
	}
	return "", false
}

// zone is where a folder lies with respect to the agent's home.
type zone uint8

const (
	zoneFree zone = iota // outside the home, or in its files/ or apps/<app>/shared/
	zoneHome             // the home: only files/ and apps/ lead on
	zoneApps             // <home>/apps: only app folders lead on
	zoneApp              // <home>/apps/<app>: only shared/ leads on
)

// next is the zone of the folder name in a folder of zone z; false: it is
// the agent's own.
func (z zone) next(name string) (zone, bool) {
	switch z {
	case zoneHome:
		switch name {
		case "files":
			return zoneFree, true
		case "apps":
			return zoneApps, true
		}
		return 0, false
	case zoneApps:
		return zoneApp, true
	case zoneApp:
		return zoneFree, name == "shared"
	}
	return zoneFree, true
}

// fileGuard is what file.* may reach for one client. The agent's folders
// are looked at anew for every request (a few stats), so a folder made or
// replaced since start-up is still known.
//
// Why apps/ is closed but for each app's shared/: a release is what a
// deploy extracted from a package the audit log names by SHA-256, and
// rollback and retention count on it being whole, so only deploys write
// there; current and .releases.json are the deploy record. shared/ is what
// an app keeps across releases (its configuration, its logs): what a file
// client legitimately puts or fetches.
type fileGuard struct {
	home, apps place
	sealed     []place  // work/, packages/, uploads/: nothing in them is reachable
	secrets    []string // key, certificate, trust list: wherever they are
	roots      []string // the client's files= folders; none: the whole file system
}

// place is one of the agent's folders, known by inode and by path: the
// path catches what the inode cannot where a file system reports no
// inodes (Windows), the inode what the path cannot (a bind mount).
type place struct {
	path string
	fi   os.FileInfo
}

func newPlace(path string) place {
	fi, _ := os.Stat(path)
	return place{path: filepath.Clean(path), fi: fi}
}

// holds reports whether the open folder d is p.
func (p place) holds(d *walkDir) bool {
	return p.fi != nil && os.SameFile(d.fi, p.fi) || samePath(d.root.Name(), p.path)
}

// samePath compares clean paths as the file system does: without regard
// to case on Windows.
func samePath(a, b string) bool {
	if isWindows {
		return strings.EqualFold(a, b)
	}
	return a == b
}

func newFileGuard(cfg *config, e *trustEntry) *fileGuard {
	g := &fileGuard{home: newPlace(cfg.Home), apps: newPlace(cfg.appsDir()), secrets: []string{cfg.keyPath(), cfg.certPath(), cfg.trustPath()}}
	if e != nil {
		g.roots = e.Files
	}
	for _, d := range []string{cfg.workDir(), cfg.packagesDir(), cfg.uploadsDir()} {
		g.sealed = append(g.sealed, newPlace(d))
	}
	return g
}

// ownState is the error for a path in the agent's own state.
func (g *fileGuard) ownState(p string) error {
	return errorf(kindForbidden, "%q is the agent's own state, which file.* never reaches: in its home %q only files/ and apps/<app>/shared/ are open to clients", p, g.home.path)
}

// enter places a folder: the home and its apps/ by inode (wherever they
// appear, a bind mount included), their children by name.
func (g *fileGuard) enter(parent *walkDir, name string, d *walkDir) error {
	for _, s := range g.sealed {
		if s.holds(d) {
			return g.ownState(d.path(""))
		}
	}
	switch {
	case g.home.holds(d):
		d.zone = zoneHome
	case g.apps.holds(d):
		d.zone = zoneApps
	case parent == nil:
		z, ok := g.zoneOf(d.root.Name())
		if !ok {
			return g.ownState(d.path(""))
		}
		d.zone = z
	default:
		z, ok := parent.zone.next(name)
		if !ok {
			return g.ownState(d.path(""))
		}
		d.zone = z
	}
	return nil
}

// zoneOf places a walk's bottom folder (a files= folder may lie inside the
// home) by its real path.
func (g *fileGuard) zoneOf(dir string) (zone, bool) {
	if dir == filepath.VolumeName(dir)+string(filepath.Separator) {
		return zoneFree, true // a volume's root: the home, were it that, is known by inode
	}
	home, err1 := filepath.EvalSymlinks(g.home.path)
	real, err2 := filepath.EvalSymlinks(dir)
	if err1 != nil || err2 != nil {
		return zoneFree, true
	}
	rel, ok := within(home, real)
	if !ok {
		return zoneFree, true
	}
	z := zoneHome
	for _, n := range splitPath(rel) {
		if n == "." {
			continue
		}
		if z, ok = z.next(n); !ok {
			return 0, false
		}
	}
	return z, true
}

// mkdir makes a missing folder on an upload's way, where clients may.
func (g *fileGuard) mkdir(parent *walkDir, name string) error {
	if parent.zone != zoneFree && !(parent.zone == zoneHome && name == "files") {
		return g.ownState(parent.path(name))
	}
	return parent.root.Mkdir(name, 0o755)
}

// final checks the file a path names: it lies where clients may reach and
// is not the key, certificate or trust list, by name in its folder or by
// inode.
func (g *fileGuard) final(dir *walkDir, name string, fi os.FileInfo) error {
	if dir.zone != zoneFree {
		return g.ownState(dir.path(name))
	}
	for _, s := range g.secrets {
		if name == filepath.Base(s) && newPlace(filepath.Dir(s)).holds(dir) {
			return g.ownState(dir.path(name))
		}
		if fi != nil {
			if sfi, err := os.Stat(s); err == nil && os.SameFile(sfi, fi) {
				return errorf(kindForbidden, "%q is the agent's %q, which file.* never reaches", dir.path(name), s)
			}
		}
	}
	return nil
}

// checkPathShape refuses, before any file system call, a path too long or
// too deep to be real: the walk's cost grows with it.
func checkPathShape(p string) error {
	switch {
	case p == "":
		return errorf(kindInvalidParams, "path must not be empty")
	case len(p) > maxPathBytes:
		return errorf(kindInvalidParams, "path is %d bytes long: at most %d (PATH_MAX)", len(p), maxPathBytes)
	case strings.ContainsRune(p, 0):
		return errorf(kindInvalidParams, "path must not contain a NUL byte")
	}
	n := 0
	for i := range len(p) {
		if os.IsPathSeparator(p[i]) {
			if n++; n >= maxPathElements {
				return errorf(kindInvalidParams, "path has more than %d elements", maxPathElements)
			}
		}
	}
	return nil
}

// locate resolves a client's absolute path for file.*: the folder that
// holds it, open, its name there ("" when the path names a folder) and,
// when it exists, what it is. create makes missing folders on the way
// (file.upload). The caller closes the walk.
func (g *fileGuard) locate(path string, create bool) (w *pathWalk, dir *walkDir, name string, fi os.FileInfo, err error) {
	bottom, rel := filepath.VolumeName(path)+string(filepath.Separator), path
	w = &pathWalk{enter: g.enter}
	if len(g.roots) > 0 {
		best := ""
		for _, r := range g.roots {
			if _, ok := within(r, path); ok && len(r) > len(best) {
				best = r
			}
		}
		if best == "" {
			return w, nil, "", nil, errorf(kindForbidden, "%q is outside the folders this client may reach (files=%s)", path, strings.Join(g.roots, ","))
		}
		bottom, w.confined = best, best
		rel, _ = within(best, path)
	}
	if create {
		w.mkdir = g.mkdir
	}
	dir, name, fi, err = w.resolve(bottom, rel)
	switch {
	case err != nil:
	case fi != nil && fi.IsDir() && name != "":
		if _, ok := dir.zone.next(name); !ok { // a folder: the caller refuses it, unless it is the agent's
			err = g.ownState(dir.path(name))
		}
	case name != "":
		err = g.final(dir, name, fi)
	}
	if err == nil && name == "" && dir.zone != zoneFree {
		err = g.ownState(dir.path(""))
	}
	return w, dir, name, fi, err
}

// openFileIn opens the existing file name of dir for reading without
// blocking (a FIFO or a device is refused before it is opened) and checks
// that what was opened is the file fi described.
func openFileIn(dir *walkDir, name string, fi os.FileInfo) (*os.File, os.FileInfo, error) {
	if !fi.Mode().IsRegular() {
		return nil, nil, errorf(kindNotFound, "%q is not a regular file: it is %s", dir.path(name), fileKind(fi))
	}
	f, err := dir.root.OpenFile(name, os.O_RDONLY|openNonblock, 0)
	if err != nil {
		return nil, nil, walkError("open", dir, name, err)
	}
	st, err := f.Stat()
	if err == nil && !os.SameFile(st, fi) {
		err = errorf(kindConflict, "%q changed while it was being opened: try again", dir.path(name))
	}
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, st, nil
}

// fileKind names what a non-regular file is, for messages.
func fileKind(fi os.FileInfo) string {
	switch m := fi.Mode(); {
	case m.IsDir():
		return "a folder"
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	}
	return "not a plain file"
}
