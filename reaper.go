package main

// reaper.go: child processes. Every process the agent starts goes through
// startChild and waitChild, so that the orphan reaper (when the agent is
// PID 1 or a subreaper) never steals the exit status of one of its own.
// STUB: the operations issue adds the reaper.

import "os/exec"

// startChild starts cmd and registers its pid as the agent's own.
func startChild(cmd *exec.Cmd) error { return cmd.Start() }

// waitChild waits for cmd (started by startChild) and forgets its pid.
func waitChild(cmd *exec.Cmd) error { return cmd.Wait() }
