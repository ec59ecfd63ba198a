package main

// transfer_test.go: files and packages over real TLS: round trips from
// empty to multi-GiB, atomicity under every failure the issue lists, the
// package cache's resume and locking, framing of refused bodies, the CLI,
// a fuzz target for the body framing, and the throughput benchmarks; last,
// in a section of its own, what file.* may reach and the disk space it
// promises.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// genBlock is the pattern genReader repeats.
var genBlock = func() []byte {
	r := rand.New(rand.NewPCG(4, 2))
	b := make([]byte, 1<<20)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}()

// genReader produces n deterministic pseudo-random bytes without storing
// them: 1 MiB blocks of one random pattern, each block's first 8 bytes
// replaced by its index, so no two blocks are alike and a block written in
// the wrong place changes the digest.
type genReader struct{ n, off int64 }

func (g *genReader) Read(p []byte) (int, error) {
	if g.off >= g.n {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), g.n-g.off)]
	total := 0
	for len(p) > 0 {
		blk, in := g.off>>20, int(g.off&(1<<20-1))
		m := copy(p, genBlock[in:])
		for i := in; i < 8 && i-in < m; i++ {
			p[i-in] = byte(uint64(blk) >> (8 * i))
		}
		p, g.off, total = p[m:], g.off+int64(m), total+m
	}
	return total, nil
}

// genSHA is the SHA-256 of n bytes of genReader.
func genSHA(n int64) string {
	h := sha256.New()
	io.CopyBuffer(h, &genReader{n: n}, make([]byte, 1<<20))
	return hex.EncodeToString(h.Sum(nil))
}

// randBytes returns n random bytes.
func randBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rand.Uint32())
	}
	return b
}

func shaOf(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// writeFile writes a test file or fails the test.
func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// leftovers lists upload temporaries in dir and records in the journal.
func leftovers(a *testAgent, dir string) []string {
	var out []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if isTempName(e.Name()) {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	recs, _ := os.ReadDir(a.cfg.uploadsDir())
	for _, e := range recs {
		out = append(out, filepath.Join(a.cfg.uploadsDir(), e.Name()))
	}
	return out
}

// sendHead sends a body request's line and the first part of its body, and
// leaves the rest to the test.
func sendHead(t testing.TB, c *clientConn, method string, params map[string]any, part []byte) {
	t.Helper()
	if err := c.send(method, params, nil, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.tc.Write(part); err != nil {
		t.Fatal(err)
	}
}

// ping checks that the connection is still in step.
func ping(c *clientConn) error {
	var r map[string]bool
	if err := c.call("ping", nil, &r); err != nil {
		return err
	}
	if !r["pong"] {
		return fmt.Errorf("ping answered %v", r)
	}
	return nil
}

// upload sends data to path through the protocol.
func upload(c *clientConn, params map[string]any, data []byte) (*fileResult, error) {
	params["size"] = len(data)
	var res fileResult
	err := c.callStream("file.upload", params, bytes.NewReader(data), int64(len(data)), nil, &res)
	return &res, err
}

func TestFileRoundTrip(t *testing.T) {
	a := startAgent(t)
	local := t.TempDir()
	abs := t.TempDir()
	tests := []struct {
		name   string
		data   []byte
		remote string
		want   string // absolute path on the agent
		mode   string
	}{
		{"empty", nil, "empty.txt", filepath.Join(a.cfg.filesDir(), "empty.txt"), "0644"},
		{"small", []byte("hello\n"), "conf/app.conf", filepath.Join(a.cfg.filesDir(), "conf", "app.conf"), "0640"},
		{"3 MiB plus one", randBytes(3<<20 + 1), "big.bin", filepath.Join(a.cfg.filesDir(), "big.bin"), "0600"},
		{"absolute path", []byte("#!/bin/sh\necho hi\n"), filepath.Join(abs, "bin", "tool.sh"), filepath.Join(abs, "bin", "tool.sh"), "0755"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := filepath.Join(local, strings.ReplaceAll(tt.name, " ", "_"))
			writeFile(t, src, tt.data)
			out, errOut, code := a.cli("upload", "-mode", tt.mode, a.addr, src, tt.remote)
			if code != 0 || errOut != "" {
				t.Fatalf("upload: code %d, stderr %q", code, errOut)
			}
			if !strings.Contains(out, fmt.Sprintf("%q", tt.want)) || !strings.Contains(out, shaOf(tt.data)) {
				t.Errorf("upload printed %q, want the path %q and sha256 %s", out, tt.want, shaOf(tt.data))
			}
			got, err := os.ReadFile(tt.want)
			if err != nil || !bytes.Equal(got, tt.data) {
				t.Fatalf("agent file %q: %d bytes, err %v; want %d bytes", tt.want, len(got), err, len(tt.data))
			}
			if fi, _ := os.Stat(tt.want); fmt.Sprintf("%04o", fi.Mode().Perm()) != tt.mode {
				t.Errorf("mode %v, want %s", fi.Mode().Perm(), tt.mode)
			}
			back := filepath.Join(local, "back-"+filepath.Base(src))
			out, errOut, code = a.cli("download", a.addr, tt.remote, back)
			if code != 0 || errOut != "" || !strings.Contains(out, shaOf(tt.data)) {
				t.Fatalf("download: code %d, stdout %q, stderr %q", code, out, errOut)
			}
			got, err = os.ReadFile(back)
			if err != nil || !bytes.Equal(got, tt.data) {
				t.Fatalf("downloaded %d bytes, err %v; want %d bytes", len(got), err, len(tt.data))
			}
			if fi, _ := os.Stat(back); fmt.Sprintf("%04o", fi.Mode().Perm()) != tt.mode {
				t.Errorf("downloaded mode %v, want %s", fi.Mode().Perm(), tt.mode)
			}
			if l := leftovers(a, filepath.Dir(tt.want)); len(l) > 0 {
				t.Errorf("left over: %v", l)
			}
		})
	}
	t.Run("download into a folder", func(t *testing.T) {
		dir := t.TempDir()
		if _, errOut, code := a.cli("download", a.addr, "conf/app.conf", dir); code != 0 {
			t.Fatalf("code %d: %s", code, errOut)
		}
		if got, _ := os.ReadFile(filepath.Join(dir, "app.conf")); string(got) != "hello\n" {
			t.Fatalf("got %q", got)
		}
	})
	t.Run("mode kept on replace", func(t *testing.T) {
		c := a.dial(t)
		if _, err := upload(c, map[string]any{"path": "conf/app.conf"}, []byte("v2\n")); err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Stat(filepath.Join(a.cfg.filesDir(), "conf", "app.conf"))
		if fi.Mode().Perm() != 0o640 {
			t.Fatalf("mode %v after replace without mode, want 0640 kept", fi.Mode().Perm())
		}
	})
}

// bigDir is where the multi-GiB tests put their files: RAM when the
// machine has /dev/shm (the test is about streaming, not the disk's speed),
// else the temp folder.
func bigDir(t testing.TB) string {
	// Memory is faster than this machine's shared disk, when there is room
	// for the file and the agent's reserve.
	const need = bigSize + 1<<30
	if free, err := freeSpace("/dev/shm"); err == nil && free > need {
		d, err := os.MkdirTemp("/dev/shm", "tentacle-test-")
		if err == nil {
			t.Cleanup(func() { os.RemoveAll(d) })
			return d
		}
	}
	d := t.TempDir()
	if free, err := freeSpace(d); err == nil && free < need {
		t.Fatalf("the multi-GiB test needs %d bytes free in %q or /dev/shm; there are %d", int64(need), d, free)
	}
	return d
}

// bigSize is past 4 GiB, so no 32-bit size or offset survives it;
// bigSHA is the SHA-256 of bigSize bytes of genReader (genSHA(bigSize),
// written out to save the test 3 s of hashing; TestGenSHA checks the
// generator still matches on a smaller size).
const (
	bigSize = 4<<30 + 5
	bigSHA  = "9e0a43f5547c17910acf20a6c24c5846a2637723aca61d7f9e0bd394a5a39ebc"
)

func TestGenSHA(t *testing.T) {
	// Blocks 0..2 and part of 3: a change to genReader or genBlock shows here.
	const want = "24298fe26a590749bf92da97affb5ebe5aa2cd076841bdecce5b971717397378"
	if got := genSHA(3<<20 + 12345); got != want {
		t.Fatalf("genReader changed: sha256 %s, want %s; recompute bigSHA with genSHA(bigSize)", got, want)
	}
}

func TestFileOver4GiB(t *testing.T) {
	if testing.Short() || raceDetector {
		// 8 GiB through TLS takes ~25 s, ~50 s under -race; the same code
		// runs under -race with every smaller test, and BenchmarkUpload and
		// BenchmarkDownload cover the large paths.
		t.Skip("multi-GiB transfer: skipped with -short and -race")
	}
	a := startAgent(t)
	dir := bigDir(t)
	want := bigSHA
	c := a.dial(t)
	path := filepath.Join(dir, "big.bin")
	var res fileResult
	params := map[string]any{"path": path, "size": int64(bigSize), "sha256": want}
	if err := c.callStream("file.upload", params, &genReader{n: bigSize}, bigSize, nil, &res); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() != bigSize || res.Size != bigSize || res.SHA256 != want {
		t.Fatalf("uploaded %+v, stat %v, %v", res, fi, err)
	}
	// Download, hashing the stream end to end without storing it again.
	var hdr fileResult
	body, size, err := c.callDownload("file.download", map[string]any{"path": path}, &hdr)
	if err != nil || size != bigSize || hdr.SHA256 != want {
		t.Fatalf("download header %+v, size %d, err %v", hdr, size, err)
	}
	h := sha256.New()
	if n, err := io.CopyBuffer(h, body, make([]byte, 1<<20)); err != nil || n != bigSize {
		t.Fatalf("downloaded %d bytes, err %v", n, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		t.Fatalf("downloaded sha256 %s, want %s", got, want)
	}
	if err := ping(c); err != nil {
		t.Fatalf("connection after 4 GiB each way: %v", err)
	}
}

func TestFileUploadIntegrityKeepsOld(t *testing.T) {
	a := startAgent(t)
	c := a.dial(t)
	path := filepath.Join(a.cfg.filesDir(), "app.conf")
	writeFile(t, path, []byte("old\n"))
	_, err := upload(c, map[string]any{"path": "app.conf", "sha256": shaOf([]byte("something else"))}, []byte("new\n"))
	if rpcKind(err) != kindIntegrity {
		t.Fatalf("err = %v, want integrity", err)
	}
	if got, _ := os.ReadFile(path); string(got) != "old\n" {
		t.Fatalf("file now %q, want the old content", got)
	}
	if l := leftovers(a, filepath.Dir(path)); len(l) > 0 {
		t.Fatalf("left over: %v", l)
	}
	if err := ping(c); err != nil {
		t.Fatal(err)
	}
}

func TestFileUploadCutLeavesNothing(t *testing.T) {
	a := startAgent(t)
	path := filepath.Join(a.cfg.filesDir(), "app.bin")
	writeFile(t, path, []byte("old"))
	c := a.dial(t)
	sendHead(t, c, "file.upload", map[string]any{"path": "app.bin", "size": 8 << 20}, randBytes(3<<20))
	c.Close()
	waitFor(t, "the agent to drop the cut upload", 10*time.Second, func() bool {
		return strings.Contains(a.logs.String(), "method=file.upload") && len(leftovers(a, filepath.Dir(path))) == 0
	})
	if got, _ := os.ReadFile(path); string(got) != "old" {
		t.Fatalf("file now %d bytes, want the old content", len(got))
	}
	if err := ping(a.dial(t)); err != nil {
		t.Fatal(err)
	}
}

func TestBodyStallClosesAndKeepsNothing(t *testing.T) {
	a := startAgent(t, func(c *config) { c.Limits.BodyTimeout = 200 * time.Millisecond })
	c := a.dial(t)
	sendHead(t, c, "file.upload", map[string]any{"path": "stalled.bin", "size": 4 << 20}, randBytes(1<<20))
	c.tc.SetReadDeadline(time.Now().Add(10 * time.Second))
	// The agent gives up on the body and closes; whatever it says first, the
	// stream must end.
	if _, err := io.Copy(io.Discard, c.tc); err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("waiting for the agent to close: %v", err)
	}
	if _, err := os.Stat(filepath.Join(a.cfg.filesDir(), "stalled.bin")); !os.IsNotExist(err) {
		t.Fatalf("stalled upload left a file: %v", err)
	}
	waitFor(t, "temporaries to go", 5*time.Second, func() bool { return len(leftovers(a, a.cfg.filesDir())) == 0 })

	// A stalled package keeps what arrived, for resume (PROTOCOL §3).
	pkg := randBytes(2 << 20)
	c = a.dial(t)
	sendHead(t, c, "package.upload", map[string]any{"sha256": shaOf(pkg), "total": len(pkg), "size": len(pkg)}, pkg[:1<<20])
	io.Copy(io.Discard, c.tc)
	var st packageResult
	if err := a.dial(t).call("package.stat", map[string]any{"sha256": shaOf(pkg)}, &st); err != nil || st.Size != 1<<20 || st.Present {
		t.Fatalf("stat after a stall: %+v, %v; want 1 MiB kept", st, err)
	}
}

// mountTmpfs mounts a tmpfs of size bytes on a fresh folder, or returns ""
// when this process may not (not root, or no tmpfs).
func mountTmpfs(t *testing.T, size string) string {
	if os.Geteuid() != 0 || !isLinux {
		return ""
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Logf("no tmpfs (%v: %s): the full-disk case runs with -disk-reserve only", err, out)
		return ""
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	return dir
}

func TestDiskFull(t *testing.T) {
	t.Run("reserve refuses at once and the connection stays usable", func(t *testing.T) {
		a := startAgent(t, func(c *config) { c.DiskReserve = 1 << 60 })
		c := a.dial(t)
		_, err := upload(c, map[string]any{"path": "x.bin"}, randBytes(1<<20))
		if rpcKind(err) != kindTooLarge || !strings.Contains(err.Error(), "-disk-reserve") {
			t.Fatalf("err = %v, want too_large naming -disk-reserve", err)
		}
		pkg := []byte("package")
		var st packageResult
		err = c.callStream("package.upload", map[string]any{"sha256": shaOf(pkg), "total": len(pkg), "size": len(pkg)}, bytes.NewReader(pkg), int64(len(pkg)), nil, &st)
		if rpcKind(err) != kindTooLarge {
			t.Fatalf("package err = %v, want too_large", err)
		}
		if err := ping(c); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(a.cfg.filesDir(), "x.bin")); !os.IsNotExist(err) {
			t.Fatalf("refused upload left a file: %v", err)
		}
	})
	fs := mountTmpfs(t, "8m")
	if fs == "" {
		return
	}
	a := startAgent(t)
	t.Run("tmpfs: bigger than the disk", func(t *testing.T) {
		c := a.dial(t)
		_, err := upload(c, map[string]any{"path": filepath.Join(fs, "big")}, make([]byte, 12<<20))
		if rpcKind(err) != kindTooLarge {
			t.Fatalf("err = %v, want too_large", err)
		}
		if err := ping(c); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("tmpfs: the disk fills mid-body", func(t *testing.T) {
		old := filepath.Join(fs, "app.bin")
		writeFile(t, old, []byte("old"))
		c := a.dial(t)
		data := randBytes(6 << 20)
		sendHead(t, c, "file.upload", map[string]any{"path": old, "size": len(data), "sha256": shaOf(data)}, data[:2<<20])
		waitFor(t, "2 MiB in the temporary file", 10*time.Second, func() bool {
			for _, p := range leftovers(a, fs) {
				if fi, err := os.Stat(p); err == nil && filepath.Dir(p) == fs && fi.Size() >= 2<<20 {
					return true
				}
			}
			return false
		})
		filler, _ := os.Create(filepath.Join(fs, "filler"))
		for {
			if _, err := filler.Write(make([]byte, 64<<10)); err != nil {
				break
			}
		}
		filler.Close()
		if _, err := c.tc.Write(data[2<<20:]); err != nil {
			t.Fatal(err)
		}
		var res fileResult
		if err := c.receive(&res); rpcKind(err) != kindTooLarge {
			t.Fatalf("err = %v, want too_large (disk full)", err)
		}
		if got, _ := os.ReadFile(old); string(got) != "old" {
			t.Fatalf("file now %d bytes, want the old content", len(got))
		}
		if l := leftovers(a, fs); len(l) > 0 {
			t.Fatalf("left over: %v", l)
		}
		if err := ping(c); err != nil {
			t.Fatalf("connection after a full disk: %v", err)
		}
	})
}

// isLinux: tmpfs and SIGKILL-based tests need it.
const isLinux = runtime.GOOS == "linux"

func TestPackageResumeAtOffsets(t *testing.T) {
	a := startAgent(t)
	pkgFile := filepath.Join(t.TempDir(), "app.tar.gz")
	for _, off := range []int{1, 65536, 1<<20 + 7, 3<<20 - 1} {
		t.Run(fmt.Sprint(off), func(t *testing.T) {
			pkg := randBytes(3 << 20)
			sha := shaOf(pkg)
			writeFile(t, pkgFile, pkg)
			c := a.dial(t)
			sendHead(t, c, "package.upload", map[string]any{"sha256": sha, "total": len(pkg), "size": len(pkg)}, pkg[:off])
			c.Close()
			var st packageResult
			waitFor(t, "the cut upload to be kept", 10*time.Second, func() bool {
				st = packageResult{}
				c := a.dial(t)
				defer c.Close()
				return c.call("package.stat", map[string]any{"sha256": sha}, &st) == nil && st.Size == int64(off)
			})
			out, errOut, code := a.cli("push", a.addr, pkgFile)
			if code != 0 || errOut != "" || strings.TrimSpace(out) != sha {
				t.Fatalf("push: code %d, stdout %q, stderr %q; want the sha256", code, out, errOut)
			}
			path, ok := a.srv.pkgs.path(sha)
			got, _ := os.ReadFile(path)
			if !ok || !bytes.Equal(got, pkg) {
				t.Fatalf("cached package %q present %v, %d bytes identical %v", path, ok, len(got), bytes.Equal(got, pkg))
			}
			if _, err := os.Stat(filepath.Join(a.cfg.packagesDir(), "partial", sha)); !os.IsNotExist(err) {
				t.Fatalf("partial upload still there: %v", err)
			}
			// The audit line is written before the answer, so counting
			// them does not race the agent (its log line comes after).
			uploads := auditCount(t, a, "package.upload")
			sent, err := pushOpen(a.dial(t), mustOpen(t, pkgFile), int64(len(pkg)), sha, nil)
			if err != nil || sent || auditCount(t, a, "package.upload") != uploads {
				t.Fatalf("second push: sent %v, err %v; want nothing sent", sent, err)
			}
		})
	}
}

// auditCount counts the audit lines of method.
func auditCount(t *testing.T, a *testAgent, method string) int {
	t.Helper()
	data, err := os.ReadFile(a.cfg.auditPath())
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Count(string(data), `"method":"`+method+`"`)
}

func mustOpen(t *testing.T, path string) *os.File {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestPackageUploadRules(t *testing.T) {
	a := startAgent(t)
	pkg := randBytes(1 << 20)
	sha := shaOf(pkg)
	c := a.dial(t)
	up := func(off, size int, total int) (packageResult, error) {
		var st packageResult
		err := c.callStream("package.upload", map[string]any{"sha256": sha, "total": total, "offset": off, "size": size},
			bytes.NewReader(pkg[off:off+size]), int64(size), nil, &st)
		return st, err
	}
	if st, err := up(0, 1000, len(pkg)); err != nil || st.Size != 1000 || st.Present {
		t.Fatalf("first chunk: %+v, %v", st, err)
	}
	for _, off := range []int{0, 999, 1001} {
		if _, err := up(off, 10, len(pkg)); rpcKind(err) != kindConflict || !strings.Contains(err.Error(), "resume at offset 1000") {
			t.Fatalf("offset %d: err %v, want conflict naming offset 1000", off, err)
		}
	}
	if _, err := up(1000, 10, 1005); rpcKind(err) != kindInvalidParams {
		t.Fatalf("past total: err %v, want invalid_params", err)
	}
	if st, err := up(1000, len(pkg)-1000, len(pkg)); err != nil || !st.Present || st.Size != int64(len(pkg)) {
		t.Fatalf("completion: %+v, %v", st, err)
	}
	// Present: the body is read and discarded, even past 16 MiB.
	var st packageResult
	err := c.callStream("package.upload", map[string]any{"sha256": sha, "total": 20 << 20, "size": 20 << 20},
		&genReader{n: 20 << 20}, 20<<20, nil, &st)
	if err != nil || !st.Present || st.Size != int64(len(pkg)) {
		t.Fatalf("present: %+v, %v", st, err)
	}
	if err := ping(c); err != nil {
		t.Fatal(err)
	}

	t.Run("integrity", func(t *testing.T) {
		bad := randBytes(4096)
		want := shaOf(append([]byte{1}, bad...))
		err := c.callStream("package.upload", map[string]any{"sha256": want, "total": len(bad), "size": len(bad)},
			bytes.NewReader(bad), int64(len(bad)), nil, &st)
		if rpcKind(err) != kindIntegrity {
			t.Fatalf("err %v, want integrity", err)
		}
		if err := c.call("package.stat", map[string]any{"sha256": want}, &st); err != nil || st.Present || st.Size != 0 {
			t.Fatalf("after a mismatch: %+v, %v; want nothing kept", st, err)
		}
	})
	t.Run("bad params", func(t *testing.T) {
		for _, p := range []map[string]any{
			{"sha256": "abc", "total": 1, "size": 1},
			{"sha256": sha, "size": 1},
			{"sha256": sha, "total": 1, "size": 1, "extra": 1},
		} {
			err := c.callStream("package.upload", p, strings.NewReader("x"), 1, nil, &st)
			if rpcKind(err) != kindInvalidParams {
				t.Errorf("%v: err %v, want invalid_params", p, err)
			}
		}
		if err := c.call("package.stat", map[string]any{"sha256": strings.Repeat("g", 64)}, &st); rpcKind(err) != kindInvalidParams {
			t.Errorf("stat of a non-hex sha256: %v", err)
		}
		if err := ping(c); err != nil {
			t.Fatal(err)
		}
	})
}

func TestPackageConcurrentUploads(t *testing.T) {
	a := startAgent(t)
	pkg := randBytes(4 << 20)
	sha := shaOf(pkg)
	first := a.dial(t)
	sendHead(t, first, "package.upload", map[string]any{"sha256": sha, "total": len(pkg), "size": len(pkg)}, pkg[:2<<20])
	waitFor(t, "the first upload to write", 10*time.Second, func() bool {
		fi, err := os.Stat(filepath.Join(a.cfg.packagesDir(), "partial", sha))
		return err == nil && fi.Size() >= 2<<20
	})
	second := a.dial(t)
	var st packageResult
	err := second.callStream("package.upload", map[string]any{"sha256": sha, "total": len(pkg), "offset": 2 << 20, "size": 2 << 20},
		bytes.NewReader(pkg[2<<20:]), 2<<20, nil, &st)
	if rpcKind(err) != kindConflict || !strings.Contains(err.Error(), "another connection") {
		t.Fatalf("second upload: %v, want conflict", err)
	}
	if _, err := first.tc.Write(pkg[2<<20:]); err != nil {
		t.Fatal(err)
	}
	if err := first.receive(&st); err != nil || !st.Present {
		t.Fatalf("first upload: %+v, %v", st, err)
	}
	if sent, err := pushOpen(second, mustOpen(t, writeTemp(t, pkg)), int64(len(pkg)), sha, nil); err != nil || sent {
		t.Fatalf("second push after the first: sent %v, err %v", sent, err)
	}
	path, _ := a.srv.pkgs.path(sha)
	if got, _ := os.ReadFile(path); !bytes.Equal(got, pkg) {
		t.Fatal("cached package differs")
	}
}

func writeTemp(t *testing.T, data []byte) string {
	p := filepath.Join(t.TempDir(), "data")
	writeFile(t, p, data)
	return p
}

func TestRefusedBodyKeepsConnectionInStep(t *testing.T) {
	a := startAgent(t)
	writeFile(t, filepath.Join(a.cfg.filesDir(), "exists"), []byte("x"))
	c := a.dial(t)
	tests := []struct {
		name   string
		params map[string]any
		kind   string
	}{
		{"dot-dot", map[string]any{"path": "../escape"}, kindForbidden},
		{"dot-dot inside", map[string]any{"path": "a/../../b"}, kindForbidden},
		{"no overwrite", map[string]any{"path": "exists", "overwrite": false}, kindConflict},
		{"folder", map[string]any{"path": "."}, kindConflict},
		{"bad mode", map[string]any{"path": "m", "mode": "0999"}, kindInvalidParams},
		{"bad sha256", map[string]any{"path": "m", "sha256": "xyz"}, kindInvalidParams},
		{"unknown field", map[string]any{"path": "m", "owner": "root"}, kindInvalidParams},
		{"empty path", map[string]any{"path": ""}, kindInvalidParams},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := upload(c, tt.params, randBytes(1<<20)); rpcKind(err) != tt.kind {
				t.Fatalf("err %v, want %s", err, tt.kind)
			}
			if err := ping(c); err != nil {
				t.Fatalf("connection out of step: %v", err)
			}
		})
	}
	if got, _ := os.ReadFile(filepath.Join(a.cfg.filesDir(), "exists")); string(got) != "x" {
		t.Fatal("refused upload changed the file")
	}
	t.Run("over 16 MiB closes", func(t *testing.T) {
		_, err := upload(c, map[string]any{"path": "exists", "overwrite": false}, make([]byte, 17<<20))
		if rpcKind(err) != kindConflict {
			t.Fatalf("err %v, want conflict", err)
		}
		if err := ping(c); err == nil {
			t.Fatal("the connection stayed open after a refused 17 MiB body")
		}
	})
	t.Run("allow= narrows", func(t *testing.T) {
		writeTrust(t, a.home, a.client.thumbprint+" allow=read,deploy ci\n")
		c := a.dial(t)
		if _, err := upload(c, map[string]any{"path": "f"}, randBytes(4096)); rpcKind(err) != kindForbidden {
			t.Fatalf("err %v, want forbidden", err)
		}
		var hdr fileResult
		if _, _, err := c.callDownload("file.download", map[string]any{"path": "exists"}, &hdr); rpcKind(err) != kindForbidden {
			t.Fatalf("download err %v, want forbidden", err)
		}
		if err := ping(c); err != nil {
			t.Fatal(err)
		}
	})
}

func TestDownloadErrors(t *testing.T) {
	a := startAgent(t)
	c := a.dial(t)
	os.MkdirAll(filepath.Join(a.cfg.filesDir(), "dir"), 0o755)
	for _, tt := range []struct{ path, kind string }{
		{"missing", kindNotFound},
		{"dir", kindNotFound},
		{"../x", kindForbidden},
		{filepath.Join(t.TempDir(), "nope"), kindNotFound},
	} {
		var hdr fileResult
		if _, _, err := c.callDownload("file.download", map[string]any{"path": tt.path}, &hdr); rpcKind(err) != tt.kind {
			t.Errorf("%s: err %v, want %s", tt.path, err, tt.kind)
		}
	}
	if err := ping(c); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "out")
	writeFile(t, dst, []byte("mine"))
	_, errOut, code := a.cli("download", a.addr, "missing", dst)
	if code != 1 || !strings.Contains(errOut, "not_found") {
		t.Fatalf("CLI: code %d, stderr %q", code, errOut)
	}
	if got, _ := os.ReadFile(dst); string(got) != "mine" {
		t.Fatal("a failed download touched the local file")
	}
}

func TestRestartCleansTemporaries(t *testing.T) {
	a := startAgent(t, func(c *config) { c.PackageGrace = time.Hour })
	elsewhere := t.TempDir()
	var temps []string
	for i, dir := range []string{a.cfg.filesDir(), elsewhere} {
		os.MkdirAll(dir, 0o755)
		id := fmt.Sprintf("%016x", i+1)
		tmp := filepath.Join(dir, ".app.conf"+tempMarker+id+tempSuffix)
		writeFile(t, tmp, []byte("half"))
		writeFile(t, filepath.Join(a.cfg.uploadsDir(), id), []byte(tmp+"\n"))
		temps = append(temps, tmp)
	}
	// A damaged record naming a file that is no temporary removes nothing.
	precious := filepath.Join(elsewhere, "precious")
	writeFile(t, precious, []byte("keep"))
	writeFile(t, filepath.Join(a.cfg.uploadsDir(), "bad"), []byte(precious+"\n"))
	partial := filepath.Join(a.cfg.packagesDir(), "partial")
	stale, fresh := filepath.Join(partial, strings.Repeat("a", 64)), filepath.Join(partial, strings.Repeat("b", 64))
	writeFile(t, stale, []byte("old"))
	writeFile(t, fresh, []byte("new"))
	old := time.Now().Add(-2 * time.Hour)
	os.Chtimes(stale, old, old)

	a.restart()
	for _, p := range temps {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("temporary %q survived the restart: %v", p, err)
		}
	}
	if recs, _ := os.ReadDir(a.cfg.uploadsDir()); len(recs) != 0 {
		t.Errorf("journal not emptied: %d records", len(recs))
	}
	if _, err := os.Stat(precious); err != nil {
		t.Errorf("a damaged journal record removed %q: %v", precious, err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale partial upload kept: %v", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("resumable partial upload removed: %v", err)
	}
}

// TestHelperAgentProcess is not a test: run as a child process with
// TENTACLE_HELPER_AGENT=1, it is the tentacle binary, so a test can kill a
// real agent process mid-transfer.
func TestHelperAgentProcess(t *testing.T) {
	if os.Getenv("TENTACLE_HELPER_AGENT") != "1" {
		return
	}
	args := os.Args
	for i, a := range args {
		if a == "--" {
			args = args[i+1:]
			break
		}
	}
	os.Exit(run(args, os.Stdout, os.Stderr))
}

// startAgentProcess runs "tentacle run" on a's home as a child process and
// returns it with its address.
func startAgentProcess(t *testing.T, home string) (*exec.Cmd, string) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperAgentProcess$", "--", "run", "-home", home, "-listen", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "TENTACLE_HELPER_AGENT=1")
	logs := &syncBuffer{}
	cmd.Stderr = logs
	if err := startChild(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); waitChild(cmd) })
	var addr string
	waitFor(t, "the agent process to listen", 20*time.Second, func() bool {
		for _, line := range strings.Split(logs.String(), "\n") {
			if i := strings.Index(line, "msg=listening addr="); i >= 0 {
				addr = strings.Fields(line[i+len("msg=listening addr="):])[0]
				return true
			}
		}
		return false
	})
	return cmd, addr
}

func TestKillMidTransfer(t *testing.T) {
	a := startAgent(t)
	a.stop() // the home is reused by a real process that the test kills
	cmd, addr := startAgentProcess(t, a.home)
	c, err := dialAgent(addr, a.client, a.thumbprint, "", 10*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dest := filepath.Join(t.TempDir(), "app.bin")
	writeFile(t, dest, []byte("old"))
	sendHead(t, c, "file.upload", map[string]any{"path": dest, "size": 8 << 20}, randBytes(3<<20))
	waitFor(t, "the temporary file to fill", 10*time.Second, func() bool {
		m, _ := filepath.Glob(filepath.Join(filepath.Dir(dest), ".app.bin.tentacle-*.tmp"))
		return len(m) == 1
	})
	pkg := randBytes(3 << 20)
	pc, err := dialAgent(addr, a.client, a.thumbprint, "", 10*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	sendHead(t, pc, "package.upload", map[string]any{"sha256": shaOf(pkg), "total": len(pkg), "size": len(pkg)}, pkg[:2<<20])
	partial := filepath.Join(a.cfg.packagesDir(), "partial", shaOf(pkg))
	waitFor(t, "the partial package to fill", 10*time.Second, func() bool {
		fi, err := os.Stat(partial)
		return err == nil && fi.Size() == 2<<20
	})
	cmd.Process.Kill() // SIGKILL: no cleanup runs
	waitChild(cmd)
	if got, _ := os.ReadFile(dest); string(got) != "old" {
		t.Fatalf("killed upload changed the destination: %d bytes", len(got))
	}
	a.start()
	if m, _ := filepath.Glob(filepath.Join(filepath.Dir(dest), ".app.bin.tentacle-*.tmp")); len(m) != 0 {
		t.Fatalf("temporaries survived the restart: %v", m)
	}
	// The package resumes where the killed agent stopped.
	var st packageResult
	if err := a.dial(t).call("package.stat", map[string]any{"sha256": shaOf(pkg)}, &st); err != nil || st.Size != 2<<20 {
		t.Fatalf("after the kill: %+v, %v; want the 2 MiB received kept", st, err)
	}
	sent, err := pushOpen(a.dial(t), mustOpen(t, writeTemp(t, pkg)), int64(len(pkg)), shaOf(pkg), nil)
	if err != nil || !sent {
		t.Fatalf("resume after kill: sent %v, %v", sent, err)
	}
	path, _ := a.srv.pkgs.path(shaOf(pkg))
	if got, _ := os.ReadFile(path); !bytes.Equal(got, pkg) {
		t.Fatal("resumed package differs")
	}
}

func TestPrune(t *testing.T) {
	a := startAgent(t, func(c *config) { c.PackageGrace = time.Hour })
	c := a.dial(t)
	var shas []string
	for i := range 3 {
		pkg := []byte(fmt.Sprintf("package %d", i))
		var st packageResult
		if err := c.callStream("package.upload", map[string]any{"sha256": shaOf(pkg), "total": len(pkg), "size": len(pkg)},
			bytes.NewReader(pkg), int64(len(pkg)), nil, &st); err != nil || !st.Present {
			t.Fatal(st, err)
		}
		shas = append(shas, shaOf(pkg))
	}
	old := time.Now().Add(-2 * time.Hour)
	for _, s := range shas[:2] {
		p, _ := a.srv.pkgs.path(s)
		os.Chtimes(p, old, old)
	}
	// An old partial upload in progress (locked) is never touched.
	busy := strings.Repeat("c", 64)
	busyPath := filepath.Join(a.cfg.packagesDir(), "partial", busy)
	writeFile(t, busyPath, []byte("half"))
	os.Chtimes(busyPath, old, old)
	a.srv.pkgs.lock(busy)
	removed := a.srv.pkgs.prune(map[string]bool{shas[1]: true})
	if len(removed) != 1 || removed[0] != shas[0] {
		t.Fatalf("removed %v, want only %s (old and not kept)", removed, shas[0])
	}
	for i, s := range shas {
		if _, ok := a.srv.pkgs.path(s); ok != (i != 0) {
			t.Errorf("package %d present %v", i, ok)
		}
	}
	if _, err := os.Stat(busyPath); err != nil {
		t.Fatalf("prune touched an upload in progress: %v", err)
	}
	a.srv.pkgs.unlock(busy)
	if _, ok := a.srv.pkgs.path("../../etc/passwd"); ok {
		t.Fatal("path accepted a non-sha")
	}
}

func TestTransferCLIUsage(t *testing.T) {
	a := startAgent(t)
	src := writeTemp(t, []byte("x"))
	for _, tt := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"upload missing args", []string{"upload", a.addr, src}, 2, "wrong number of arguments"},
		{"upload bad mode", []string{"upload", "-mode", "rwx", a.addr, src, "x"}, 2, "-mode"},
		{"upload missing local", []string{"upload", a.addr, src + ".nope", "x"}, 1, "no such file"},
		{"download missing args", []string{"download", a.addr}, 2, "wrong number of arguments"},
		{"push a folder", []string{"push", a.addr, t.TempDir()}, 1, "not a regular file"},
		{"no overwrite", []string{"upload", "-no-overwrite", a.addr, src, src}, 1, "(conflict)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, errOut, code := a.cli(tt.args[0], tt.args[1:]...)
			if code != tt.code || !strings.Contains(errOut, tt.want) {
				t.Fatalf("code %d, stderr %q; want %d and %q", code, errOut, tt.code, tt.want)
			}
		})
	}
	for _, cmd := range []string{"upload", "download", "push"} {
		out, _, code := runCLI("help", cmd)
		if code != 0 || !strings.Contains(out, "Usage:") || !strings.Contains(out, "Example:") {
			t.Errorf("help %s: code %d, %q", cmd, code, out)
		}
	}
}

func TestProgressBar(t *testing.T) {
	if progressTo(&bytes.Buffer{}) != nil {
		t.Fatal("a buffer is not a terminal")
	}
	f, _ := os.Create(filepath.Join(t.TempDir(), "f"))
	defer f.Close()
	if progressTo(f) != nil {
		t.Fatal("a regular file is not a terminal")
	}
	var buf bytes.Buffer
	p := newProgressBar(&buf, "sending", 4<<20)
	p.start = time.Now().Add(-2 * time.Second)
	p.add(1 << 20)
	p.done()
	line := buf.String()
	for _, want := range []string{"sending", " 25%", "1.0 MiB", "512.0 KiB/s", "ETA 0:06", "\n"} {
		if !strings.Contains(line, want) {
			t.Errorf("bar %q lacks %q", line, want)
		}
	}
	var quiet bytes.Buffer
	q := newProgressBar(&quiet, "x", 10)
	q.add(10)
	q.done()
	if quiet.Len() != 0 {
		t.Errorf("a transfer quicker than %v drew %q", barDelay, quiet.String())
	}
	var nilBar *progressBar
	nilBar.add(1)
	nilBar.done()
}

// tbAgent is an agent for benchmarks and fuzzing, which have no *testing.T
// for startAgent.
type tbAgent struct {
	addr, thumbprint string
	client           *identity
	cfg              *config
}

func startTBAgent(tb testing.TB, options string, opts ...func(*config)) *tbAgent {
	tb.Helper()
	home := tb.TempDir()
	id, err := newIdentity(filepath.Join(tb.TempDir(), "k"), filepath.Join(tb.TempDir(), "c"))
	if err != nil {
		tb.Fatal(err)
	}
	writeTrust(tb, home, id.thumbprint+" "+options+" tb\n")
	cfg := testConfig(tb, home)
	for _, o := range opts {
		o(cfg)
	}
	a := &tbAgent{client: id, cfg: cfg}
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() {
		done <- runAgentContext(ctx, cfg, io.Discard, func(s *server, addr net.Addr) {
			a.addr, a.thumbprint = addr.String(), s.id.thumbprint
			close(ready)
		})
	}()
	select {
	case <-ready:
	case err := <-done:
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cancel(); <-done })
	return a
}

func (a *tbAgent) dial(tb testing.TB, sessions tls.ClientSessionCache) *clientConn {
	c, err := dialAgent(a.addr, a.client, a.thumbprint, "", 10*time.Second, sessions)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// FuzzBodyFraming feeds a request line and a body of any bytes, followed by
// a ping, into the real command loop over TLS. Whatever the bytes, the agent
// must not panic, must answer with well-formed responses, and must either
// stay in step (the ping is answered, last) or close the connection; when
// the line declares exactly the body it carries, staying in step is
// required. The trust entry has no "file" group, so file.* bodies are
// refused and discarded, while package.upload bodies are read.
func FuzzBodyFraming(f *testing.F) {
	pkg := []byte("fuzz package")
	f.Add([]byte(`{"id":1,"method":"file.upload","params":{"path":"x","size":5}}`), []byte("hello"))
	f.Add([]byte(`{"id":1,"method":"package.upload","params":{"sha256":"`+shaOf(pkg)+`","total":12,"size":12}}`), pkg)
	f.Add([]byte(`{"id":1,"method":"package.upload","params":{"sha256":"`+shaOf(pkg)+`","total":12,"size":4}}`), pkg[:4])
	f.Add([]byte(`{"id":"a","method":"package.upload","params":{"sha256":"`+shaOf(pkg)+`","total":12,"offset":3,"size":2}}`), []byte("ka"))
	f.Add([]byte(`{"id":1,"method":"package.upload","params":{"size":3}}`), []byte("abc"))
	f.Add([]byte(`{"id":1,"method":"file.upload","params":{"size":-1}}`), []byte(""))
	f.Add([]byte(`{"id":1,"method":"file.upload","params":{"size":"3"}}`), []byte("abc"))
	f.Add([]byte(`{"method":"file.upload","params":{"size":2}}`), []byte("\n\n"))
	f.Add([]byte(`{"id":1,"method":"package.stat","params":{"sha256":"`+shaOf(pkg)+`"}}`), []byte{})
	f.Add([]byte(`{"id":1,"method":"file.upload","params":{"size":99999999999}}`), []byte("x"))
	a := startTBAgent(f, "allow=read,deploy")
	sessions := tls.NewLRUClientSessionCache(8)
	f.Fuzz(func(t *testing.T, line, body []byte) {
		if bytes.ContainsAny(line, "\n") {
			return // one line by construction
		}
		c := a.dial(t, sessions)
		defer c.Close()
		stream := append(append(append([]byte{}, line...), '\n'), body...)
		stream = append(stream, "\n{\"id\":\"end\",\"method\":\"ping\"}\n"...)
		go func() {
			c.tc.Write(stream)
			c.tc.CloseWrite()
		}()
		c.tc.SetReadDeadline(time.Now().Add(20 * time.Second))
		sawEnd := false
		for {
			l, err := readLine(c.br, 64<<20)
			if err == io.EOF && len(l) == 0 {
				break
			}
			if err != nil && err != io.EOF {
				if os.IsTimeout(err) {
					t.Fatalf("the agent neither answered nor closed for %q + %d body bytes", line, len(body))
				}
				break // reset by the agent: a close
			}
			if len(bytes.TrimSpace(l)) == 0 {
				continue
			}
			if sawEnd {
				t.Fatalf("an answer after the final ping: %q", l)
			}
			var r struct {
				JSONRPC string          `json:"jsonrpc"`
				ID      json.RawMessage `json:"id"`
				Result  json.RawMessage `json:"result"`
				Error   *rpcError       `json:"error"`
			}
			if err := json.Unmarshal(l, &r); err != nil || r.JSONRPC != "2.0" || (r.Result == nil) == (r.Error == nil) {
				t.Fatalf("malformed answer %q: %v", l, err)
			}
			sawEnd = string(r.ID) == `"end"`
		}
		size, err := bodySize(declaredParams(line))
		if err == nil && size == int64(len(body)) && !sawEnd {
			t.Fatalf("the line declares the %d bytes it carries, yet the agent left step: %q", size, line)
		}
	})
}

// declaredParams returns a body request line's params if it is a request
// for a method with a body, else nil.
func declaredParams(line []byte) json.RawMessage {
	req, err := parseRequest(line)
	if err != nil || req == nil || req.id == nil {
		return nil
	}
	if m, ok := protocolMethods()[req.method]; !ok || !m.body {
		return nil
	}
	return req.params
}

// benchSize is the size each throughput benchmark moves.
const benchSize = 1 << 30

// benchDir is where benchmarks write: $TENTACLE_BENCH_DIR, else the temp
// folder (the disk).
func benchDir(b *testing.B) string {
	if d := os.Getenv("TENTACLE_BENCH_DIR"); d != "" {
		d, err := os.MkdirTemp(d, "tentacle-bench-")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(d) })
		return d
	}
	return b.TempDir()
}

// bareTLS measures the baseline: n bytes sent over a bare crypto/tls
// connection in this process; the receiver only writes them to a file (no
// hashing, no fsync) when toFile is set. send writes into the client side;
// recv reads the server side. It returns the time until the receiver has
// written the last byte.
func bareTLS(b *testing.B, send func(w io.Writer) error, recv func(r io.Reader) error) time.Duration {
	srvID, err := newIdentity(filepath.Join(b.TempDir(), "k"), filepath.Join(b.TempDir(), "c"))
	if err != nil {
		b.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{srvID.cert}, MinVersion: tls.VersionTLS13})
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	got := make(chan error, 1)
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			got <- err
			return
		}
		defer nc.Close()
		got <- recv(nc)
	}()
	cc, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	if err := cc.Handshake(); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	if err := send(cc); err != nil {
		b.Fatal(err)
	}
	if err := <-got; err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

// copyBig copies n bytes from r to w with 1 MiB buffers.
func copyBig(w io.Writer, r io.Reader, n int64) error {
	m, err := io.CopyBuffer(onlyWriter{w}, io.LimitReader(r, n), make([]byte, 1<<20))
	if err == nil && m != n {
		err = fmt.Errorf("copied %d of %d", m, n)
	}
	return err
}

// onlyWriter hides ReadFrom, so io.CopyBuffer really uses its buffer.
type onlyWriter struct{ w io.Writer }

func (o onlyWriter) Write(p []byte) (int, error) { return o.w.Write(p) }

func mibps(n int64, d time.Duration) float64 { return float64(n) / (1 << 20) / d.Seconds() }

// BenchmarkUpload: 1 GiB through file.upload (hashed, written, fsynced,
// renamed) beside the same bytes over bare crypto/tls written to a file.
func BenchmarkUpload(b *testing.B) {
	a := startTBAgent(b, "")
	dir := benchDir(b)
	sha := genSHA(benchSize)
	for b.Loop() {
		benchBesideTLS(b, a, dir, "upload", "up.bin", func(w io.Writer) error {
			return copyBig(w, &genReader{n: benchSize}, benchSize)
		}, func(c *clientConn) error {
			var res fileResult
			return c.callStream("file.upload", map[string]any{"path": filepath.Join(dir, "up.bin"), "size": benchSize, "sha256": sha},
				&genReader{n: benchSize}, benchSize, nil, &res)
		})
	}
}

// BenchmarkDownload: 1 GiB through file.download into a local file
// (hashed, written, fsynced, renamed) beside the same file sent over bare
// crypto/tls and written to a file.
func BenchmarkDownload(b *testing.B) {
	a := startTBAgent(b, "")
	dir := benchDir(b)
	src := filepath.Join(dir, "src.bin")
	c := a.dial(b, nil)
	var res fileResult
	if err := c.callStream("file.upload", map[string]any{"path": src, "size": benchSize}, &genReader{n: benchSize}, benchSize, nil, &res); err != nil {
		b.Fatal(err)
	}
	c.Close()
	for b.Loop() {
		benchBesideTLS(b, a, dir, "download", "down.bin", func(w io.Writer) error {
			f, err := os.Open(src)
			if err != nil {
				return err
			}
			defer f.Close()
			return copyBig(w, f, benchSize)
		}, func(c *clientConn) error {
			_, _, err := downloadFile(c, src, filepath.Join(dir, "down.bin"), nil)
			return err
		})
	}
}

// benchBesideTLS is one round of a 1 GiB transfer benchmark: send's bytes
// over bare crypto/tls into a file in dir, then transfer on a new
// connection to a, which writes dir's file name; each file is removed and
// the disk synced after its part. It logs and reports both rates, their
// CPU time and the ratio.
func benchBesideTLS(b *testing.B, a *tbAgent, dir, what, name string, send func(w io.Writer) error, transfer func(c *clientConn) error) {
	b.Helper()
	cpu0 := cpuSeconds()
	base := bareTLS(b, send, func(r io.Reader) error {
		f, err := os.Create(filepath.Join(dir, "bare.bin"))
		if err != nil {
			return err
		}
		defer f.Close()
		return copyBig(f, r, benchSize)
	})
	cpuBase := cpuSeconds() - cpu0
	os.Remove(filepath.Join(dir, "bare.bin"))
	syncDisk()
	c := a.dial(b, nil)
	cpu0 = cpuSeconds()
	start := time.Now()
	err := transfer(c)
	d := time.Since(start)
	cpu := cpuSeconds() - cpu0
	c.Close()
	if err != nil {
		b.Fatal(err)
	}
	os.Remove(filepath.Join(dir, name))
	syncDisk()
	b.Logf("%s 1 GiB: %.0f MiB/s (hashed, written, fsynced, renamed; %.2f CPU-s); bare TLS + write: %.0f MiB/s (%.2f CPU-s); ratio %.2f",
		what, mibps(benchSize, d), cpu, mibps(benchSize, base), cpuBase, base.Seconds()/d.Seconds())
	b.ReportMetric(mibps(benchSize, d), "MiB/s")
	b.ReportMetric(mibps(benchSize, base), "bare-MiB/s")
	b.ReportMetric(base.Seconds()/d.Seconds(), "ratio")
}

// BenchmarkPushPresent: push of a package the agent has: one package.stat
// round trip, no body, beside a ping round trip.
func BenchmarkPushPresent(b *testing.B) {
	a := startTBAgent(b, "")
	pkg := filepath.Join(b.TempDir(), "p")
	if err := os.WriteFile(pkg, genBlock, 0o644); err != nil {
		b.Fatal(err)
	}
	c := a.dial(b, nil)
	defer c.Close()
	sha, err := pushPackage(c, pkg, nil)
	if err != nil {
		b.Fatal(err)
	}
	f, _ := os.Open(pkg)
	defer f.Close()
	var pushT, pingT time.Duration
	for b.Loop() {
		start := time.Now()
		if sent, err := pushOpen(c, f, int64(len(genBlock)), sha, nil); err != nil || sent {
			b.Fatal(sent, err)
		}
		pushT += time.Since(start)
		start = time.Now()
		if err := ping(c); err != nil {
			b.Fatal(err)
		}
		pingT += time.Since(start)
	}
	b.Logf("push of a present package: %v a push (one package.stat round trip, 0 body bytes); ping round trip %v; ratio %.2f",
		pushT/time.Duration(b.N), pingT/time.Duration(b.N), float64(pingT)/float64(pushT))
	b.ReportMetric(float64(pushT.Microseconds())/float64(b.N), "push-µs")
	b.ReportMetric(float64(pingT.Microseconds())/float64(b.N), "ping-µs")
}

// cpuSeconds is this process's CPU time (user + system) from /proc, or 0
// where there is none: the benchmarks report it to show what is CPU-bound.
func cpuSeconds() float64 {
	data, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	var u, s float64
	fmt.Sscan(f[11], &u)
	fmt.Sscan(f[12], &s)
	return (u + s) / 100 // USER_HZ is 100 on Linux
}

// syncDisk flushes earlier runs' dirty pages so each measurement starts
// from the same state.
func syncDisk() {
	if isLinux {
		exec.Command("sync").Run()
	}
}

// What file.* may reach (the agent's own state never; files= folders only),
// paths too long or too deep, files that are not regular, and disk space
// promised to concurrent uploads.

// download fetches path through the protocol.
func download(c *clientConn, path string) ([]byte, error) {
	var hdr fileResult
	r, n, err := c.callDownload("file.download", map[string]any{"path": path}, &hdr)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(io.LimitReader(r, n))
}

// dialAs connects to a as id.
func dialAs(t testing.TB, a *testAgent, id *identity) *clientConn {
	t.Helper()
	c, err := dialAgent(a.addr, id, a.thumbprint, "", 10*time.Second, nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func mkLink(t testing.TB, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

// TestFileGuardOwnState: whatever a client's allow=, file.* never reads or
// writes the agent's key, certificate, trust list, audit log, lock, work/,
// packages/, uploads/ or an app's releases, through links, "..", hard
// links and bind mounts too; files/ and apps/<app>/shared/ stay open.
func TestFileGuardOwnState(t *testing.T) {
	a := startAgent(t)
	fileOnly := newTestIdentity(t)
	writeTrust(t, a.home, a.client.thumbprint+" test-client\n"+fileOnly.thumbprint+" allow=file file-only\n")
	h := a.home
	out := t.TempDir()
	writeFile(t, filepath.Join(h, "work", "probe"), []byte("job"))
	writeFile(t, filepath.Join(h, "packages", "probe"), []byte("pkg"))
	writeFile(t, filepath.Join(h, "uploads", "probe"), []byte("journal"))
	writeFile(t, filepath.Join(h, "audit.log.1"), []byte("{}\n"))
	writeFile(t, filepath.Join(h, "apps", "shop", "v1", "Deploy.sh"), []byte("echo v1"))
	writeFile(t, filepath.Join(h, "apps", "shop", ".releases.json"), []byte("{}"))
	writeFile(t, filepath.Join(h, "apps", "shop", "shared", "config.yml"), []byte("shared"))
	mkLink(t, "v1", filepath.Join(h, "apps", "shop", "current"))
	writeFile(t, filepath.Join(a.cfg.filesDir(), "ok.txt"), []byte("ok"))
	writeFile(t, filepath.Join(out, "plain.txt"), []byte("plain"))
	mkLink(t, filepath.Join("..", "tentacle.key"), filepath.Join(a.cfg.filesDir(), "key"))
	mkLink(t, homeTrustPath(h), filepath.Join(a.cfg.filesDir(), "trust"))
	mkLink(t, "..", filepath.Join(a.cfg.filesDir(), "up"))
	mkLink(t, filepath.Join(out, "plain.txt"), filepath.Join(a.cfg.filesDir(), "outside"))
	mkLink(t, h, filepath.Join(out, "home"))
	if err := os.Link(a.cfg.keyPath(), filepath.Join(out, "hard-key")); err != nil {
		t.Fatal(err)
	}
	key, _ := os.ReadFile(a.cfg.keyPath())
	trust, _ := os.ReadFile(homeTrustPath(h))

	forbidden := []struct{ name, path string }{
		{"key", a.cfg.keyPath()},
		{"certificate", a.cfg.certPath()},
		{"trust list", homeTrustPath(h)},
		{"audit log", a.cfg.auditPath()},
		{"rotated audit log", filepath.Join(h, "audit.log.1")},
		{"lock", filepath.Join(h, "agent.lock")},
		{"work", filepath.Join(h, "work", "probe")},
		{"packages", filepath.Join(h, "packages", "probe")},
		{"uploads journal", filepath.Join(h, "uploads", "probe")},
		{"release through current", filepath.Join(h, "apps", "shop", "current", "Deploy.sh")},
		{"release", filepath.Join(h, "apps", "shop", "v1", "Deploy.sh")},
		{"release record", filepath.Join(h, "apps", "shop", ".releases.json")},
		{"relative link to the key", "key"},
		{"absolute link to the trust list", "trust"},
		{"link to .. then work", "up/work/probe"},
		{"cleaned ..", filepath.Join(a.cfg.filesDir(), "..", "tentacle.key")},
		{"outside link to the home", filepath.Join(out, "home", "tentacle.key")},
		{"hard link to the key", filepath.Join(out, "hard-key")},
	}
	allowed := []struct{ name, path, want string }{
		{"files", "ok.txt", "ok"},
		{"an app's shared folder", filepath.Join(h, "apps", "shop", "shared", "config.yml"), "shared"},
		{"outside the home", filepath.Join(out, "plain.txt"), "plain"},
		{"a link from files to outside", "outside", "plain"},
	}
	for _, who := range []struct {
		name string
		id   *identity
	}{{"unrestricted", a.client}, {"allow=file", fileOnly}} {
		c := dialAs(t, a, who.id)
		for _, tt := range forbidden {
			t.Run(who.name+"/download "+tt.name, func(t *testing.T) {
				got, err := download(c, tt.path)
				if rpcKind(err) != kindForbidden || !strings.Contains(err.Error(), "file.* never reaches") {
					t.Fatalf("download %q: %d bytes, err %v; want forbidden", tt.path, len(got), err)
				}
				if err := ping(c); err != nil {
					t.Fatal(err)
				}
			})
		}
		for _, tt := range allowed {
			t.Run(who.name+"/download "+tt.name, func(t *testing.T) {
				if got, err := download(c, tt.path); err != nil || string(got) != tt.want {
					t.Fatalf("download %q: %q, %v; want %q", tt.path, got, err, tt.want)
				}
			})
		}
	}

	c := dialAs(t, a, fileOnly)
	for _, tt := range []struct{ name, path, mustNotExist string }{
		{"the trust list", homeTrustPath(h), ""},
		{"a link to the trust list", "trust", ""},
		{"the key", a.cfg.keyPath(), ""},
		{"a new file in the home", filepath.Join(h, "extra"), filepath.Join(h, "extra")},
		{"a new folder in the home", filepath.Join(h, "newdir", "x"), filepath.Join(h, "newdir")},
		{"a new job folder", filepath.Join(h, "work", "newjob", "script.sh"), filepath.Join(h, "work", "newjob")},
		{"a parent that links into work", "up/work/x", filepath.Join(h, "work", "x")},
		{"a release", filepath.Join(h, "apps", "shop", "v1", "Deploy.sh"), ""},
		{"a release through current", filepath.Join(h, "apps", "shop", "current", "x"), filepath.Join(h, "apps", "shop", "v1", "x")},
		{"a new app", filepath.Join(h, "apps", "new", "shared", "x"), filepath.Join(h, "apps", "new")},
		{"the audit log", a.cfg.auditPath(), ""},
	} {
		t.Run("upload to "+tt.name, func(t *testing.T) {
			_, err := upload(c, map[string]any{"path": tt.path}, []byte("0000 pwned allow=script\n"))
			if rpcKind(err) != kindForbidden {
				t.Fatalf("upload %q: err %v, want forbidden", tt.path, err)
			}
			if tt.mustNotExist != "" {
				if _, err := os.Lstat(tt.mustNotExist); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("%q was made: %v", tt.mustNotExist, err)
				}
			}
			if err := ping(c); err != nil {
				t.Fatal(err)
			}
		})
	}
	if got, _ := os.ReadFile(a.cfg.keyPath()); !bytes.Equal(got, key) {
		t.Fatal("the key changed")
	}
	if got, _ := os.ReadFile(homeTrustPath(h)); !bytes.Equal(got, trust) {
		t.Fatalf("the trust list changed: %q", got)
	}
	if fi, err := os.Lstat(filepath.Join(a.cfg.filesDir(), "trust")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the link to the trust list was replaced: %v", err)
	}
	for _, p := range []string{filepath.Join(h, "apps", "shop", "shared", "new.cfg"), filepath.Join(a.cfg.filesDir(), "sub", "a.txt")} {
		if _, err := upload(c, map[string]any{"path": p}, []byte("fine")); err != nil {
			t.Fatalf("upload %q: %v", p, err)
		}
	}
	// An upload through a link replaces the file it leads to; the link stays.
	if _, err := upload(c, map[string]any{"path": "outside"}, []byte("through the link")); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(out, "plain.txt")); string(got) != "through the link" {
		t.Fatalf("the link's target holds %q", got)
	}
	if fi, err := os.Lstat(filepath.Join(a.cfg.filesDir(), "outside")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the link was replaced: %v", err)
	}

	t.Run("bind mount of the home", func(t *testing.T) {
		bind := filepath.Join(t.TempDir(), "bind")
		os.Mkdir(bind, 0o700)
		if out, err := exec.Command("mount", "--bind", h, bind).CombinedOutput(); err != nil {
			t.Skipf("cannot bind-mount here (%v: %s)", err, out)
		}
		defer exec.Command("umount", bind).Run()
		if _, err := download(c, filepath.Join(bind, "tentacle.key")); rpcKind(err) != kindForbidden {
			t.Fatalf("key through a bind mount: %v, want forbidden", err)
		}
		if _, err := upload(c, map[string]any{"path": filepath.Join(bind, "trusted_servers")}, []byte("x")); rpcKind(err) != kindForbidden {
			t.Fatalf("trust list through a bind mount: %v, want forbidden", err)
		}
	})
}

// TestFileGuardMountedIdentity: a key, certificate and trust list mounted
// outside the home (a Secret, a ConfigMap with its ..data links) are just as
// unreachable.
func TestFileGuardMountedIdentity(t *testing.T) {
	secret, configMap := t.TempDir(), t.TempDir()
	if _, err := newIdentity(filepath.Join(secret, "tls.key"), filepath.Join(secret, "tls.crt")); err != nil {
		t.Fatal(err)
	}
	client := newTestIdentity(t)
	data := filepath.Join(configMap, "..2026_01_01")
	writeFile(t, filepath.Join(data, "trusted_servers"), []byte(client.thumbprint+" mounted\n"))
	mkLink(t, filepath.Base(data), filepath.Join(configMap, "..data"))
	mkLink(t, filepath.Join("..data", "trusted_servers"), filepath.Join(configMap, "trusted_servers"))
	a := startAgent(t, func(c *config) {
		c.CertFile, c.KeyFile = filepath.Join(secret, "tls.crt"), filepath.Join(secret, "tls.key")
		c.TrustFile = filepath.Join(configMap, "trusted_servers")
	})
	c := dialAs(t, a, client)
	for _, p := range []string{
		filepath.Join(secret, "tls.key"),
		filepath.Join(secret, "tls.crt"),
		filepath.Join(configMap, "trusted_servers"),
		filepath.Join(configMap, "..data", "trusted_servers"),
		filepath.Join(data, "trusted_servers"),
	} {
		if _, err := download(c, p); rpcKind(err) != kindForbidden {
			t.Errorf("download %q: %v, want forbidden", p, err)
		}
		if _, err := upload(c, map[string]any{"path": p}, []byte("x")); rpcKind(err) != kindForbidden {
			t.Errorf("upload %q: %v, want forbidden", p, err)
		}
	}
	if _, err := upload(c, map[string]any{"path": filepath.Join(secret, "notes.txt")}, []byte("fine")); err != nil {
		t.Fatalf("another file beside the mounted key: %v", err)
	}
}

// TestFileGuardRace: a folder swapped between a real one and a link to
// the home while downloads run never yields the agent's key.
func TestFileGuardRace(t *testing.T) {
	a := startAgent(t)
	key, _ := os.ReadFile(a.cfg.keyPath())
	x := t.TempDir()
	writeFile(t, filepath.Join(x, "real", "tentacle.key"), []byte("decoy"))
	mkLink(t, a.home, filepath.Join(x, "link"))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		d := filepath.Join(x, "d")
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, n := range []string{"real", "link"} {
				os.Rename(filepath.Join(x, n), d)
				os.Rename(d, filepath.Join(x, n))
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	c := a.dial(t)
	decoys := 0
	for range 300 {
		got, err := download(c, filepath.Join(x, "d", "tentacle.key"))
		switch {
		case bytes.Equal(got, key):
			t.Fatal("the agent's key was downloaded through a swapped folder")
		case err == nil:
			decoys++
		case rpcKind(err) != kindForbidden && rpcKind(err) != kindNotFound && rpcKind(err) != kindConflict && rpcKind(err) != kindIO:
			t.Fatalf("unexpected error: %v", err)
		}
	}
	t.Logf("%d of 300 downloads got the decoy", decoys)
}

// TestFilesOption: a trust entry's files= confines file.* to its folders,
// which neither "..", links nor relative paths leave; the agent's own state
// stays closed even inside them.
func TestFilesOption(t *testing.T) {
	a := startAgent(t)
	base := t.TempDir()
	in, outside := filepath.Join(base, "in"), filepath.Join(base, "out")
	writeFile(t, filepath.Join(in, "x"), []byte("in"))
	writeFile(t, filepath.Join(outside, "x"), []byte("out"))
	writeFile(t, filepath.Join(a.cfg.filesDir(), "r.txt"), []byte("files"))
	mkLink(t, filepath.Join(outside, "x"), filepath.Join(in, "abs-out"))
	mkLink(t, filepath.Join("..", "out", "x"), filepath.Join(in, "rel-out"))
	mkLink(t, filepath.Join(in, "x"), filepath.Join(in, "abs-in"))
	mkLink(t, "x", filepath.Join(in, "rel-in"))
	confined, atHome := newTestIdentity(t), newTestIdentity(t)
	writeTrust(t, a.home, fmt.Sprintf("%s test-client\n%s allow=file files=%s,%s confined\n%s files=%s at-home\n",
		a.client.thumbprint, confined.thumbprint, in, a.cfg.filesDir(), atHome.thumbprint, a.home))
	c := dialAs(t, a, confined)
	for _, tt := range []struct {
		name, path, want, kind string
	}{
		{"inside", filepath.Join(in, "x"), "in", ""},
		{"an absolute link inside", filepath.Join(in, "abs-in"), "in", ""},
		{"a relative link inside", filepath.Join(in, "rel-in"), "in", ""},
		{"a relative path under files/, one of its folders", "r.txt", "files", ""},
		{"outside", filepath.Join(outside, "x"), "", kindForbidden},
		{"an absolute link out", filepath.Join(in, "abs-out"), "", kindForbidden},
		{"a relative link out", filepath.Join(in, "rel-out"), "", kindForbidden},
		{"a prefix that is not the folder", in + "2/x", "", kindForbidden},
		{"the agent's key", a.cfg.keyPath(), "", kindForbidden},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := download(c, tt.path)
			if rpcKind(err) != tt.kind || tt.kind == "" && string(got) != tt.want {
				t.Fatalf("download %q: %q, %v; want %q, %q", tt.path, got, err, tt.want, tt.kind)
			}
		})
	}
	if _, err := upload(c, map[string]any{"path": filepath.Join(in, "new", "deep", "f")}, []byte("made")); err != nil {
		t.Fatalf("upload inside, folders made: %v", err)
	}
	if _, err := upload(c, map[string]any{"path": filepath.Join(outside, "new", "f")}, []byte("no")); rpcKind(err) != kindForbidden {
		t.Fatalf("upload outside: %v, want forbidden", err)
	}
	if _, err := os.Stat(filepath.Join(outside, "new")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a folder was made outside files=: %v", err)
	}
	if _, err := upload(c, map[string]any{"path": filepath.Join(in, "rel-out")}, []byte("no")); rpcKind(err) != kindForbidden {
		t.Fatalf("upload through a link out: %v, want forbidden", err)
	}
	if got, _ := os.ReadFile(filepath.Join(outside, "x")); string(got) != "out" {
		t.Fatalf("the file outside changed: %q", got)
	}
	if err := dialAs(t, a, confined).call("script.start", map[string]any{"script": "true"}, nil); rpcKind(err) != kindForbidden {
		t.Fatalf("script.start by an allow=file entry: %v", err)
	}

	h := dialAs(t, a, atHome)
	if _, err := download(h, a.cfg.keyPath()); rpcKind(err) != kindForbidden {
		t.Fatalf("files=<home> reached the key: %v", err)
	}
	if got, err := download(h, "r.txt"); err != nil || string(got) != "files" {
		t.Fatalf("files=<home> and files/r.txt: %q, %v", got, err)
	}
}

// TestPathShape: a path over PATH_MAX or with more than a few hundred
// elements is refused at once, before the file system is touched.
func TestPathShape(t *testing.T) {
	a := startAgent(t)
	c := a.dial(t)
	deep := filepath.Join(a.cfg.filesDir(), strings.Repeat("d/", 300)+"f")
	for _, tt := range []struct{ name, path, want string }{
		{"over PATH_MAX", "/" + strings.Repeat("a", 5000), "at most 4096"},
		{"300 elements", deep, "more than 256 elements"},
		{"900 KB of elements", strings.Repeat("a/", 450000), "at most 4096"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			_, err := upload(c, map[string]any{"path": tt.path}, []byte("x"))
			if rpcKind(err) != kindInvalidParams || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("upload: %v, want invalid_params %q", err, tt.want)
			}
			if _, err := download(c, tt.path); rpcKind(err) != kindInvalidParams {
				t.Fatalf("download: %v, want invalid_params", err)
			}
			// What is left is reading the line: under -race 900 KB of JSON
			// each way takes a few seconds; walking it took minutes.
			t.Logf("upload and download refused in %v", time.Since(start))
			if d := time.Since(start); d > 15*time.Second {
				t.Fatalf("took %v", d)
			}
			if err := ping(c); err != nil {
				t.Fatal(err)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(a.cfg.filesDir(), "d")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the deep path made folders: %v", err)
	}
}

// TestNonRegularFiles: a FIFO, a device, a socket or a folder is refused at
// once, never opened for reading (a FIFO would block), never replaced.
func TestNonRegularFiles(t *testing.T) {
	a := startAgent(t)
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if out, err := exec.Command("mkfifo", fifo).CombinedOutput(); err != nil {
		t.Skipf("no mkfifo here (%v: %s)", err, out)
	}
	sock := filepath.Join(dir, "sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Skipf("no unix sockets here: %v", err)
	}
	defer ln.Close()
	c := a.dial(t)
	for _, tt := range []struct{ name, path, says string }{
		{"FIFO", fifo, "a FIFO"},
		{"device", os.DevNull, "a device"},
		{"socket", sock, "a socket"},
		{"folder", dir, "a folder"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c.tc.SetDeadline(time.Now().Add(5 * time.Second))
			defer c.tc.SetDeadline(time.Time{})
			if _, err := download(c, tt.path); rpcKind(err) != kindNotFound || !strings.Contains(err.Error(), tt.says) {
				t.Fatalf("download: %v, want not_found saying %q", err, tt.says)
			}
			if _, err := upload(c, map[string]any{"path": tt.path}, []byte("x")); rpcKind(err) != kindConflict {
				t.Fatalf("upload: %v, want conflict", err)
			}
			if err := ping(c); err != nil {
				t.Fatal(err)
			}
		})
	}
	if fi, err := os.Lstat(fifo); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Fatalf("the FIFO was replaced: %v", err)
	}
}

// TestConcurrentUploadsReserveSpace: two uploads that each fit but not
// together: the second is refused while the first holds its space, and the
// space comes back when the first ends, committed or cut.
func TestConcurrentUploadsReserveSpace(t *testing.T) {
	fs := mountTmpfs(t, "8m")
	if fs == "" {
		t.Skip("needs a tmpfs the test can mount (root on Linux)")
	}
	a := startAgent(t)
	first := randBytes(5 << 20)
	start := func(c *clientConn, name string) {
		sendHead(t, c, "file.upload", map[string]any{"path": filepath.Join(fs, name), "size": len(first)}, first[:1<<20])
		waitFor(t, "1 MiB in the first upload's temporary file", 10*time.Second, func() bool {
			for _, p := range leftovers(a, fs) {
				if fi, err := os.Stat(p); err == nil && filepath.Dir(p) == fs && fi.Size() >= 1<<20 {
					return true
				}
			}
			return false
		})
	}
	// The second is refused before a byte of it is written (its body is
	// read and discarded, PROTOCOL §3). Without the promise it would pass
	// the check, as 7 MiB are free, and fit, and the first would then fail
	// for space.
	second := func() error {
		_, err := upload(a.dial(t), map[string]any{"path": filepath.Join(fs, "second")}, first)
		return err
	}

	c1 := a.dial(t)
	start(c1, "first")
	if err := second(); rpcKind(err) != kindTooLarge || !strings.Contains(err.Error(), "promised to uploads in progress") {
		t.Fatalf("second upload while the first holds its space: %v, want too_large at once", err)
	}
	if _, err := c1.tc.Write(first[1<<20:]); err != nil {
		t.Fatal(err)
	}
	var res fileResult
	if err := c1.receive(&res); err != nil {
		t.Fatalf("first upload: %v", err)
	}
	os.Remove(filepath.Join(fs, "first"))

	c2 := a.dial(t)
	start(c2, "cut")
	c2.Close()
	waitFor(t, "the cut upload's temporary file to go", 10*time.Second, func() bool { return len(leftovers(a, fs)) == 0 })
	c3 := a.dial(t)
	if _, err := upload(c3, map[string]any{"path": filepath.Join(fs, "after")}, first); err != nil {
		t.Fatalf("upload after the cut one released its space: %v", err)
	}
	a.srv.pkgs.space.mu.Lock()
	left := len(a.srv.pkgs.space.reserved)
	a.srv.pkgs.space.mu.Unlock()
	if left != 0 {
		t.Fatalf("space still promised after every upload ended: %v", a.srv.pkgs.space.reserved)
	}
}
