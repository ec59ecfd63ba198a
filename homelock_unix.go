//go:build unix

package main

import (
	"fmt"
	"os"
	"syscall"
)

// lockHome takes an exclusive lock on <home>/agent.lock, so that a second
// agent on the same home (which would mark the first one's jobs lost and
// kill them) refuses to start. The kernel drops the lock when the process
// dies, so a crash leaves nothing stale.
func lockHome(home string) (release func(), err error) {
	path := home + string(os.PathSeparator) + "agent.lock"
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("failed to open lock %q: %v", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another agent is running on home %q (it holds %q): stop it first, or use another -home", home, path)
	}
	return func() { f.Close() }, nil
}
