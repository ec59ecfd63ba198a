package main

// trust_modes.go: StrictModes as OpenSSH means it. The trust list and the
// private key are used only if they, and every folder above them up to the
// root, are owned by the agent's user or root and not writable by group or
// others (the key not even readable). Each is checked on the descriptor the
// walk opened (transfer_paths.go), never by a second look-up of its path,
// so nothing can be swapped between the check and the read; links on the
// way are followed by the walk, and must be owned by the agent's user or
// root too. At start the home and the folders the agent keeps in it are
// checked the same way (checkHome).
//
// Two kinds of folder that others can write are accepted on the way, as
// neither lets them swap what lies below:
//   - root-owned with the sticky bit (/tmp, a Kubernetes ConfigMap's mount
//     point): others may not rename or remove what they do not own, and a
//     file or link they add is refused by the owner check;
//   - on a read-only file system (Kubernetes mounts ConfigMaps and Secrets
//     read-only, with folders 0777 on some distributions).
// OpenSSH refuses the first for ~/.ssh; so does the agent for the folder
// that holds the file itself, and for the home and the folders in it.
//
// Windows has ACLs rather than owners and mode bits: there these checks are
// left to the operator.

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// modeError is a StrictModes refusal: what is wrong, and the command that
// fixes it.
type modeError struct{ problem, fix string }

func (e *modeError) Error() string { return e.problem + ": fix it with \"" + e.fix + "\"" }

// octalMode writes a mode's permission bits as ls -l's octal would,
// sticky, setgid and setuid included.
func octalMode(m fs.FileMode) string {
	p := uint32(m.Perm())
	for _, b := range []struct {
		mode fs.FileMode
		bit  uint32
	}{{fs.ModeSticky, 0o1000}, {fs.ModeSetgid, 0o2000}, {fs.ModeSetuid, 0o4000}} {
		if m&b.mode != 0 {
			p |= b.bit
		}
	}
	return fmt.Sprintf("%04o", p)
}

// checkOwner refuses what is owned by neither this user nor root.
func checkOwner(fi os.FileInfo, what, path string) error {
	uid, ok := fileOwner(fi)
	me := os.Geteuid()
	if !ok || uid == me || uid == 0 {
		return nil
	}
	return &modeError{fmt.Sprintf("%s is owned by uid %d, neither this user (uid %d) nor root", what, uid, me), fmt.Sprintf("chown %d %s", me, path)}
}

// checkFolder checks a folder of a walk: owned by this user or root, and
// not writable by group or others, unless it is on a read-only file system
// or (when sticky is allowed) a root-owned sticky folder like /tmp.
func checkFolder(d *walkDir, of string, sticky bool) error {
	p := d.path("")
	what := fmt.Sprintf("folder %q (on the way to %s)", p, of)
	if err := checkOwner(d.fi, what, p); err != nil {
		return err
	}
	m := d.fi.Mode()
	if m.Perm()&0o022 == 0 {
		return nil
	}
	if uid, _ := fileOwner(d.fi); sticky && uid == 0 && m&fs.ModeSticky != 0 || readOnlyDir(d) {
		return nil
	}
	return &modeError{fmt.Sprintf("%s is writable by group or others (mode %s)", what, octalMode(m)), "chmod go-w " + p}
}

// readOnlyDir reports whether the open folder d is on a read-only file
// system.
func readOnlyDir(d *walkDir) bool {
	f, err := d.root.Open(".")
	if err != nil {
		return false
	}
	defer f.Close()
	return onReadOnlyFS(f)
}

// strictWalk is a walk from the root whose every folder and link passes
// StrictModes; of names what it leads to, for messages.
func strictWalk(of string) *pathWalk {
	return &pathWalk{
		enter: func(_ *walkDir, _ string, d *walkDir) error { return checkFolder(d, of, true) },
		link: func(dir *walkDir, name string, fi os.FileInfo) error {
			p := dir.path(name)
			return checkOwner(fi, fmt.Sprintf("link %q (on the way to %s)", p, of), p)
		},
	}
}

// openStrict opens the file at path for reading as StrictModes means it (see
// the file comment); what names it in messages ("trust list \"…\""), and a
// private file (a key) may not even be readable by group or others. A
// missing file is fs.ErrNotExist.
func openStrict(path, what string, private bool) (*os.File, error) {
	if isWindows {
		return os.Open(path)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	w := strictWalk(what)
	defer w.close()
	dir, name, fi, err := w.resolve(string(filepath.Separator), abs)
	switch {
	case err != nil:
		return nil, err
	case name == "":
		return nil, fmt.Errorf("%s is a folder, not a file", what)
	case fi == nil:
		return nil, &fs.PathError{Op: "open", Path: path, Err: fs.ErrNotExist}
	}
	if err := checkFolder(dir, what, false); err != nil {
		return nil, err
	}
	f, st, err := openFileIn(dir, name, fi)
	if err != nil {
		return nil, err
	}
	if real := dir.path(name); real != abs { // a link: the file it leads to is the one to fix
		what, path = fmt.Sprintf("%s (the file %q it links to)", what, real), real
	}
	if err = checkOwner(st, what, path); err == nil {
		switch perm := st.Mode().Perm(); {
		case private && perm&0o077 != 0:
			err = &modeError{fmt.Sprintf("%s is accessible by group or others (mode %04o)", what, perm), "chmod 600 " + path}
		case !private && perm&0o022 != 0:
			err = &modeError{fmt.Sprintf("%s is writable by group or others (mode %04o)", what, perm), "chmod go-w " + path}
		}
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// readStrict reads a small file opened by openStrict.
func readStrict(path, what string, private bool) ([]byte, error) {
	f, err := openStrict(path, what, private)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, maxTrustFile))
}
