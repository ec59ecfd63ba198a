//go:build !linux

package main

// reaper_other.go: child processes outside Linux. There is no subreaper to
// run: macOS and Windows hand orphans to launchd or to nobody, and a
// container's PID 1 is a Linux concern. startChild and waitChild are the
// plain calls, kept so that the rest of the agent is written once.

import (
	"log/slog"
	"os/exec"
)

// startChild starts cmd.
func startChild(cmd *exec.Cmd) error { return cmd.Start() }

// waitChild waits for cmd (started by startChild).
func waitChild(cmd *exec.Cmd) error { return cmd.Wait() }

// startReaper does nothing here; see reaper_linux.go.
func startReaper(log *slog.Logger) (stop func()) { return func() {} }
