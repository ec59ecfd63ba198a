package main

// fleet_files.go: upload and push in fan-out mode. The local file is opened
// and hashed once; every agent reads it through its own section reader.

import (
	"errors"
	"os"
)

// fanUpload sends the file local to remote on every selected agent.
func (c *clientCmd) fanUpload(local, remote, mode string, overwrite bool) int {
	lf, fi, sha := c.openHashed(local)
	if lf == nil {
		return 1
	}
	defer lf.Close()
	return c.onEach("", func(x *onAgent) agentResult {
		res, err := uploadOpen(x.cc, lf, fi.Size(), sha, remote, mode, overwrite, nil)
		if err != nil {
			return callFailed("file.upload", err)
		}
		x.say("uploaded %q to %q (%s, sha256 %s)", local, res.Path, humanBytes(res.Size), res.SHA256)
		return agentResult{outcome: outOK, fields: map[string]any{"path": res.Path, "size": res.Size, "sha256": res.SHA256}}
	})
}

// pushTo puts the open package file into the cache of agent a over cc,
// resuming once on a new connection if this one breaks. It tells whether
// any byte had to be sent.
func (f *fanOut) pushTo(a *agentEntry, cc *clientConn, pf *os.File, size int64, sha string) (sent bool, err error) {
	sent, err = pushOpen(cc, pf, size, sha, nil)
	var re *rpcError
	if err == nil || errors.As(err, &re) {
		return sent, err
	}
	cc2, fail := f.connect(a)
	if fail != nil {
		return sent, err
	}
	defer cc2.Close()
	again, err := pushOpen(cc2, pf, size, sha, nil)
	return sent || again, err
}

// fanPush puts the package into every selected agent's cache.
func (c *clientCmd) fanPush(pf *os.File, size int64, sha string) int {
	return c.onEach("", func(x *onAgent) agentResult {
		sent, err := x.f.pushTo(x.a, x.cc, pf, size, sha)
		if err != nil {
			return callFailed("push", err)
		}
		how := "already there: nothing sent"
		if sent {
			how = "sent " + humanBytes(size)
		}
		x.say("%s (%s)", sha, how)
		return agentResult{outcome: outOK, fields: map[string]any{"sha256": sha, "sent": sent}}
	})
}
