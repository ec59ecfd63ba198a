package main

// trust_modes_test.go: StrictModes with a second local user. The tests
// chown to uid otherUID, which needs no user entry, and need root to do it;
// t.TempDir's cleanup removes what that uid owns.

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// otherUID stands for another local user: nobody on the machine has it.
const otherUID = 4242

// needChown skips a test that must give files to another user.
func needChown(t *testing.T) {
	t.Helper()
	if isWindows || os.Geteuid() != 0 {
		t.Skip("needs root to give files to another uid (and Unix owners)")
	}
}

func chown(t *testing.T, path string, uid int) {
	t.Helper()
	if err := os.Lchown(path, uid, -1); err != nil {
		t.Fatal(err)
	}
}

func chmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// TestStrictModesTrustFile: a trust list, or a folder or link on its way,
// that another user owns or can write trusts nobody, and the problem names
// the component and the fix; root-owned sticky folders above it (/tmp, a
// ConfigMap's mount) and read-only file systems are accepted.
func TestStrictModesTrustFile(t *testing.T) {
	needChown(t)
	good := newTestIdentity(t).thumbprint
	line := []byte(good + " someone\n")
	me := strconv.Itoa(os.Geteuid())
	for _, tt := range []struct {
		name  string
		setup func(t *testing.T, top, home, trust string) (offender string)
		want  string // in the problem; "" means trusted
	}{
		{"as the agent makes it", func(t *testing.T, top, home, trust string) string { return "" }, ""},
		{"owned by another user", func(t *testing.T, top, home, trust string) string {
			chown(t, trust, otherUID)
			return trust
		}, "is owned by uid 4242"},
		{"a link to a file another user owns", func(t *testing.T, top, home, trust string) string {
			theirs := filepath.Join(top, "theirs")
			writeFile(t, theirs, line)
			chown(t, theirs, otherUID)
			os.Remove(trust)
			mkLink(t, theirs, trust)
			return theirs
		}, "is owned by uid 4242"},
		{"a link another user owns", func(t *testing.T, top, home, trust string) string {
			real := filepath.Join(home, "real")
			writeFile(t, real, line)
			os.Remove(trust)
			mkLink(t, "real", trust)
			chown(t, trust, otherUID)
			return trust
		}, "link"},
		{"home writable by others", func(t *testing.T, top, home, trust string) string {
			chmod(t, home, 0o777)
			return home
		}, "writable by group or others (mode 0777)"},
		{"the folder holding it root-owned with the sticky bit, like a memory volume", func(t *testing.T, top, home, trust string) string {
			chmod(t, home, os.ModeSticky|0o777)
			return ""
		}, ""},
		{"the folder holding it writable by another group", func(t *testing.T, top, home, trust string) string {
			os.Lchown(home, -1, otherUID)
			chmod(t, home, 0o770)
			return home
		}, "writable by group or others (mode 0770)"},
		{"a folder above the home owned by another user", func(t *testing.T, top, home, trust string) string {
			chown(t, top, otherUID)
			return top
		}, "is owned by uid 4242"},
		{"a folder above the home writable by its group", func(t *testing.T, top, home, trust string) string {
			os.Lchown(top, -1, otherUID)
			chmod(t, top, 0o775)
			return top
		}, "writable by group or others (mode 0775)"},
		{"a folder above the home writable by this user's own group, under fsGroup", func(t *testing.T, top, home, trust string) string {
			if !privateGroup(os.Getegid()) {
				t.Skipf("gid %d has other members here", os.Getegid())
			}
			chmod(t, top, os.ModeSetgid|0o775)
			return ""
		}, ""},
		{"a root-owned sticky folder above the home, like /tmp", func(t *testing.T, top, home, trust string) string {
			chmod(t, top, os.ModeSticky|0o777)
			return ""
		}, ""},
		{"a sticky folder above the home that another user owns", func(t *testing.T, top, home, trust string) string {
			chmod(t, top, os.ModeSticky|0o777)
			chown(t, top, otherUID)
			return top
		}, "is owned by uid 4242"},
		{"a ConfigMap: sticky mount point, ..data links, 0755 data folder", func(t *testing.T, top, home, trust string) string {
			cm := filepath.Join(top, "cm")
			data := filepath.Join(cm, "..2026_01_01")
			writeFile(t, filepath.Join(data, "trusted_servers"), line)
			chmod(t, cm, os.ModeSticky|0o777)
			mkLink(t, filepath.Base(data), filepath.Join(cm, "..data"))
			os.Remove(trust)
			mkLink(t, filepath.Join(cm, "trusted_servers"), trust)
			mkLink(t, filepath.Join("..data", "trusted_servers"), filepath.Join(cm, "trusted_servers"))
			return ""
		}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			top := filepath.Join(t.TempDir(), "top")
			home := filepath.Join(top, "home")
			trust := homeTrustPath(home)
			writeFile(t, trust, line)
			chmod(t, top, 0o755)
			chmod(t, home, 0o700)
			offender := tt.setup(t, top, home, trust)
			l := &trustList{}
			readTrustFile(trust, l)
			if tt.want == "" {
				if l.entries[good] == nil || len(l.problems) != 0 {
					t.Fatalf("not trusted: %q", l.problems)
				}
				return
			}
			if len(l.entries) != 0 || len(l.problems) != 1 {
				t.Fatalf("entries %v, problems %q: want none and one problem", l.entries, l.problems)
			}
			p := l.problems[0]
			if !strings.Contains(p, tt.want) || !strings.Contains(p, strconv.Quote(offender)) || !strings.Contains(p, "so it trusts nobody: fix it with") ||
				!strings.Contains(p, "chown "+me+" "+offender) && !strings.Contains(p, "chmod go-w "+offender) {
				t.Fatalf("problem %q: want %q, the path %q and its fix", p, tt.want, offender)
			}
		})
	}

	t.Run("a read-only file system", func(t *testing.T) {
		dir := mountTmpfs(t, "1m")
		if dir == "" {
			t.Skip("needs a tmpfs the test can mount (root on Linux)")
		}
		data := filepath.Join(dir, "data")
		writeFile(t, filepath.Join(data, "trusted_servers"), line)
		chmod(t, dir, 0o777) // as some distributions mount a ConfigMap
		if out, err := exec.Command("mount", "-o", "remount,ro", dir).CombinedOutput(); err != nil {
			t.Skipf("cannot remount read-only (%v: %s)", err, out)
		}
		l := &trustList{}
		readTrustFile(filepath.Join(data, "trusted_servers"), l)
		if l.entries[good] == nil || len(l.problems) != 0 {
			t.Fatalf("a read-only 0777 mount is safe, but: %q", l.problems)
		}
	})
}

// TestStrictModesOverTLS: the agent stops trusting a client the moment its
// trust list is given to another user, and trusts it again once it is
// given back.
func TestStrictModesOverTLS(t *testing.T) {
	needChown(t)
	a := startAgent(t)
	if err := pingWorks(a, a.client, nil); err != nil {
		t.Fatal(err)
	}
	chown(t, homeTrustPath(a.home), otherUID)
	if pingWorks(a, a.client, nil) == nil {
		t.Fatal("still trusted through a trust list another user owns")
	}
	if !strings.Contains(a.logs.String(), "is owned by uid 4242") {
		t.Fatalf("the log does not say why:\n%s", a.logs)
	}
	chown(t, homeTrustPath(a.home), os.Geteuid())
	if err := pingWorks(a, a.client, nil); err != nil {
		t.Fatalf("not trusted again after the chown back: %v", err)
	}
}

// TestStrictModesAtStart: the key, the home and what the agent keeps in it
// are checked when the agent starts: what another user owns is refused with
// its path and fix, what others can write is repaired.
func TestStrictModesAtStart(t *testing.T) {
	needChown(t)
	me := strconv.Itoa(os.Geteuid())
	for _, tt := range []struct {
		name   string
		setup  func(t *testing.T, home string) string
		want   string // in the error; "" means it starts
		repair string // a path whose mode must have lost go-w
	}{
		{"work owned by another user", func(t *testing.T, home string) string {
			chown(t, filepath.Join(home, "work"), otherUID)
			return filepath.Join(home, "work")
		}, "chown -R " + me + " ", ""},
		{"the audit log owned by another user", func(t *testing.T, home string) string {
			chown(t, filepath.Join(home, "audit.log"), otherUID)
			return filepath.Join(home, "audit.log")
		}, "is owned by uid 4242", ""},
		{"the key owned by another user", func(t *testing.T, home string) string {
			chown(t, filepath.Join(home, "tentacle.key"), otherUID)
			return filepath.Join(home, "tentacle.key")
		}, "is owned by uid 4242", ""},
		{"a folder above the home writable by others", func(t *testing.T, home string) string {
			chmod(t, filepath.Dir(home), 0o777)
			return filepath.Dir(home)
		}, "chmod go-w ", ""},
		{"work writable by others is repaired", func(t *testing.T, home string) string {
			chmod(t, filepath.Join(home, "work"), 0o777)
			return ""
		}, "", filepath.Join("work")},
		{"the home writable by another group is repaired", func(t *testing.T, home string) string {
			os.Lchown(home, -1, otherUID)
			chmod(t, home, 0o770)
			return ""
		}, "", "."},
		{"a world-writable sticky home is repaired", func(t *testing.T, home string) string {
			chmod(t, home, os.ModeSticky|0o777)
			return ""
		}, "", "."},
	} {
		t.Run(tt.name, func(t *testing.T) {
			home := filepath.Join(t.TempDir(), "home")
			if _, _, code := runCLI("new-certificate", "-home", home); code != 0 {
				t.Fatal("new-certificate failed")
			}
			for _, d := range []string{"work", "packages", "uploads"} {
				os.Mkdir(filepath.Join(home, d), 0o700)
			}
			writeFile(t, filepath.Join(home, "audit.log"), nil)
			chmod(t, filepath.Join(home, "audit.log"), 0o600)
			offender := tt.setup(t, home)
			if tt.want != "" {
				err := startError(t, testConfig(t, home))
				if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), strconv.Quote(offender)) {
					t.Fatalf("start: %v; want an error %q naming %q", err, tt.want, offender)
				}
				return
			}
			a := &testAgent{t: t, cfg: testConfig(t, home), home: home}
			a.start()
			a.stop()
			fi, err := os.Stat(filepath.Join(home, tt.repair))
			if err != nil || fi.Mode().Perm()&0o022 != 0 || !strings.Contains(a.logs.String(), "repaired a mode") {
				t.Fatalf("mode %v, %v; log:\n%s", fi.Mode(), err, a.logs)
			}
		})
	}
}

// startError starts an agent on cfg and returns why it would not start;
// one that starts is stopped at once (nil).
func startError(t *testing.T, cfg *config) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- runAgentContext(ctx, cfg, io.Discard, func(*server, net.Addr) { cancel() }) }()
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("the agent neither started nor failed within 30s")
		return nil
	}
}

// TestStrictModesKeyFolder: a private key in a folder others can write is
// refused at start, with the folder and the fix.
func TestStrictModesKeyFolder(t *testing.T) {
	needChown(t)
	secret := filepath.Join(t.TempDir(), "secret")
	os.Mkdir(secret, 0o700)
	if _, err := newIdentity(filepath.Join(secret, "tls.key"), filepath.Join(secret, "tls.crt")); err != nil {
		t.Fatal(err)
	}
	chmod(t, secret, 0o777)
	_, err := loadIdentity(filepath.Join(secret, "tls.key"), filepath.Join(secret, "tls.crt"))
	var me *modeError
	if !errors.As(err, &me) || !strings.Contains(err.Error(), "chmod go-w "+secret) {
		t.Fatalf("err %v, want a StrictModes refusal naming %q", err, secret)
	}
}

func TestSoleMember(t *testing.T) {
	passwd := "root:x:0:0:root:/root:/bin/bash\ntentacle:x:10933:10933::/var/lib/tentacle:/usr/sbin/nologin\nbob:x:1000:1000::/home/bob:/bin/sh\n"
	for _, tt := range []struct {
		name   string
		passwd string
		group  string
		gid    int
		want   bool
	}{
		{"a user-private group", passwd, "tentacle:x:10933:\nbob:x:1000:\n", 10933, true},
		{"listing only this user", passwd, "tentacle:x:10933:tentacle\n", 10933, true},
		{"with another member", passwd, "tentacle:x:10933:tentacle,bob\n", 10933, false},
		{"another user's primary group", passwd + "eve:x:1001:10933::/:/bin/sh\n", "", 10933, false},
		{"not in /etc/group at all (fsGroup)", passwd, "", 10933, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := soleMember([]byte(tt.passwd), []byte(tt.group), 10933, tt.gid); got != tt.want {
				t.Fatalf("soleMember = %v, want %v", got, tt.want)
			}
		})
	}
}
