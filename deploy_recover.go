package main

// deploy_recover.go: what the agent does with its apps at start-up, after a
// crash or a full disk. A release still "running" belongs to a deploy that
// was interrupted: it reads lost, current goes back where that deploy found
// it if the deploy had moved it (and only then, so later deploys are never
// undone, and only to a whole release), and its folder goes if it never
// became whole. A removal that was cut short is finished. And each deploy
// job's outcome is made to agree with its release's record, which is
// written first (see settle).

import (
	"cmp"
	"os"
	"path/filepath"
	"slices"
)

// recover repairs every app's folder and record after an earlier run.
func (d *deployManager) recover() {
	outcomes := map[string]string{} // deploy job ticket → outcome
	for _, it := range d.jobs.list(jobViewer{all: true}) {
		if it.Kind == "deploy" && it.Outcome != nil {
			outcomes[it.Ticket] = *it.Outcome
		}
	}
	des, _ := os.ReadDir(d.cfg.appsDir())
	for _, de := range des {
		if de.IsDir() && validName(de.Name()) {
			d.recoverApp(de.Name(), outcomes)
		}
	}
}

// recoverApp repairs one app, given the outcomes of the deploy jobs the
// job journal knows.
func (d *deployManager) recoverApp(app string, outcomes map[string]string) {
	dir := d.appDir(app)
	d.removeLeftovers(app, dir)
	meta, err := loadMeta(dir)
	if err != nil {
		d.log.Error("failed to read an app's releases", "app", app, "err", err)
		return
	}
	changed := false
	if meta.Format < metaFormat {
		changed = d.markLegacy(app, dir, meta)
	}
	settled := map[string]bool{} // tickets of the deploys interrupted
	for i := range meta.Releases {
		if r := &meta.Releases[i]; r.Outcome == releaseRunning {
			d.interrupted(app, dir, meta, r, outcomes[r.Ticket])
			changed, settled[r.Ticket] = true, true
		}
	}
	var hidden []string
	if meta.Format == metaFormat {
		cur := readCurrent(dir)
		meta.Releases = slices.DeleteFunc(meta.Releases, func(r release) bool {
			// Recorded successful but not whole: its removal was cut short.
			if r.Outcome != outcomeSuccess || r.Release == cur || isWhole(dir, r) {
				return false
			}
			h, err := hideRelease(dir, r.Release)
			if err != nil {
				d.log.Error("failed to remove a release whose removal was cut short", "app", app, "release", r.Release, "err", err)
				return false
			}
			d.log.Warn("finished removing a release whose removal was cut short", "app", app, "release", r.Release)
			hidden, changed = append(hidden, h), true
			return true
		})
	}
	cur := d.repairCurrent(app, dir, meta)
	if changed {
		if err := saveMeta(dir, meta); err != nil {
			d.log.Error("failed to save an app's releases", "app", app, "err", err)
		}
	}
	for _, h := range hidden {
		removeHidden(h)
	}
	for _, r := range meta.Releases {
		if o, ok := outcomes[r.Ticket]; ok && (o != r.Outcome || settled[r.Ticket]) {
			d.agree(app, dir, r, cur)
		}
	}
}

// removeLeftovers removes what an agent stopped mid-way left in an app's
// folder: temporary files, and the hidden folders of removals.
func (d *deployManager) removeLeftovers(app, dir string) {
	for _, pat := range []string{".*.tmp*", filepath.Join(wholeDir, ".*.tmp*")} {
		tmps, _ := filepath.Glob(filepath.Join(dir, pat))
		for _, t := range tmps {
			os.Remove(t)
		}
	}
	hidden, _ := filepath.Glob(filepath.Join(dir, removingPrefix+"*"))
	for _, h := range hidden {
		if err := os.RemoveAll(h); err != nil {
			d.log.Error("failed to delete a removed release's folder", "app", app, "path", h, "err", err)
		}
	}
}

// markLegacy marks whole the successful releases of a record written
// before whole markers existed: that agent took a successful release whose
// folder was there as whole. It reports whether the record changed.
func (d *deployManager) markLegacy(app, dir string, meta *appMeta) bool {
	if err := os.MkdirAll(filepath.Join(dir, wholeDir), 0o755); err != nil {
		d.log.Error("failed to mark an app's releases whole", "app", app, "err", err)
		return false
	}
	for _, r := range meta.Releases {
		if r.Outcome == outcomeSuccess && isDir(filepath.Join(dir, r.Release)) {
			if err := markWhole(dir, r.Release, r.Package); err != nil {
				d.log.Error("failed to mark an app's releases whole", "app", app, "release", r.Release, "err", err)
				return false
			}
		}
	}
	meta.Format = metaFormat
	return true
}

// interrupted settles release r of a deploy the agent stopped in: outcome
// lost (or the job's, if only the job journal could record it), current
// put back if this deploy had moved it, and the folder removed if it never
// became whole.
func (d *deployManager) interrupted(app, dir string, meta *appMeta, r *release, jobOutcome string) {
	cur := readCurrent(dir)
	if cur == r.Release {
		// Nothing after this deploy moved current: rollback refuses a
		// release that is not successful, and deploys wait for this one.
		back := r.Previous
		if p := meta.find(back); back != "" && (p == nil || !isGood(dir, *p)) {
			back = newestGood(dir, meta, r.Release)
		}
		switch {
		case back == "" && r.Previous != "":
			d.log.Error("not putting current back after an interrupted deploy: no whole successful release to put it on", "app", app, "release", r.Release, "previous", r.Previous)
		default:
			if err := switchCurrent(dir, back); err != nil {
				d.log.Error("failed to put current back after an interrupted deploy", "app", app, "release", r.Release, "current", back, "err", err)
			}
		}
	}
	if !isWhole(dir, *r) {
		if _, err := discardRelease(dir, r.Release); err != nil {
			d.log.Error("failed to remove the release of an interrupted deploy", "app", app, "release", r.Release, "err", err)
		}
	}
	r.Outcome, r.Phase = outcomeLost, "interrupted: the agent stopped"
	if jobOutcome != "" && jobOutcome != outcomeLost {
		r.Outcome, r.Phase = jobOutcome, "unrecorded: the agent could not write its outcome"
	}
	d.log.Warn("found an interrupted deploy: marked its release "+r.Outcome, "app", app, "release", r.Release,
		"ticket", r.Ticket, "current", cmp.Or(readCurrent(dir), "(none)"), "current_was", cmp.Or(cur, "(none)"))
}

// newestGood is the newest whole successful release of meta other than
// not, or "".
func newestGood(dir string, meta *appMeta, not string) string {
	for i := len(meta.Releases) - 1; i >= 0; i-- {
		if r := meta.Releases[i]; r.Release != not && isGood(dir, r) {
			return r.Release
		}
	}
	return ""
}

// repairCurrent points current at the newest whole successful release if
// it names a folder that is gone (an agent before this one could leave it
// so), and returns current.
func (d *deployManager) repairCurrent(app, dir string, meta *appMeta) string {
	cur := readCurrent(dir)
	if cur == "" || isDir(filepath.Join(dir, cur)) {
		return cur
	}
	to := newestGood(dir, meta, "")
	if to == "" {
		d.log.Error("current names a release that is gone, and no whole successful release is left", "app", app, "current", cur)
		return cur
	}
	if err := switchCurrent(dir, to); err != nil {
		d.log.Error("failed to repair current", "app", app, "current", cur, "err", err)
		return cur
	}
	d.log.Warn("current named a release that is gone: pointed it at the newest whole successful release", "app", app, "current", to, "current_was", cur)
	return to
}

// agree makes a deploy job's outcome and result those of its release's
// record. The release is settled first, so a job that reads otherwise was
// cut short after that (the agent killed during retention, say); and the
// job of a deploy that was interrupted gets the result it never had.
func (d *deployManager) agree(app, dir string, r release, cur string) {
	j, err := d.jobs.get(r.Ticket, jobViewer{all: true})
	if err != nil {
		return
	}
	j.logf("release %s of this deploy is recorded %s; current is %s", r.Release, r.Outcome, cmp.Or(cur, "(none)"))
	j.setResult(deployResult(app, dir, r, cur))
	j.end(r.Outcome)
	d.log.Info("a deploy job takes its outcome from its release's record", "ticket", r.Ticket, "app", app, "release", r.Release, "outcome", r.Outcome)
}
