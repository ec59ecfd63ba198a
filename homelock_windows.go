package main

import (
	"fmt"
	"os"
)

// lockHome keeps <home>/agent.lock open for the agent's life. On Windows the
// file is opened without sharing by deleting and recreating it: a second
// agent fails to delete a file the first holds open.
func lockHome(home string) (release func(), err error) {
	path := home + string(os.PathSeparator) + "agent.lock"
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("another agent is running on home %q (it holds %q): stop it first, or use another -home", home, path)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("another agent is running on home %q (it holds %q): stop it first, or use another -home", home, path)
	}
	return func() { f.Close(); os.Remove(path) }, nil
}
