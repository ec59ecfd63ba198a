package main

// deploy_archive_names.go: what an archive entry's name may be, how a zip's name
// is decoded, and how the extractor remembers the paths it made.

import (
	"archive/zip"
	"encoding/binary"
	"hash/crc32"
	"hash/maphash"
	"path/filepath"
	"runtime"
	"strings"
	"unicode/utf8"
)

// maxLinkTarget bounds a symlink's target and an entry's name (PATH_MAX on
// Linux).
const maxLinkTarget = 4096

// bytesNames: a name that is not UTF-8 is kept as its bytes (PROTOCOL §5),
// where the file system stores bytes. APFS and NTFS cannot: there such a
// name is refused rather than silently changed.
const bytesNames = runtime.GOOS != "darwin" && runtime.GOOS != "windows"

// checkEntryPath turns an archive entry's name into a clean relative path
// with "/" separators, or refuses it: empty names, absolute paths (a leading
// "/", a drive "C:" or a UNC prefix), ".." elements, backslashes, NUL and
// control characters, and (on Windows) reserved names and colons. dir
// reports a trailing "/".
func checkEntryPath(name string) (clean string, dir bool, err error) {
	bad := func(why string) (string, bool, error) {
		return "", false, errorf(kindForbidden, "archive entry %q refused: %s", name, why)
	}
	if name == "" {
		return bad("empty name")
	}
	if len(name) > maxLinkTarget {
		return bad("name longer than 4096 bytes")
	}
	if !bytesNames && !utf8.ValidString(name) {
		return bad("name is not valid UTF-8, which this system cannot store")
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return bad("control character in name")
		}
		if r == '\\' {
			return bad("backslash in name (a Windows path separator)")
		}
	}
	if strings.HasPrefix(name, "/") {
		return bad("absolute path")
	}
	dir = strings.HasSuffix(name, "/")
	var b strings.Builder
	for p := range strings.SplitSeq(name, "/") {
		switch p {
		case "", ".":
		case "..":
			return bad(`".." element`)
		default:
			if b.Len() > 0 {
				b.WriteByte('/')
			}
			b.WriteString(p)
		}
	}
	if b.Len() == 0 {
		if dir { // "./" is the release folder itself: nothing to do
			return "", true, nil
		}
		return bad("empty name")
	}
	clean = b.String()
	if hasDrive(clean) { // "C:/x", and "./C:/x" too
		return bad("absolute path")
	}
	if !filepath.IsLocal(filepath.FromSlash(clean)) {
		return bad("not a local path on this system")
	}
	return clean, dir, nil
}

// hasDrive reports a Windows drive prefix: a letter and a colon, alone or
// before a separator ("C:", "C:/x", `C:\x`). "x:y" is a file name here (on
// Windows filepath.IsLocal refuses it, since there it names a stream).
func hasDrive(s string) bool {
	if len(s) < 2 || s[1] != ':' || s[0]|0x20 < 'a' || s[0]|0x20 > 'z' {
		return false
	}
	return len(s) == 2 || s[2] == '/' || s[2] == '\\'
}

// checkLinkTarget refuses only the symlink targets that cannot be made: a
// link is created as it is, wherever it points, since extraction never
// follows one (PROTOCOL §5 step 1).
func checkLinkTarget(name, target string) error {
	bad := func(why string) error {
		return errorf(kindForbidden, "archive entry %q refused: symlink %s", name, why)
	}
	switch {
	case target == "":
		return bad("with an empty target")
	case len(target) > maxLinkTarget:
		return bad("target longer than 4096 bytes")
	case strings.IndexByte(target, 0) >= 0:
		return bad("target holds a NUL byte")
	case !bytesNames && !utf8.ValidString(target):
		return bad("target is not valid UTF-8, which this system cannot store")
	}
	return nil
}

// cp437 is code page 437's upper half, the encoding of a zip name without
// the UTF-8 flag (APPNOTE appendix D); the lower half is ASCII.
var cp437 = []rune("ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»" +
	"░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀" +
	"αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u00a0")

// Zip "version made by" hosts whose tools write "\" separators and
// OEM-code-page names: MS-DOS FAT, OS/2 HPFS, NTFS (10 in APPNOTE, 11 in
// Info-ZIP and Go), VFAT.
func zipFromWindows(h *zip.FileHeader) bool {
	switch h.CreatorVersion >> 8 {
	case 0, 6, 10, 11, 14:
		return true
	}
	return false
}

// zipName is a zip entry's name as the archive meant it: the UTF-8 name of
// an Info-ZIP Unicode Path field (0x7075) that matches the header's name; the
// name itself if flagged UTF-8; CP437 if a Windows tool made it without the
// flag; otherwise its bytes as they are (Unix tools write the local
// encoding, nowadays UTF-8, without the flag). In a zip made on Windows "\"
// separates folders (PowerShell 5.1's Compress-Archive writes it).
func zipName(h *zip.FileHeader) string {
	name := h.Name
	win := zipFromWindows(h)
	if h.Flags&0x800 == 0 {
		if u, ok := zipUnicodePath(h); ok {
			name = u
		} else if win {
			name = decodeCP437(name)
		}
	}
	if win {
		name = strings.ReplaceAll(name, `\`, "/")
	}
	return name
}

// zipUnicodePath finds the Info-ZIP Unicode Path extra field: version 1, the
// CRC-32 of the header's name (so a tool that renamed the entry without
// updating the field is not believed), then the name in UTF-8.
func zipUnicodePath(h *zip.FileHeader) (string, bool) {
	for e := h.Extra; len(e) >= 4; {
		tag, size := binary.LittleEndian.Uint16(e), int(binary.LittleEndian.Uint16(e[2:]))
		if size > len(e)-4 {
			return "", false
		}
		d := e[4 : 4+size]
		e = e[4+size:]
		if tag != 0x7075 || len(d) < 5 || d[0] != 1 {
			continue
		}
		if binary.LittleEndian.Uint32(d[1:]) != crc32.ChecksumIEEE([]byte(h.Name)) || !utf8.Valid(d[5:]) {
			return "", false
		}
		return string(d[5:]), true
	}
	return "", false
}

func decodeCP437(s string) string {
	i := 0
	for i < len(s) && s[i] < 0x80 {
		i++
	}
	if i == len(s) {
		return s
	}
	b := []rune(s[:i])
	for j := i; j < len(s); j++ {
		if c := s[j]; c < 0x80 {
			b = append(b, rune(c))
		} else {
			b = append(b, cp437[c-0x80])
		}
	}
	return string(b)
}

// nameKey stands for a clean path in the extractor's memory of what it made:
// a 128-bit hash, so that a package of 200,000 entries with 4 KB names does
// not hold 800 MB of names (issue 13). The two seeds are random to each
// extraction, so a package cannot aim at a collision; and a collision could
// only refuse a good package (a path taken for a duplicate, a file or a
// link), never let an entry through a link.
type nameKey [2]uint64

// namer computes nameKeys, folding case where the file system does.
type namer struct {
	a, b maphash.Hash
	fold bool
}

func newNamer() *namer {
	n := &namer{fold: runtime.GOOS == "darwin" || runtime.GOOS == "windows"}
	n.a.SetSeed(maphash.MakeSeed())
	n.b.SetSeed(maphash.MakeSeed())
	return n
}

// walk calls fn with the key of each folder above clean, and then of clean
// itself (last true), hashing the path once from the start, so a deep path
// costs its length, not its length times its depth. It stops at the first
// false.
func (n *namer) walk(clean string, fn func(prefix string, k nameKey, last bool) bool) {
	n.a.Reset()
	n.b.Reset()
	for i := 0; ; {
		j := strings.IndexByte(clean[i:], '/')
		last := j < 0
		if last {
			j = len(clean)
		} else {
			j += i
		}
		c := clean[i:j]
		if n.fold {
			c = strings.ToLower(c)
		}
		if i > 0 {
			n.a.WriteByte('/')
			n.b.WriteByte('/')
		}
		n.a.WriteString(c)
		n.b.WriteString(c)
		if !fn(clean[:j], nameKey{n.a.Sum64(), n.b.Sum64()}, last) || last {
			return
		}
		i = j + 1
	}
}

// key is clean's nameKey.
func (n *namer) key(clean string) nameKey {
	var k nameKey
	n.walk(clean, func(_ string, kk nameKey, last bool) bool { k = kk; return true })
	return k
}
