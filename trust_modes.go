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
// Some folders others can write are accepted, as none lets them swap what
// lies in them:
//   - root-owned with the sticky bit (/tmp, a Kubernetes ConfigMap's or
//     memory volume's mount point): others may not rename or remove what
//     they do not own, and a file or link they add is refused by the owner
//     check;
//   - on a read-only file system (Kubernetes mounts ConfigMaps and Secrets
//     read-only, with folders 0777 on some distributions);
//   - writable by a group that is this user's own, with no other member
//     (Debian's OpenSSH rule for user-private groups; a Kubernetes volume
//     under fsGroup is one).
// OpenSSH refuses the first for ~/.ssh; the agent refuses it, and repairs
// or refuses any write by others, for its home and the folders in it
// (checkHome).
//
// Windows has ACLs rather than owners and mode bits: there these checks are
// left to the operator.

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
	uid, _, ok := fileOwner(fi)
	me := os.Geteuid()
	if !ok || uid == me || uid == 0 {
		return nil
	}
	return &modeError{fmt.Sprintf("%s is owned by uid %d, neither this user (uid %d) nor root", what, uid, me), fmt.Sprintf("chown %d %s", me, path)}
}

// othersCanWrite reports whether anyone but this user (and root) can write
// the folder fi: group write counts unless the group is this user's own.
func othersCanWrite(fi os.FileInfo) bool {
	m := fi.Mode().Perm()
	_, gid, _ := fileOwner(fi)
	return m&0o002 != 0 || m&0o020 != 0 && !privateGroup(gid)
}

// checkFolder checks a folder of a walk: owned by this user or root, and
// writable by nobody else, unless it is a root-owned sticky folder like
// /tmp or on a read-only file system.
func checkFolder(d *walkDir, of string) error {
	p := d.path("")
	what := fmt.Sprintf("folder %q (on the way to %s)", p, of)
	if err := checkOwner(d.fi, what, p); err != nil {
		return err
	}
	if !othersCanWrite(d.fi) {
		return nil
	}
	if uid, _, _ := fileOwner(d.fi); uid == 0 && d.fi.Mode()&fs.ModeSticky != 0 || readOnlyDir(d) {
		return nil
	}
	return &modeError{fmt.Sprintf("%s is writable by group or others (mode %s)", what, octalMode(d.fi.Mode())), "chmod go-w " + p}
}

// privateGroup reports whether gid is this user's own group with no other
// member: this user's effective group, named in no one else's /etc/passwd
// entry nor in /etc/group beside this user. Unreadable files mean no.
func privateGroup(gid int) bool {
	if gid != os.Getegid() {
		return false
	}
	passwd, err1 := os.ReadFile("/etc/passwd")
	group, err2 := os.ReadFile("/etc/group")
	if err2 != nil && errors.Is(err2, fs.ErrNotExist) {
		group, err2 = nil, nil // no supplementary groups on this system
	}
	return err1 == nil && err2 == nil && soleMember(passwd, group, os.Geteuid(), gid)
}

// soleMember reports whether, by the passwd and group files given, uid is
// the only user in group gid.
func soleMember(passwd, group []byte, uid, gid int) bool {
	name := ""
	for line := range strings.Lines(string(passwd)) {
		f := strings.Split(strings.TrimSpace(line), ":")
		if len(f) < 4 {
			continue
		}
		u, err1 := strconv.Atoi(f[2])
		g, err2 := strconv.Atoi(f[3])
		switch {
		case err1 != nil || err2 != nil:
			continue
		case u == uid:
			name = f[0]
		case g == gid:
			return false // another user's primary group
		}
	}
	for line := range strings.Lines(string(group)) {
		f := strings.Split(strings.TrimSpace(line), ":")
		if len(f) < 4 || f[2] != strconv.Itoa(gid) {
			continue
		}
		for m := range strings.SplitSeq(f[3], ",") {
			if m != "" && m != name {
				return false
			}
		}
	}
	return true
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
		enter: func(_ *walkDir, _ string, d *walkDir) error { return checkFolder(d, of) },
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
