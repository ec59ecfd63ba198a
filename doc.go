// Command tentacle is a listening deployment agent: it listens on TCP 10933
// for mutually-authenticated TLS connections from trusted servers and runs
// their scripts, takes their files and packages, and deploys releases. The
// same binary is the client, for one agent or many.
//
// This comment is the map of the code: one flat package main, whose file
// names are its chapters (the prefix) and sections. The wire contract is
// docs/protocol.md; what a user sees of each part is on its docs/ page.
//
// # Reading order
//
// Read a request's way through the agent first, then what it can ask for,
// then the client:
//
//  1. main.go, config.go: the commands, flags, environment, home layout.
//  2. agent.go: the server put together at start, taken down at stop.
//  3. listener*.go: TLS, admission, the command loop, one request's six
//     steps (handleRequest); envelope*.go: the line and its JSON.
//  4. rpc.go: error kinds and the one method table, protocolMethods.
//  5. trust*.go: identity, thumbprints, the trust list and its file modes.
//  6. jobs*.go, transfer*.go, deploy*.go: what the methods do.
//  7. client.go, then the *_client.go files and fleet_*.go: the client.
//  8. sys_*.go: what differs per OS family, nothing else.
//
// # Files
//
// The agent's frame:
//
//	main.go               commands table, run(), usage, version
//	config.go             run's flags and environment, the home's layout
//	agent.go              newServer (home, lock, identity, trust, subsystems), shutdown
//	listener.go           TLS config, accept loop, command loop, handleRequest in steps
//	listener_admit.go     who may start a handshake: per-source shares, early drop, penalties
//	listener_log.go       request lines, rate-limited rejection summaries, log levels
//	envelope.go           the JSON-RPC envelope, checked in one linear pass
//	envelope_frame.go     lines under their caps and deadlines, bodies, answers written
//	rpc.go                error kinds, the method table, call, strict params, ping, info
//	disk.go               atomic files (commitFile), folder fsyncs, the one buffer pool
//
// Trust:
//
//	trust.go              identity, thumbprints, trust lines, the live trust store
//	trust_modes.go        StrictModes: owners and modes checked on open descriptors
//	trust_cmd.go          new-certificate, show-thumbprint, trust add/remove/list
//
// Jobs (scripts and deploys both run as jobs):
//
//	jobs.go               the job manager: admission under mutexes, start, finish, retention
//	jobs_control.go       finding, cancelling, completing, listing: a client's own jobs only
//	jobs_methods.go       the job methods' handlers, client-chosen tickets
//	jobs_process.go       a job's processes: started, stopped; the shells
//	jobs_contain.go       what holds a job's processes together (cgroup or process group)
//	jobs_cgroup.go        the cgroups of jobs, v2 and v1
//	jobs_cgroup_pool.go   spare v1 cgroups with a thread moved in, off a job's start
//	jobs_output.go        what goes into a job's log, and what happens when it cannot
//	jobs_log.go           the on-disk log of one job, read by seq
//	jobs_journal.go       job states on disk, work folders, crash recovery
//
// Files and packages:
//
//	transfer.go           the streaming pipeline, temporaries and their journal, space
//	transfer_paths.go     a client's path walked to a file, never to the agent's own state
//	transfer_files.go     file.upload, file.download, the digest cache
//	transfer_packages.go  the content-addressed package cache, resumable uploads
//	transfer_batch.go     large bodies in large writes
//
// Deploys:
//
//	deploy.go             apps and releases on disk, current, rollback
//	deploy_run.go         one deploy in named phases: prepare, extract, scripts, switch, settle
//	deploy_retain.go      retention, removal, package holds and pruning
//	deploy_recover.go     what start-up repairs after a crash
//	deploy_methods.go     the deploy methods' handlers
//	deploy_archive.go     extraction: limits, checks, writing files (then _format,
//	                      _names, _tar, _zip for each part)
//
// Operations:
//
//	ops_audit.go          the audit log and "tentacle audit"
//	ops_health.go         "tentacle health", the local probe
//	ops_service.go        "tentacle service", the systemd unit
//
// The client:
//
//	client.go             dialling (pins, proxies, retries), requests, clientCmd, "call"
//	jobs_client.go        exec, jobs, job
//	jobs_follow.go        following a job: streamed, reconnected, cancelled, completed
//	transfer_client.go    upload, download, push, the progress bar
//	deploy_client.go      deploy, releases, rollback
//	fleet_agents.go       the agents file
//	fleet_cmd.go          "tentacle agents"
//	fleet_target.go       TARGET: an address, a NAME, @TAG, all, lists
//	fleet_run.go          the fan-out engine
//	fleet_output.go       fan-out's prefixed lines, blocks, summary, -json events
//	fleet_jobs.go         exec, call and jobs on many agents
//	fleet_files.go        upload and push on many agents
//	fleet_deploy.go       rolling deploys; releases and rollback on many agents
//	fleet_status.go       "tentacle agents status"
//
// Platforms (the only build-tagged files; no runtime.GOOS inside them):
//
//	sys_unix.go           every Unix: process groups, /proc, free space, locks
//	sys_linux.go          Linux: writeback, syncfs, cheap file creation, the reaper, clone3
//	sys_nonlinux.go       where Linux's extras are missing
//	sys_windows.go        Windows
//
// # Rules the code keeps
//
// Fatal only at start-up: connection, job and deploy code returns errors,
// which the loop logs. Every write that must survive a crash goes through
// commitFile. Shared state lives in a struct with its mutex beside it and a
// comment saying what it guards. Messages are lowercase, quote names with
// %q, and carry the fix where a person can make it. Tests drive the real
// code over real TLS on 127.0.0.1 with real files (main_test.go has the
// harness) and add methods only through the withMethod option.
package main
