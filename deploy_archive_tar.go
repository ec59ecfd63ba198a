package main

// deploy_archive_tar.go: extracting a tar stream, entry by entry as it arrives.

import (
	"archive/tar"
	"io"
	"io/fs"
	"strings"
)

// extractTar extracts a plain tar stream.
func (x *extractor) extractTar(r io.Reader) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := x.tarEntry(tr, h); err != nil {
			return err
		}
	}
}

// Tar entry types that carry nothing to extract: a pax global header (what
// "git archive" writes first), a GNU volume label, a Solaris ACL.
const (
	tarTypeVolume = 'V'
	tarTypeACL    = 'A'
)

// tarEntry extracts one tar entry: files (type 7, contiguous, is one; GNU
// and pax sparse files are expanded, keeping their holes), folders, symlinks
// and hard links to an earlier file. tar's own extension headers never
// reach here.
func (x *extractor) tarEntry(tr *tar.Reader, h *tar.Header) error {
	switch h.Typeflag {
	case tar.TypeXGlobalHeader, tarTypeVolume, tarTypeACL:
		if err := x.ctx.Err(); err != nil {
			return err
		}
		return x.countEntry()
	}
	regular := h.Typeflag == tar.TypeReg || h.Typeflag == tar.TypeCont || h.Typeflag == tar.TypeGNUSparse
	size := h.Size
	if !regular {
		size = 0
	}
	clean, dir, err := x.admit(h.Name, size)
	if err != nil {
		return err
	}
	switch {
	case regular:
		if dir {
			return errorf(kindForbidden, "archive entry %q refused: a file whose name ends in \"/\"", h.Name)
		}
		if err := x.place(h.Name, clean, kindFileEntry); err != nil {
			return err
		}
		x.stats.Files++
		return x.writeFile(h.Name, clean, fs.FileMode(h.Mode), h.Size, tr, isSparse(h))
	case h.Typeflag == tar.TypeDir:
		fresh, err := x.claim(h.Name, clean, kindDirEntry)
		if err != nil || !fresh {
			return err
		}
		return x.makeFolders(clean, true)
	case h.Typeflag == tar.TypeSymlink:
		if err := checkLinkTarget(h.Name, h.Linkname); err != nil {
			return err
		}
		if err := x.place(h.Name, clean, kindLinkEntry); err != nil {
			return err
		}
		x.stats.Links++
		return x.root.Symlink(h.Linkname, clean)
	case h.Typeflag == tar.TypeLink:
		target, tdir, err := checkEntryPath(h.Linkname)
		if err != nil || tdir || target == "" || x.entries[x.names.key(target)]&^kindMade != kindFileEntry {
			return errorf(kindForbidden, "archive entry %q refused: hard link to %q, which is not an earlier file of the package", h.Name, h.Linkname)
		}
		if err := x.place(h.Name, clean, kindFileEntry); err != nil {
			return err
		}
		x.stats.Files++
		return x.hardLink(h.Name, clean, target)
	case h.Typeflag == tar.TypeChar, h.Typeflag == tar.TypeBlock:
		return errorf(kindForbidden, "archive entry %q refused: device", h.Name)
	case h.Typeflag == tar.TypeFifo:
		return errorf(kindForbidden, "archive entry %q refused: fifo", h.Name)
	}
	return errorf(kindForbidden, "archive entry %q refused: unsupported entry type %q", h.Name, h.Typeflag)
}

// place claims clean for a file or link and makes the folders above it.
func (x *extractor) place(name, clean string, kind entryKind) error {
	if _, err := x.claim(name, clean, kind); err != nil {
		return err
	}
	return x.makeFolders(clean, false)
}

// isSparse reports a GNU sparse file, old style (type S) or pax (the
// GNU.sparse records; Go's reader has already read the map and expands the
// holes as zeros, which writeFile turns back into holes).
func isSparse(h *tar.Header) bool {
	if h.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range h.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}
