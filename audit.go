package main

// audit.go: the audit trail of changing requests.
// STUB: to be built by the operations issue.

import (
	"io"
	"time"
)

// auditLog appends one JSON line per changing request to <home>/audit.log.
type auditLog struct{}

func openAuditLog(path string, maxSize int64) (*auditLog, error) { return &auditLog{}, nil }

// record appends c's request: its method, peer, c.audit parameters, outcome
// (from err) and duration since start.
func (a *auditLog) record(c *call, start time.Time, err error) {}

func (a *auditLog) close() {}

func cmdAudit(args []string, stdout, stderr io.Writer) int   { return notYet(stderr, "audit") }
func cmdHealth(args []string, stdout, stderr io.Writer) int  { return notYet(stderr, "health") }
func cmdService(args []string, stdout, stderr io.Writer) int { return notYet(stderr, "service") }
