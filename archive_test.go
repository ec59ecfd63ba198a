package main

// archive_test.go: extraction of archives made in the tests: the good cases,
// every refusal of issue 5's list, fuzzing, and the extraction benchmark
// beside tar and unzip.

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// tEntry is one entry of an archive made by a test.
type tEntry struct {
	name string
	typ  byte   // tar type flag; 0 means a regular file
	body string // a file's data
	link string // a symlink's or hard link's target
	mode int64  // 0 means 0644 (0755 for folders)
	size int64  // if non-zero, the size the header declares instead of len(body)
}

func file(name, body string) tEntry { return tEntry{name: name, body: body} }
func dirE(name string) tEntry       { return tEntry{name: name, typ: tar.TypeDir} }
func symlink(name, target string) tEntry {
	return tEntry{name: name, typ: tar.TypeSymlink, link: target}
}

// makeTar writes entries as a tar stream. A declared size different from the
// body's is written raw, as a lying header would be.
func makeTar(t testing.TB, entries []tEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: e.mode, Format: tar.FormatPAX}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if e.size != 0 {
			// A lying header: write it by hand, then the body raw.
			h.Size = e.size
			tw.Flush()
			raw := rawTarHeader(e.name, e.size, h.Mode)
			buf.Write(raw)
			buf.WriteString(e.body)
			if pad := len(e.body) % 512; pad != 0 {
				buf.Write(make([]byte, 512-pad))
			}
			continue
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			io.WriteString(tw, e.body)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// rawTarHeader is a ustar header block with a size that need not match the
// data that follows.
func rawTarHeader(name string, size, mode int64) []byte {
	h := make([]byte, 512)
	copy(h, name)
	copy(h[100:], fmt.Sprintf("%07o\x00", mode))
	copy(h[108:], "0000000\x000000000\x00")
	copy(h[124:], fmt.Sprintf("%011o\x00", size))
	copy(h[136:], "00000000000\x00")
	h[156] = '0'
	copy(h[257:], "ustar\x0000")
	copy(h[148:], "        ")
	var sum int64
	for _, c := range h {
		sum += int64(c)
	}
	copy(h[148:], fmt.Sprintf("%06o\x00 ", sum))
	return h
}

func gz(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

// makeZip writes entries as a zip, with Unix modes.
func makeZip(t testing.TB, entries []tEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, e := range entries {
		h := &zip.FileHeader{Name: e.name, Method: zip.Deflate}
		mode := fs.FileMode(e.mode)
		if mode == 0 {
			mode = 0o644
		}
		switch e.typ {
		case tar.TypeDir:
			h.SetMode(fs.ModeDir | 0o755)
		case tar.TypeSymlink:
			h.SetMode(fs.ModeSymlink | 0o777)
			e.body = e.link
		case tar.TypeFifo:
			h.SetMode(fs.ModeNamedPipe | 0o644)
		default:
			h.SetMode(mode)
		}
		w, err := zw.CreateHeader(h)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(w, e.body)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// extractBytes writes pkg to a file and extracts it into <parent>/rel,
// returning the parent (to check nothing appeared beside rel) and the error.
func extractBytes(t testing.TB, pkg []byte, format string, lim extractLimits) (parent, rel string, st extractStats, err error) {
	t.Helper()
	parent = t.TempDir()
	rel = filepath.Join(parent, "rel")
	if err := os.Mkdir(rel, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "pkg")
	if err := os.WriteFile(p, pkg, 0o644); err != nil {
		t.Fatal(err)
	}
	st, err = extractPackage(context.Background(), p, format, rel, lim)
	return parent, rel, st, err
}

var testLimits = extractLimits{MaxSize: 64 << 20, MaxFiles: 1000}

// onlyRelease fails unless parent holds nothing but the release folder.
func onlyRelease(t testing.TB, parent string) {
	t.Helper()
	des, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	if len(des) != 1 || des[0].Name() != "rel" {
		var names []string
		for _, d := range des {
			names = append(names, d.Name())
		}
		t.Fatalf("something was written beside the release: %q", names)
	}
}

func TestExtractGood(t *testing.T) {
	entries := []tEntry{
		dirE("bin/"),
		{name: "bin/run", body: "#!/bin/sh\necho hi\n", mode: 0o4755},
		file("./conf/app.conf", "x=1\n"),
		dirE("conf/"), // explicit after implicit: fine
		file("lib/libx.so.1", "ELF"),
		symlink("lib/libx.so", "libx.so.1"),
		symlink("conf/bin", "../bin"),
		symlink("up", "lib/../conf/./app.conf"),
		file("empty", ""),
	}
	for _, format := range []string{formatTarGz, formatTar, formatZip} {
		t.Run(format, func(t *testing.T) {
			var pkg []byte
			switch format {
			case formatTarGz:
				pkg = gz(t, makeTar(t, entries))
			case formatTar:
				pkg = makeTar(t, entries)
			case formatZip:
				pkg = makeZip(t, entries)
			}
			// Recognised from the bytes.
			parent, rel, st, err := extractBytes(t, pkg, "", testLimits)
			if err != nil {
				t.Fatal(err)
			}
			onlyRelease(t, parent)
			if st.Files != 4 || st.Links != 3 {
				t.Errorf("stats = %+v, want 4 files, 3 links", st)
			}
			got, err := os.ReadFile(filepath.Join(rel, "conf", "bin", "run"))
			if err != nil || string(got) != "#!/bin/sh\necho hi\n" {
				t.Errorf("conf/bin/run through the symlink = %q, %v", got, err)
			}
			if got, _ := os.ReadFile(filepath.Join(rel, "up")); string(got) != "x=1\n" {
				t.Errorf("up = %q", got)
			}
			if runtime.GOOS != "windows" {
				fi, err := os.Stat(filepath.Join(rel, "bin", "run"))
				if err != nil {
					t.Fatal(err)
				}
				if fi.Mode()&0o100 == 0 || fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != 0 {
					t.Errorf("bin/run mode = %v: want the exec bit, no setuid", fi.Mode())
				}
				fi, _ = os.Stat(filepath.Join(rel, "conf", "app.conf"))
				if fi.Mode()&0o111 != 0 {
					t.Errorf("app.conf mode = %v: want no exec bit", fi.Mode())
				}
			}
		})
	}
}

// TestExtractRefused is issue 5's list of traversal and abuse cases: each
// fails with a clear error naming the entry and writes nothing outside.
func TestExtractRefused(t *testing.T) {
	big := strings.Repeat("\x00", 4<<20)
	tests := []struct {
		name    string
		entries []tEntry
		kind    string
		msg     string // the error names this
		formats []string
	}{
		{"dotdot", []tEntry{file("../x", "evil")}, kindForbidden, `"../x"`, nil},
		{"dotdot inside", []tEntry{file("a/../../x", "evil")}, kindForbidden, `".." element`, nil},
		{"absolute", []tEntry{file("/abs", "evil")}, kindForbidden, `"/abs"`, nil},
		{"drive letter", []tEntry{file("C:/x", "evil")}, kindForbidden, "absolute", nil},
		{"backslash", []tEntry{file(`a\..\b`, "evil")}, kindForbidden, "backslash", nil},
		{"nul", []tEntry{file("a\x00b", "evil")}, kindForbidden, "control character", []string{formatZip}},
		{"control", []tEntry{file("a\nb", "evil")}, kindForbidden, "control character", nil},
		{"symlink to /etc", []tEntry{symlink("etc", "/etc")}, kindForbidden, `"/etc"`, nil},
		{"symlink to ..", []tEntry{symlink("up", "..")}, kindForbidden, "outside the release", nil},
		{"symlink deep ..", []tEntry{symlink("a/b/up", "../../../x")}, kindForbidden, "outside the release", nil},
		{"symlink chain", []tEntry{symlink("s", "."), symlink("t", "s/../x")}, kindForbidden, "outside the release", nil},
		{"symlink via symlink", []tEntry{file("a/b/c", "x"), symlink("a/s", "b"), symlink("t", "a/s/../../..")}, kindForbidden, "outside the release", nil},
		{"symlink loop", []tEntry{symlink("a", "b"), symlink("b", "a")}, kindForbidden, "outside the release", nil},
		{"dir then symlink then file", []tEntry{dirE("d/"), symlink("d", "/tmp"), file("d/x", "evil")}, kindForbidden, `"d"`, nil},
		{"symlink then file through it", []tEntry{dirE("real/"), symlink("l", "real"), file("l/x", "evil")}, kindForbidden, "through the symlink", nil},
		{"file then file inside", []tEntry{file("f", "x"), file("f/x", "evil")}, kindForbidden, "is a file", nil},
		{"hard link", []tEntry{{name: "h", typ: tar.TypeLink, link: "/etc/passwd"}}, kindForbidden, "hard link", []string{formatTarGz}},
		{"hard link inside", []tEntry{file("a", "x"), {name: "h", typ: tar.TypeLink, link: "a"}}, kindForbidden, "hard link", []string{formatTarGz}},
		{"fifo", []tEntry{{name: "p", typ: tar.TypeFifo}}, kindForbidden, "fifo", nil},
		{"char device", []tEntry{{name: "null", typ: tar.TypeChar}}, kindForbidden, "device", []string{formatTarGz}},
		{"block device", []tEntry{{name: "sda", typ: tar.TypeBlock}}, kindForbidden, "device", []string{formatTarGz}},
		{"duplicate", []tEntry{file("a", "one"), file("a", "two")}, kindForbidden, "duplicate", nil},
		{"duplicate dot", []tEntry{file("a/b", "one"), file("./a//b", "two")}, kindForbidden, "duplicate", nil},
		{"duplicate dir", []tEntry{dirE("d/"), dirE("d/")}, kindForbidden, "duplicate", nil},
		{"too many entries", []tEntry{file("1", ""), file("2", ""), file("3", ""), file("4", ""), file("5", ""), file("6", "")}, kindTooLarge, "entries", nil},
		{"too big", []tEntry{file("big", big), file("big2", big)}, kindTooLarge, `"big2"`, nil},
		{"release itself", []tEntry{file(".", "x")}, kindForbidden, `"."`, nil},
		{"empty name", []tEntry{file("", "x")}, kindForbidden, "empty name", []string{formatZip}},
	}
	lim := extractLimits{MaxSize: 6 << 20, MaxFiles: 5}
	for _, tt := range tests {
		formats := tt.formats
		if formats == nil {
			formats = []string{formatTarGz, formatZip}
		}
		for _, format := range formats {
			t.Run(tt.name+"/"+format, func(t *testing.T) {
				outside := filepath.Join(t.TempDir(), "victim")
				os.WriteFile(outside, []byte("untouched"), 0o644)
				var pkg []byte
				if format == formatZip {
					pkg = makeZip(t, tt.entries)
				} else {
					pkg = gz(t, makeTar(t, tt.entries))
				}
				parent, _, _, err := extractBytes(t, pkg, format, lim)
				if err == nil {
					t.Fatal("extraction succeeded, want a refusal")
				}
				if rpcKind(err) != tt.kind || !strings.Contains(err.Error(), tt.msg) {
					t.Fatalf("error = %v (%s), want kind %s naming %s", err, rpcKind(err), tt.kind, tt.msg)
				}
				onlyRelease(t, parent)
				if b, _ := os.ReadFile(outside); string(b) != "untouched" {
					t.Fatalf("file outside changed: %q", b)
				}
			})
		}
	}
}

// TestExtractCorrupt covers bombs, lying headers and truncation.
func TestExtractCorrupt(t *testing.T) {
	lim := extractLimits{MaxSize: 1 << 20, MaxFiles: 100}
	zeros := strings.Repeat("\x00", 64<<20)

	// A zip whose central directory understates a file's size: the bomb
	// inflates to 64 MiB, the header claims 100 bytes.
	lying := makeZip(t, []tEntry{file("bomb", zeros)})
	patchZipSize(t, lying, 100)
	// A zip declaring more than the bound: refused before any write.
	declaredBig := makeZip(t, []tEntry{file("bomb", zeros)})
	// A tar.gz bomb: 64 MiB of zeros in a few KiB.
	tgzBomb := gz(t, makeTar(t, []tEntry{file("bomb", zeros)}))
	if ratio := float64(len(zeros)) / float64(len(tgzBomb)); ratio < 500 {
		t.Fatalf("bomb ratio only %.0f", ratio)
	}
	// Tar headers that lie: more data than declared, and less.
	tarMore := gz(t, makeTar(t, []tEntry{{name: "a", body: strings.Repeat("x", 2000), size: 10}, file("b", "y")}))
	tarLess := gz(t, makeTar(t, []tEntry{{name: "a", body: "short", size: 5000}}))
	whole := gz(t, makeTar(t, []tEntry{file("a", strings.Repeat("data ", 20000))}))
	tests := []struct {
		name   string
		pkg    []byte
		format string
		kind   string
		max    int64 // at most this many bytes may have been written
	}{
		{"zip lying size", lying, formatZip, kindInvalidParams, 101},
		{"zip declared bomb", declaredBig, formatZip, kindTooLarge, 0},
		{"tar.gz bomb", tgzBomb, formatTarGz, kindTooLarge, 0},
		{"tar more than header", tarMore, formatTarGz, kindInvalidParams, 10},
		{"tar less than header", tarLess, formatTarGz, kindInvalidParams, 5000},
		{"truncated gzip", whole[:len(whole)-10], formatTarGz, kindInvalidParams, 100000},
		{"truncated gzip header", whole[:5], formatTarGz, kindInvalidParams, 0},
		{"truncated zip", declaredBig[:len(declaredBig)/2], formatZip, kindInvalidParams, 0},
		{"garbage", []byte("hello, this is not an archive at all"), "", kindInvalidParams, 0},
		{"garbage as tar.gz", bytes.Repeat([]byte{0x1f, 0x8b, 8, 0}, 200), "", kindInvalidParams, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			parent, rel, _, err := extractBytes(t, tt.pkg, tt.format, lim)
			if err == nil {
				t.Fatal("extraction succeeded, want an error")
			}
			if rpcKind(err) != tt.kind {
				t.Fatalf("error = %v (%s), want %s", err, rpcKind(err), tt.kind)
			}
			onlyRelease(t, parent)
			if n := treeSize(t, rel); n > tt.max {
				t.Fatalf("%d bytes written, want at most %d", n, tt.max)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Fatalf("took %v", d)
			}
		})
	}
}

// patchZipSize rewrites the uncompressed size of every central directory
// entry (and local header) of z in place.
func patchZipSize(t testing.TB, z []byte, size uint32) {
	t.Helper()
	n := 0
	for i := 0; i+4 <= len(z); i++ {
		switch string(z[i : i+4]) {
		case "PK\x01\x02":
			binary.LittleEndian.PutUint32(z[i+24:], size)
			n++
		case "PK\x07\x08": // data descriptor
			binary.LittleEndian.PutUint32(z[i+12:], size)
		}
	}
	if n == 0 {
		t.Fatal("no central directory entry patched")
	}
}

// treeSize sums the sizes of the regular files under dir.
func treeSize(t testing.TB, dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

func TestExtractCancel(t *testing.T) {
	var entries []tEntry
	for i := range 200 {
		entries = append(entries, file(fmt.Sprintf("f%d", i), strings.Repeat("x", 1000)))
	}
	p := filepath.Join(t.TempDir(), "pkg")
	os.WriteFile(p, gz(t, makeTar(t, entries)), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := extractPackage(ctx, p, "", t.TempDir(), testLimits)
	if err != context.Canceled {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestDetectFormat(t *testing.T) {
	tests := []struct {
		name string
		b    []byte
		want string
	}{
		{"zip", makeZip(t, []tEntry{file("a", "b")}), formatZip},
		{"empty zip", makeZip(t, nil), formatZip},
		{"tar.gz", gz(t, makeTar(t, []tEntry{file("a", "b")})), formatTarGz},
		{"tar", makeTar(t, []tEntry{file("a", "b")}), formatTar},
		{"v7 tar", v7Tar(), formatTar},
		{"text", []byte("#!/bin/sh\n"), ""},
		{"empty", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := detectFormat(bytes.NewReader(tt.b))
			if got != tt.want || (tt.want == "") != (err != nil) {
				t.Fatalf("detectFormat = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

// v7Tar is a pre-POSIX tar header: no "ustar" magic, only a checksum.
func v7Tar() []byte {
	h := rawTarHeader("a", 0, 0o644)
	copy(h[257:], make([]byte, 8))
	copy(h[148:], "        ")
	var sum int64
	for _, c := range h {
		sum += int64(c)
	}
	copy(h[148:], fmt.Sprintf("%06o\x00 ", sum))
	return append(h, make([]byte, 1024)...)
}

func TestLinkEscapes(t *testing.T) {
	tests := []struct {
		links map[string]string
		link  string
		want  bool
	}{
		{map[string]string{"a": "b"}, "a", false},
		{map[string]string{"a/b": "../c"}, "a/b", false},
		{map[string]string{"a/b": "../../c"}, "a/b", true},
		{map[string]string{"s": ".", "t": "s/../x"}, "t", true},
		{map[string]string{"s": "a/b", "t": "s/../x"}, "t", false},
		{map[string]string{"s": "a/b", "t": "s/../../../x"}, "t", true},
		{map[string]string{"a": "b", "b": "a"}, "a", true},
		{map[string]string{"d/s": "..", "t": "d/s/x"}, "t", false},
		{map[string]string{"d/s": "..", "t": "d/s/../x"}, "t", true},
	}
	for _, tt := range tests {
		if got := linkEscapes(tt.links, tt.link); got != tt.want {
			t.Errorf("linkEscapes(%v, %q) = %v, want %v", tt.links, tt.link, got, tt.want)
		}
	}
}

func FuzzEntryPath(f *testing.F) {
	for _, s := range []string{"a", "a/b", "./a", "../x", "/abs", `a\..\b`, "a/../b", "C:/x", "a//b/", ".", "./", "..", "a/./b", "NUL", "a\x00b", "é/ü"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		clean, dir, err := checkEntryPath(name)
		if err != nil {
			if rpcKind(err) != kindForbidden || !strings.Contains(err.Error(), fmt.Sprintf("%q", name)) {
				t.Fatalf("error %v does not name the entry", err)
			}
			return
		}
		if clean == "" {
			if !dir {
				t.Fatalf("%q accepted as the release folder but not as a folder", name)
			}
			return
		}
		root := filepath.FromSlash("/release")
		joined := filepath.Join(root, filepath.FromSlash(clean))
		if !strings.HasPrefix(joined, root+string(filepath.Separator)) || !filepath.IsLocal(clean) {
			t.Fatalf("%q accepted as %q, which leaves the release", name, clean)
		}
		for _, p := range strings.Split(clean, "/") {
			if p == ".." || p == "." || p == "" {
				t.Fatalf("%q accepted as %q with element %q", name, clean, p)
			}
		}
		if strings.ContainsAny(clean, "\\\x00") || !utf8Valid(clean) {
			t.Fatalf("%q accepted as %q", name, clean)
		}
	})
}

func utf8Valid(s string) bool { return strings.ToValidUTF8(s, "\uFFFD") == s }

func FuzzExtract(f *testing.F) {
	seeds := [][]tEntry{
		{file("a", "b"), dirE("d/"), file("d/e", "f"), symlink("l", "d/e")},
		{symlink("s", "."), symlink("t", "s/../x")},
		{file("../x", "y")},
	}
	for _, s := range seeds {
		f.Add(makeZip(f, s))
		f.Add(gz(f, makeTar(f, s)))
		f.Add(makeTar(f, s))
	}
	lim := extractLimits{MaxSize: 1 << 20, MaxFiles: 64}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, format := range []string{formatZip, formatTarGz, formatTar, ""} {
			parent, rel, _, _ := extractBytes(t, data, format, lim)
			onlyRelease(t, parent)
			if n := treeSize(t, rel); n > lim.MaxSize {
				t.Fatalf("%d bytes written past the %d bound", n, lim.MaxSize)
			}
			// Every symlink left must resolve inside the release.
			filepath.WalkDir(rel, func(p string, d fs.DirEntry, err error) error {
				if err != nil || d.Type()&fs.ModeSymlink == 0 {
					return nil
				}
				target, err := filepath.EvalSymlinks(p)
				if err != nil {
					return nil // dangling, within the release
				}
				realRel, _ := filepath.EvalSymlinks(rel)
				if target != realRel && !strings.HasPrefix(target, realRel+string(filepath.Separator)) {
					t.Fatalf("symlink %q resolves to %q, outside %q", p, target, realRel)
				}
				return nil
			})
		}
	})
}

// benchArchive builds (once per run) a package of 10,000 small files of
// about 10 KiB each, ~100 MB, half-compressible like real code and assets.
func benchArchive(b *testing.B, format string) string {
	b.Helper()
	p := filepath.Join(os.TempDir(), fmt.Sprintf("tentacle-bench-%d.%s", os.Getpid(), format))
	if _, err := os.Stat(p); err == nil {
		return p
	}
	rng := rand.New(rand.NewSource(1))
	words := []string{"func", "return", "if", "err", "nil", "package", "import", "the", "release", "deploy", "{", "}", "(", ")", "\n", "\t"}
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	var tw *tar.Writer
	var zw *zip.Writer
	var gw *gzip.Writer
	if format == formatZip {
		zw = zip.NewWriter(f)
	} else {
		gw = gzip.NewWriter(f)
		tw = tar.NewWriter(gw)
	}
	body := make([]byte, 0, 12<<10)
	for i := range 10000 {
		body = body[:0]
		for len(body) < 10<<10 {
			if rng.Intn(3) == 0 {
				body = fmt.Appendf(body, "%x ", rng.Uint64())
			} else {
				body = append(body, words[rng.Intn(len(words))]...)
				body = append(body, ' ')
			}
		}
		name := fmt.Sprintf("app/mod%02d/sub%d/file%05d.txt", i%50, i%7, i)
		if zw != nil {
			w, _ := zw.CreateHeader(&zip.FileHeader{Name: name, Method: zip.Deflate})
			w.Write(body)
		} else {
			tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
			tw.Write(body)
		}
	}
	if zw != nil {
		zw.Close()
	} else {
		tw.Close()
		gw.Close()
	}
	f.Close()
	b.Cleanup(func() { os.Remove(p) })
	return p
}

// benchAgainst times our extraction and a baseline command on the same
// package into fresh folders, alternately, and reports medians and ratios.
// The disk is flushed (untimed) before each timed step so that one's
// writeback does not slow the next. "ours" includes the single syncfs a
// deploy does; the baseline does not sync, so it is also given with a sync
// after it, for a like-for-like durable figure.
func benchAgainst(b *testing.B, format string, baseline func(pkg, dest string) *exec.Cmd) {
	pkg := benchArchive(b, format)
	dir := b.TempDir()
	var ours, extract, base, baseSync []time.Duration
	runOurs := func(d string) {
		t0 := time.Now()
		st, err := extractPackage(context.Background(), pkg, "", d, extractLimits{MaxSize: 1 << 30, MaxFiles: 100000})
		extract = append(extract, time.Since(t0))
		if err == nil {
			err = syncTree(d)
		}
		ours = append(ours, time.Since(t0))
		if err != nil || st.Files != 10000 {
			b.Fatalf("extract: %v, %+v", err, st)
		}
	}
	runBase := func(d string) {
		t0 := time.Now()
		if out, err := baseline(pkg, d).CombinedOutput(); err != nil {
			b.Fatalf("baseline: %v\n%s", err, out)
		}
		base = append(base, time.Since(t0))
		syncTree(d)
		baseSync = append(baseSync, time.Since(t0))
	}
	// fresh gives an empty folder on a quiet disk: the last run's files are
	// removed and everything flushed, untimed.
	fresh := func(name string) string {
		os.RemoveAll(filepath.Join(dir, "ours"))
		os.RemoveAll(filepath.Join(dir, "base"))
		d := filepath.Join(dir, name)
		os.Mkdir(d, 0o755)
		syncTree(dir)
		return d
	}
	b.ResetTimer()
	b.StopTimer()
	for i := 0; i < b.N; i++ {
		// Alternate who goes first, so neither always inherits the other's
		// background writeback.
		if i%2 == 0 {
			runOurs(fresh("ours"))
			runBase(fresh("base"))
		} else {
			runBase(fresh("base"))
			runOurs(fresh("ours"))
		}
	}
	b.StopTimer()
	mo, me, mb, mbs := medianDur(ours), medianDur(extract), medianDur(base), medianDur(baseSync)
	b.ReportMetric(float64(mo.Milliseconds()), "ours-ms")
	b.ReportMetric(float64(mb.Milliseconds()), "baseline-ms")
	b.ReportMetric(float64(mo)/float64(mb), "ratio")
	b.Logf("%s, medians of %d: tentacle %v (extract %v + one syncfs) | baseline %v, with a sync after %v | ratio %.2f (extract alone %.2f, both synced %.2f)",
		format, len(ours), mo.Round(time.Millisecond), me.Round(time.Millisecond), mb.Round(time.Millisecond), mbs.Round(time.Millisecond),
		float64(mo)/float64(mb), float64(me)/float64(mb), float64(mo)/float64(mbs))
}

func medianDur(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func BenchmarkExtractTarGz(b *testing.B) {
	if _, err := exec.LookPath("tar"); err != nil {
		b.Skip("no tar to compare with")
	}
	benchAgainst(b, formatTarGz, func(pkg, dest string) *exec.Cmd {
		return exec.Command("tar", "-xzf", pkg, "-C", dest)
	})
}

func BenchmarkExtractZip(b *testing.B) {
	if _, err := exec.LookPath("unzip"); err != nil {
		b.Skip("no unzip to compare with")
	}
	benchAgainst(b, formatZip, func(pkg, dest string) *exec.Cmd {
		return exec.Command("unzip", "-q", pkg, "-d", dest)
	})
}
