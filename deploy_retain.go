package main

// deploy_retain.go: what a deploy removes once it has ended (PROTOCOL §5
// "Deploys", step 6): older releases, by the retention rule, and the
// packages no release uses any more.
//
// A release is removed so that no reader ever sees half of one: its folder
// is first renamed to a hidden name (out of sight at once, whatever its
// size), then its marker goes, then the record is saved without it, and
// only then is the hidden folder deleted. A crash at any point leaves either
// the whole release, recorded, or a record that recovery drops and a hidden
// folder it deletes (deploy_recover.go).

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// packageHold keeps a deploy's package from pruning until the deploy ends.
// It is bound to its job once the job exists, so that a deploy that ends
// without running (a queued one cancelled) lets go of it as well.
type packageHold struct {
	sha string
	j   *job // nil until bindHold
}

func (d *deployManager) hold(sha string) *packageHold {
	h := &packageHold{sha: sha}
	d.mu.Lock()
	d.holds = append(d.holds, h)
	d.mu.Unlock()
	return h
}

func (d *deployManager) bindHold(h *packageHold, j *job) {
	d.mu.Lock()
	h.j = j
	d.mu.Unlock()
}

func (d *deployManager) unhold(h *packageHold) {
	d.mu.Lock()
	d.holds = slices.DeleteFunc(d.holds, func(o *packageHold) bool { return o == h })
	d.mu.Unlock()
}

// usedPackages are the packages of every recorded release of every app and
// of every deploy not finished yet; nil if an app's record is unreadable.
func (d *deployManager) usedPackages() map[string]bool {
	used := map[string]bool{}
	d.mu.Lock()
	d.holds = slices.DeleteFunc(d.holds, func(h *packageHold) bool { return h.j != nil && h.j.currentState() == stateDone })
	for _, h := range d.holds {
		used[h.sha] = true
	}
	d.mu.Unlock()
	des, _ := os.ReadDir(d.cfg.appsDir())
	for _, de := range des {
		if !de.IsDir() || !validName(de.Name()) {
			continue
		}
		meta, err := loadMeta(d.appDir(de.Name()))
		if err != nil {
			d.log.Error("not pruning packages: an app's release list is unreadable", "app", de.Name(), "err", err)
			return nil
		}
		for _, r := range meta.Releases {
			used[r.Package] = true
		}
	}
	return used
}

// retentionPlan splits rels (oldest first) into the releases kept and those
// removed, by PROTOCOL §5 step 6: the newest keep good releases stay, and so
// do current and self (the release being deployed); any other release stays
// only while it is among the newest keep of any outcome, so failed
// attempts never push the good ones out. A release recorded as successful
// that is not whole on disk counts as not good.
func retentionPlan(rels []release, cur, self string, keep int, good func(release) bool) (kept, removed []release) {
	goods := 0
	for i := len(rels) - 1; i >= 0; i-- {
		r, newest := rels[i], len(rels)-i <= keep
		g := good(r)
		if r.Release == cur || r.Release == self || (g && goods < keep) || (!g && newest) {
			kept = append(kept, r)
		} else {
			removed = append(removed, r)
		}
		if g {
			goods++
		}
	}
	slices.Reverse(kept)
	slices.Reverse(removed)
	return kept, removed
}

// retain removes app's releases that retentionPlan does not keep, then the
// packages no release uses: those of the releases just removed at once,
// others once the package grace is over (they were pushed and not yet
// deployed).
func (d *deployManager) retain(j *job, app string, keep int, self string) {
	dir := d.appDir(app)
	st := d.app(app)
	st.mu.Lock()
	meta, err := loadMeta(dir)
	if err != nil {
		st.mu.Unlock()
		j.logf("retention skipped: %v", err)
		return
	}
	_, removed := retentionPlan(meta.Releases, readCurrent(dir), self, keep, func(r release) bool { return isGood(dir, r) })
	var hidden, names []string
	for _, r := range removed {
		h, err := hideRelease(dir, r.Release)
		if err != nil {
			j.logf("retention: failed to remove release %s: %v", r.Release, err)
			continue
		}
		hidden, names = append(hidden, h), append(names, r.Release)
	}
	if len(names) > 0 {
		meta.Releases = slices.DeleteFunc(meta.Releases, func(r release) bool { return slices.Contains(names, r.Release) })
		if err := saveMeta(dir, meta); err != nil {
			// Their folders are gone already: as not whole, they are
			// never current again, and the next retention drops them.
			j.logf("retention: failed to save the release list: %v", err)
			syncDir(dir) // the renames, before the deletions (see discardRelease)
		}
	}
	st.mu.Unlock()
	for _, h := range hidden {
		if err := removeHidden(h); err != nil {
			j.logf("retention: failed to delete %q: %v", h, err)
		}
	}
	if len(names) > 0 {
		j.logf("retention: kept %d releases, removed %s", len(meta.Releases), strings.Join(names, ", "))
	}

	used := d.usedPackages()
	if used == nil {
		return
	}
	var gone []string
	for _, r := range removed {
		if slices.Contains(names, r.Release) && !used[r.Package] && !slices.Contains(gone, r.Package) && d.dropPackage(r.Package) {
			gone = append(gone, r.Package)
		}
	}
	gone = append(gone, d.pkgs.prune(used)...)
	if len(gone) > 0 {
		j.logf("retention: pruned %d packages no kept release uses: %s", len(gone), strings.Join(gone, ", "))
	}
}

// dropPackage removes a cached package now, unless an upload holds it.
func (d *deployManager) dropPackage(sha string) bool {
	if !d.pkgs.lock(sha) {
		return false
	}
	defer d.pkgs.unlock(sha)
	p, ok := d.pkgs.path(sha)
	if !ok || os.Remove(p) != nil {
		return false
	}
	syncDir(filepath.Dir(p))
	return true
}

// hideRelease takes release rel of dir out of sight: its folder is renamed
// to a hidden name, then its marker removed. It returns the hidden folder
// to delete once the record no longer has the release ("" if there was no
// folder).
func hideRelease(dir, rel string) (string, error) {
	hidden := filepath.Join(dir, removingPrefix+rel+"-"+randomHex(6))
	if err := os.Rename(filepath.Join(dir, rel), hidden); err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		hidden = ""
	}
	os.Remove(filepath.Join(dir, wholeDir, rel))
	return hidden, nil
}

// removeHidden deletes a folder hideRelease made ("" is none).
func removeHidden(hidden string) error {
	if hidden == "" {
		return nil
	}
	return os.RemoveAll(hidden)
}

// discardRelease removes release rel's folder, out of sight first, for a
// release whose record stays (a failed extraction); gone says whether
// there was a folder.
func discardRelease(dir, rel string) (gone bool, err error) {
	hidden, err := hideRelease(dir, rel)
	if err != nil || hidden == "" {
		return false, err
	}
	// The rename must be on disk before the deletion is: otherwise a power
	// loss could bring the half-deleted folder back under its name.
	syncDir(dir)
	return true, removeHidden(hidden)
}
