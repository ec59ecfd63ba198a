package main

// rpc.go: what a method is and how it answers: error kinds, the one method
// table (protocolMethods), a request being handled (call), strict params
// decoding, and the two methods every agent has, ping and info (PROTOCOL
// §4, §5).

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Error kinds and their JSON-RPC codes (PROTOCOL §4).
const (
	kindParse          = "parse_error"
	kindInvalidRequest = "invalid_request"
	kindMethodNotFound = "method_not_found"
	kindInvalidParams  = "invalid_params"
	kindInternal       = "internal"
	kindNotFound       = "not_found"
	kindConflict       = "conflict"
	kindIntegrity      = "integrity"
	kindTooLarge       = "too_large"
	kindForbidden      = "forbidden"
	kindIO             = "io"
	kindRevoked        = "revoked"
)

var errorCodes = map[string]int{
	kindParse: -32700, kindInvalidRequest: -32600, kindMethodNotFound: -32601,
	kindInvalidParams: -32602, kindInternal: -32603, kindNotFound: 1001,
	kindConflict: 1002, kindIntegrity: 1003, kindTooLarge: 1004,
	kindForbidden: 1005, kindIO: 1006, kindRevoked: 1007,
}

// rpcError is an error with a protocol kind. Handlers return it for anything
// a client should see; any other error is answered as "internal" and logged.
type rpcError struct {
	Code    int            `json:"code"`
	Message string         `json:"message"`
	Data    map[string]any `json:"data"`
}

func (e *rpcError) Error() string { return e.Message }

// Kind is the error's data.kind.
func (e *rpcError) Kind() string {
	k, _ := e.Data["kind"].(string)
	return k
}

// errorf makes an rpcError of kind with a message for a person.
func errorf(kind, format string, args ...any) *rpcError {
	return &rpcError{Code: errorCodes[kind], Message: fmt.Sprintf(format, args...), Data: map[string]any{"kind": kind}}
}

// ioError turns an OS error into the protocol's kind: a full disk is
// too_large, a missing file not_found, anything else io.
func ioError(err error) error {
	var re *rpcError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &re):
		return re
	case errors.Is(err, os.ErrNotExist):
		return errorf(kindNotFound, "%v", err)
	case isDiskFull(err):
		return errorf(kindTooLarge, "not enough disk space: %v", err)
	default:
		return errorf(kindIO, "%v", err)
	}
}

// method is one protocol method.
type method struct {
	groups  []string // the allow= groups that may call it (any one suffices)
	body    bool     // takes a body of params.size bytes
	mutates bool     // changes something, so it is written to the audit log
	audited bool     // changes nothing but is written to the audit log too (file.download: a key could be read)
	fn      func(*call) (any, error)
}

// Method groups of the protocol's table (PROTOCOL §2 allow=).
var (
	groupRead       = []string{"read"}
	groupScript     = []string{"script"}
	groupFile       = []string{"file"}
	groupDeploy     = []string{"deploy"}
	groupJobControl = []string{"script", "deploy", "jobs"} // cancel and complete: own jobs, or others' with "jobs"
	groupOthersJobs = []string{"jobs"}                     // see and touch other clients' jobs (see jobViewer)
)

// protocolMethods is the protocol's method table (PROTOCOL §5), the one
// place a method is declared: who may call it, whether it takes a body, and
// whether it changes something (and so is audited). A function rather than
// a variable because info, one of its entries, lists the table. Tests add
// methods through config.extraMethods, never by changing this table.
func protocolMethods() map[string]method {
	return map[string]method{
		"ping": {groups: groupRead, fn: handlePing},
		"info": {groups: groupRead, fn: handleInfo},

		"script.start": {groups: groupScript, mutates: true, fn: handleScriptStart},
		"job.status":   {groups: groupRead, fn: handleJobStatus},
		"job.cancel":   {groups: groupJobControl, mutates: true, fn: handleJobCancel},
		"job.complete": {groups: groupJobControl, mutates: true, fn: handleJobComplete},
		"job.list":     {groups: groupRead, fn: handleJobList},

		"file.upload":    {groups: groupFile, body: true, mutates: true, fn: handleFileUpload},
		"file.download":  {groups: groupFile, audited: true, fn: handleFileDownload},
		"package.stat":   {groups: groupDeploy, fn: handlePackageStat},
		"package.upload": {groups: groupDeploy, body: true, mutates: true, fn: handlePackageUpload},

		"deploy.start":    {groups: groupDeploy, mutates: true, fn: handleDeployStart},
		"deploy.list":     {groups: groupRead, fn: handleDeployList},
		"deploy.rollback": {groups: groupDeploy, mutates: true, fn: handleDeployRollback},
	}
}

// peer is the trusted party on one connection.
type peer struct {
	addr       net.Addr
	thumbprint string
	entry      *trustEntry // as of the last check; re-checked on every request
}

// call is one request being handled.
type call struct {
	ctx    context.Context // cancelled when the agent shuts down
	srv    *server
	peer   *peer
	method string
	params json.RawMessage // always an object

	// body reads the request's body (methods with body: true): at most
	// bodySize bytes. What a handler leaves unread is discarded or closes the
	// connection (PROTOCOL §3).
	body     io.Reader
	bodySize int64

	// replyBody, when set by a handler, writes exactly the size its result
	// declared right after the result line.
	replyBody func(w io.Writer) error

	// tc is the connection, for a replyBody that sends a large body in
	// batches (see batchConn) once w is flushed.
	tc *tls.Conn

	// audit holds the key parameters a handler wants in the audit log: never
	// file contents or variable values.
	audit map[string]any
}

// decodeParams decodes c.params into v, a pointer to a struct whose json tags
// name the fields. Keys match exactly; an unknown or mistyped field is
// invalid_params naming it. encoding/json alone matches keys without regard to
// case and ignores unknown ones, which the protocol forbids.
func decodeParams(raw json.RawMessage, v any) error {
	var m map[string]json.RawMessage
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &m); err != nil {
			return errorf(kindInvalidParams, "params must be an object")
		}
	}
	rv := reflect.ValueOf(v).Elem()
	rt := rv.Type()
	fields := make(map[string]int, rt.NumField())
	required := map[string]bool{}
	for i := range rt.NumField() {
		tag := rt.Field(i).Tag.Get("json")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "" || name == "-" {
			continue
		}
		fields[name] = i
		if strings.Contains(opts, "required") {
			required[name] = true
		}
	}
	for k, val := range m {
		i, ok := fields[k]
		if !ok {
			return errorf(kindInvalidParams, "unknown field %q in params", k)
		}
		if err := json.Unmarshal(val, rv.Field(i).Addr().Interface()); err != nil {
			return errorf(kindInvalidParams, "field %q: want %s", k, typeName(rt.Field(i).Type))
		}
		delete(required, k)
	}
	for k := range required {
		return errorf(kindInvalidParams, "missing field %q in params", k)
	}
	return nil
}

// typeName describes a Go type the way a JSON user thinks of it.
func typeName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Pointer:
		return typeName(t.Elem())
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Uint, reflect.Uint64, reflect.Uint32:
		return "an integer"
	case reflect.Float64, reflect.Float32:
		return "a number"
	case reflect.Slice:
		return "an array of " + strings.TrimPrefix(strings.TrimPrefix(typeName(t.Elem()), "a "), "an ") + "s"
	case reflect.Map:
		return "an object of " + strings.TrimPrefix(strings.TrimPrefix(typeName(t.Elem()), "a "), "an ") + "s"
	}
	return "another type"
}

func handlePing(c *call) (any, error) {
	if err := decodeParams(c.params, &struct{}{}); err != nil {
		return nil, err
	}
	return pong, nil
}

// pong is ping's answer, encoded once: ping is the health probe and the
// round trip the benchmarks time.
var pong = json.RawMessage(`{"pong":true}`)

func handleInfo(c *call) (any, error) {
	if err := decodeParams(c.params, &struct{}{}); err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	l := c.srv.cfg.Limits
	return map[string]any{
		"name": "tentacle", "version": versionString(), "protocol": 1, "methods": slices.Sorted(maps.Keys(c.srv.methods)),
		"os": runtime.GOOS, "arch": runtime.GOARCH, "hostname": host, "home": c.srv.cfg.Home,
		"uptime_s":   int64(time.Since(c.srv.started).Seconds()),
		"thumbprint": c.srv.id.thumbprint,
		"client":     map[string]string{"thumbprint": c.peer.thumbprint, "name": c.peer.entry.Name},
		"shells":     availableShells(), "containment": c.srv.jobs.contain.info(),
		"limits": map[string]any{
			"max_line": l.MaxLine, "max_body_discard": maxDiscard,
			"handshake_timeout_s": l.HandshakeTimeout.Seconds(), "idle_timeout_s": l.IdleTimeout.Seconds(),
			"body_timeout_s": l.BodyTimeout.Seconds(), "max_conns": l.MaxConns, "max_wait_ms": l.MaxWait.Milliseconds(),
			"max_conns_per_key": l.MaxConnsPerKey, "line_timeout_s": l.LineTimeout.Seconds(),
			"hello_timeout_s": l.HelloTimeout.Seconds(), "job_max_log": c.srv.cfg.JobMaxLog,
		},
	}, nil
}
