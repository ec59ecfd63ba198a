#!/usr/bin/env bash
# TLS posture: the listener offers only TLS 1.2 and 1.3, with forward-secret
# (ECDHE) AEAD suites only (PROTOCOL §1), as nmap's ssl-enum-ciphers sees it
# from the outside. Fails on any other protocol version, on any suite with
# CBC, RC4, 3DES, NULL, EXPORT, anonymous or RSA key exchange or a SHA-1 MAC,
# and on any nmap warning. The checker is first run on a bad report, so a
# checker that lets everything through fails too.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin

# check_report reads ssl-enum-ciphers output on stdin; prints each problem
# and fails if there is any.
check_report() {
	awk '
	/ssl-enum-ciphers:/ { seen = 1 }
	/^\|[ _]+(SSLv[23]|TLSv1(\.[0-3])?):/ {
		v = $2; sub(":", "", v); versions[v] = 1
		if (v != "TLSv1.2" && v != "TLSv1.3") { print "protocol offered: " v; bad = 1 }
	}
	/^\|[ _]+TLS_[A-Z0-9_]+ / {
		s = $2; suites++
		if (v == "TLSv1.3" && s ~ /^TLS_(AKE_WITH_)?(AES_(128|256)_GCM|CHACHA20_POLY1305)_SHA(256|384)$/) next
		if (s ~ /^TLS_ECDHE_(ECDSA|RSA)_WITH_(AES_(128|256)_GCM_SHA(256|384)|CHACHA20_POLY1305_SHA256)$/) next
		print "suite offered without forward secrecy and AEAD: " s " (" v ")"; bad = 1
	}
	/warnings:/ { print "nmap warns: see the report"; bad = 1 }
	END {
		if (!seen) { print "no ssl-enum-ciphers result: did the scan reach the agent?"; exit 1 }
		if (!("TLSv1.2" in versions) || !("TLSv1.3" in versions)) { print "want both TLSv1.2 and TLSv1.3 offered"; bad = 1 }
		if (!suites) { print "no cipher suites listed"; bad = 1 }
		exit bad
	}'
}

echo "-- the checker refuses a weak report"
if check_report >/dev/null <<'EOF'
| ssl-enum-ciphers: 
|   TLSv1.0: 
|     ciphers: 
|       TLS_RSA_WITH_AES_128_CBC_SHA (rsa 2048) - A
|   TLSv1.2: 
|     ciphers: 
|       TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256 (secp256r1) - A
|   TLSv1.3: 
|     ciphers: 
|       TLS_AKE_WITH_AES_128_GCM_SHA256 (ecdh_x25519) - A
|_  least strength: A
EOF
then
	echo "FAIL: the posture checker accepted TLSv1.0 and CBC suites"
	exit 1
fi

if ! command -v nmap >/dev/null; then
	echo "-- installing nmap"
	if ! (apt-get update -qq && apt-get install -y -qq nmap) >/dev/null; then
		echo "FAIL: nmap is not installed and could not be installed with apt-get: install it and run again"
		exit 1
	fi
fi

work=$(mktemp -d)
pid=
cleanup() {
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid"
		wait "$pid" || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

go build -trimpath -o "$work/tentacle" .
"$work/tentacle" run -home "$work/home" -listen 127.0.0.1:0 2>"$work/agent.log" &
pid=$!
addr=
for _ in $(seq 200); do
	addr=$(sed -n 's/.*msg=listening addr=\([^ ]*\).*/\1/p' "$work/agent.log")
	[ -n "$addr" ] && break
	kill -0 "$pid" 2>/dev/null || break
	sleep 0.05
done
if [ -z "$addr" ]; then
	echo "FAIL: the agent did not start:"
	cat "$work/agent.log"
	exit 1
fi
port=${addr##*:}

echo "-- nmap --script ssl-enum-ciphers -p $port 127.0.0.1"
nmap -Pn -sT --script ssl-enum-ciphers -p "$port" 127.0.0.1 >"$work/nmap.txt"
sed -n '/ssl-enum-ciphers/,/least strength/p' "$work/nmap.txt"
if ! check_report <"$work/nmap.txt"; then
	echo "FAIL: the listener's TLS posture is weaker than PROTOCOL §1 allows"
	exit 1
fi

kill -TERM "$pid"
if ! wait "$pid"; then
	echo "FAIL: the agent did not exit 0 on SIGTERM"
	cat "$work/agent.log"
	pid=
	exit 1
fi
pid=
echo "TLS posture ok: TLSv1.2 and TLSv1.3 only, ECDHE with AEAD only"
