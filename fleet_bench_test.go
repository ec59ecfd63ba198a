package main

// fleet_bench_test.go: "exec all -- true" on 100 agents in one client
// process, beside what a user would otherwise write: the same 100
// single-mode exec processes started in parallel by a shell, in the same
// run, interleaved round by round; and the fan-out client's peak memory.
// Each agent is a process of its own, as deployed (one agent a machine).
// Run: go test -run '^$' -bench FleetExec -benchtime 1x

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func BenchmarkFleetExec(b *testing.B) {
	needSh(b)
	const n, rounds = 100, 7
	bin := buildTentacle(b)
	home := b.TempDir()
	client, err := newIdentity(filepath.Join(home, "tentacle.key"), filepath.Join(home, "tentacle.crt"))
	if err != nil {
		b.Fatal(err)
	}
	var agents, shell strings.Builder
	var pids []int
	shell.WriteString("T=" + bin + "\nH=" + home + "\n")
	for i := range n {
		agentHome := b.TempDir()
		writeTrust(b, agentHome, client.thumbprint+" bench\n")
		a := startProcAgent(b, bin, agentHome)
		pids = append(pids, a.cmd.Process.Pid)
		fmt.Fprintf(&agents, "b%03d %s %s\n", i, a.addr, a.thumbprint)
		fmt.Fprintf(&shell, "\"$T\" exec -home \"$H\" -pin %s %s -- true &\n", a.thumbprint, a.addr)
	}
	shell.WriteString("wait\n")
	if err := os.WriteFile(agentsPath(home), []byte(agents.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	script := filepath.Join(home, "parallel.sh")
	if err := os.WriteFile(script, []byte(shell.String()), 0o755); err != nil {
		b.Fatal(err)
	}
	// timed runs cmd and returns how long it took, its peak memory, and
	// the CPU it and its children used.
	timed := func(cmd *exec.Cmd) (time.Duration, int64, time.Duration) {
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		start := time.Now()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		memory := peakMemory(cmd.Process.Pid)
		if err := cmd.Wait(); err != nil {
			b.Fatalf("%s: %v\n%s", cmd.Args, err, out.String())
		}
		return time.Since(start), memory(), cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	for range b.N {
		var fan, wide, sh, pings, fanCPU, shCPU, fanAgents, shAgents []time.Duration
		var peak int64
		timed(exec.Command(bin, "exec", "-home", home, "all", "--", "true")) // warm up
		timed(exec.Command("sh", script))
		for range rounds {
			before := agentsCPU(b, pids)
			d, kib, cpu := timed(exec.Command(bin, "exec", "-home", home, "all", "--", "true"))
			fan, fanCPU, fanAgents = append(fan, d), append(fanCPU, cpu), append(fanAgents, agentsCPU(b, pids)-before)
			peak = max(peak, kib)
			before = agentsCPU(b, pids)
			d, _, cpu = timed(exec.Command("sh", script))
			sh, shCPU, shAgents = append(sh, d), append(shCPU, cpu), append(shAgents, agentsCPU(b, pids)-before)
			d, _, _ = timed(exec.Command(bin, "call", "-home", home, "all", "ping"))
			pings = append(pings, d)
			d, _, _ = timed(exec.Command(bin, "exec", "-home", home, "-parallel", "100", "all", "--", "true"))
			wide = append(wide, d)
		}
		fm, sm := median(fan), median(sh)
		b.ReportMetric(fm.Seconds(), "fanout-s")
		b.ReportMetric(sm.Seconds(), "shell-s")
		b.ReportMetric(float64(fm)/float64(sm), "ratio")
		b.ReportMetric(float64(peak)/1024, "fanout-peak-MiB")
		b.ReportMetric(median(pings).Seconds(), "call-ping-s")
		b.ReportMetric(median(wide).Seconds(), "fanout-parallel100-s")
		b.ReportMetric(median(fanCPU).Seconds(), "fanout-client-cpu-s")
		b.ReportMetric(median(shCPU).Seconds(), "shell-clients-cpu-s")
		b.ReportMetric(median(fanAgents).Seconds(), "fanout-agents-cpu-s")
		b.ReportMetric(median(shAgents).Seconds(), "shell-agents-cpu-s")
		b.Logf("exec all -- true on %d agents: one fan-out process %v, %d single-mode processes from a shell %v, ratio %.2f (target ≤ 0.5, fan-out < 2s); fan-out peak RSS %.1f MiB (target < 100); with -parallel 100 %v; \"call all ping\" (connections alone, no job) %v; CPU of the client side: fan-out %v, the shell's %d processes %v; of the agents (jobs included): %v, %v; medians of %d rounds",
			n, fm.Round(time.Millisecond), n, sm.Round(time.Millisecond), float64(fm)/float64(sm), float64(peak)/1024, median(wide).Round(time.Millisecond), median(pings).Round(time.Millisecond),
			median(fanCPU).Round(time.Millisecond), n, median(shCPU).Round(time.Millisecond), median(fanAgents).Round(time.Millisecond), median(shAgents).Round(time.Millisecond), rounds)
	}
}

// agentsCPU is the CPU the agent processes and their reaped children
// (the jobs) have used so far, from /proc/PID/stat.
func agentsCPU(b *testing.B, pids []int) time.Duration {
	var ticks int64
	for _, pid := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			b.Fatal(err)
		}
		f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
		for _, i := range []int{11, 12, 13, 14} { // utime stime cutime cstime
			v, _ := strconv.ParseInt(f[i], 10, 64)
			ticks += v
		}
	}
	return time.Duration(ticks) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}
