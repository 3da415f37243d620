#!/usr/bin/env bash
# sysctl-tune.sh: the kernel settings behind connection drops and resets,
# current vs recommended; writes them only with --apply.
set -euo pipefail

usage() {
	cat <<'EOF'
Usage: bash scripts/sysctl-tune.sh [--apply] [--persist FILE] [--check] [-h]

Shows the kernel TCP settings that cause dropped connections, resets and
EOFs under load, with the current value, the recommended value and why.
Nothing is changed unless --apply is given (dry run by default).

  --apply         write every setting that is not as recommended (root only)
  --persist FILE  also write every setting to FILE as a sysctl.d drop-in
                  (e.g. /etc/sysctl.d/90-tcp-tuning.conf; root only), so they
                  survive a reboot: the recommended value, or the current one
                  where it is already as good or better
  --check         exit 3 when any setting differs, 4 when none could be read
                  (for scripts and CI)
  -h, --help      this help

Settings marked "netns" are per network namespace: a container or pod has
its own copy, set from inside it (Kubernetes: securityContext.sysctls or a
privileged init container, see deploy/k8s). "host" settings can only be
changed on the node itself.

Environment:
  SYSCTL_ROOT     read and write this tree instead of /proc/sys (tests)
EOF
}

root=${SYSCTL_ROOT:-/proc/sys}

# Ports a Kubernetes node listens on that the ephemeral port range must not
# hand out: kubelet and kube-proxy (10248-10259: 10250 kubelet API, 10256
# kube-proxy health) and the default NodePort range.
node_ports=("10248 10259" "30000 32767")

# key|recommended|rule|scope|why
# rule: min = at least, max = at most, eq = exactly, range = at least as wide
# and clear of the ports in node_ports (unless reserved).
settings=(
	"net.core.somaxconn|65535|min|netns|Caps every listen() backlog: the service asks for a large accept queue but gets min(backlog, somaxconn). When the queue is full the kernel drops the handshake's last ACK (ListenOverflows): clients see connect timeouts, resets and EOFs under bursts."
	"net.ipv4.tcp_max_syn_backlog|65535|min|netns|Queue of half-open connections (SYN-RECV). Too small drops SYNs during bursts; clients retry after 1s, 3s... and time out."
	"net.core.netdev_max_backlog|16384|min|host|Packets queued per CPU between the NIC and the TCP stack. When full, packets are dropped before TCP sees them (softnet drops), which looks like random loss under load."
	"net.ipv4.tcp_syncookies|1|eq|netns|When the SYN queue is full, answer with SYN cookies instead of dropping new connections."
	"net.ipv4.tcp_fin_timeout|30|max|netns|How long an orphaned connection waits in FIN-WAIT-2 for the peer's FIN. Shorter frees sockets whose peer vanished."
	"net.ipv4.tcp_tw_reuse|1|eq|netns|Lets new outbound connections reuse TIME-WAIT ports (safe with TCP timestamps). Without it a busy client side (nginx to the service, the service to Redis) runs out of ephemeral ports: connect fails with EADDRNOTAVAIL. 2 (the kernel default) enables it for loopback only."
	"net.ipv4.ip_local_port_range|32768 65535|range|netns|Ephemeral ports for outbound connections. Each closed connection holds its port for 60s in TIME-WAIT, so 32k ports allow about 540 new connections per second to one destination. On a Kubernetes node the range must stay clear of the kubelet and kube-proxy ports (10248-10259) and the NodePort range (30000-32767), or list them in net.ipv4.ip_local_reserved_ports: an outbound connection that takes one of them as its source port makes the kubelet fail to bind it, or collides with the NodePort rules."
	"net.ipv4.tcp_keepalive_time|600|max|netns|Idle time before the first keep-alive probe. The default 2h outlives every NAT, firewall and LB idle timeout, so dead peers go unnoticed for hours (lower it below 350s behind an AWS NLB). Go programs set their own per-socket keep-alive (15s); this matters for everything else (nginx, Redis, databases)."
	"net.ipv4.tcp_keepalive_intvl|15|max|netns|Gap between keep-alive probes once probing started."
	"net.ipv4.tcp_keepalive_probes|5|max|netns|Unanswered probes before the connection is declared dead: with the values above a dead peer is found after 600+15*5 = 675s instead of 2h11m."
)

apply=false
check=false
persist=""
while [[ $# -gt 0 ]]; do
	case $1 in
	-h | --help)
		usage
		exit 0
		;;
	--apply) apply=true ;;
	--check) check=true ;;
	--persist)
		[[ $# -ge 2 ]] || {
			echo "sysctl-tune: --persist needs a file name" >&2
			exit 2
		}
		persist=$2
		shift
		;;
	*)
		echo "sysctl-tune: unknown argument '$1' (see -h)" >&2
		exit 2
		;;
	esac
	shift
done

if { $apply || [[ -n $persist ]]; } && [[ $(id -u) -ne 0 ]]; then
	echo "sysctl-tune: --apply and --persist need root (run with sudo); nothing changed" >&2
	exit 1
fi

path_of() { printf '%s/%s' "$root" "${1//.//}"; }

# read_key prints the value with runs of whitespace squeezed to one space,
# or nothing when the key does not exist in this kernel or namespace.
read_key() {
	local p
	p=$(path_of "$1")
	[[ -r $p ]] || return 0
	tr -s ' \t' '  ' <"$p" | tr -d '\n'
}

# unreserved counts the ports of lo..hi that net.ipv4.ip_local_reserved_ports
# does not list (the kernel never picks a reserved port as a source port).
unreserved() {
	local lo=$1 hi=$2 list item a b p ok n=0
	list=$(read_key net.ipv4.ip_local_reserved_ports)
	local -a items=()
	IFS=',' read -r -a items <<<"${list// /}"
	for ((p = lo; p <= hi; p++)); do
		ok=false
		for item in "${items[@]}"; do
			[[ -n $item ]] || continue
			a=${item%-*}
			b=${item#*-}
			if ((p >= a && p <= b)); then
				ok=true
				break
			fi
		done
		$ok || n=$((n + 1))
	done
	echo "$n"
}

# overlaps succeeds when the range clo..chi hands out a port of node_ports
# that is not reserved.
overlaps() {
	local clo=$1 chi=$2 r lo hi
	for r in "${node_ports[@]}"; do
		read -r lo hi <<<"$r"
		((clo > hi || chi < lo)) && continue
		(($(unreserved $((clo > lo ? clo : lo)) $((chi < hi ? chi : hi))) > 0)) && return 0
	done
	return 1
}

# judge prints ok, low, high, differs, narrow, overlaps or missing.
judge() {
	local cur=$1 rec=$2 rule=$3
	if [[ -z $cur ]]; then
		echo missing
		return
	fi
	case $rule in
	min) ((cur >= rec)) && echo ok || echo low ;;
	max) ((cur <= rec)) && echo ok || echo high ;;
	eq) [[ $cur == "$rec" ]] && echo ok || echo differs ;;
	range)
		local clo chi rlo rhi
		read -r clo chi <<<"$cur"
		read -r rlo rhi <<<"$rec"
		if ((chi - clo < rhi - rlo)); then
			echo narrow
		elif overlaps "$clo" "$chi"; then
			echo overlaps
		else
			echo ok
		fi
		;;
	esac
}

show_rec() {
	case $2 in
	min) printf '>= %s' "$1" ;;
	max) printf '<= %s' "$1" ;;
	range) printf '%s' "$1" ;;
	*) printf '%s' "$1" ;;
	esac
}

if $apply; then
	echo "sysctl-tune: current vs recommended (--apply: settings that differ are written)"
else
	echo "sysctl-tune: current vs recommended (dry run: nothing is changed; --apply writes)"
fi
[[ $root == /proc/sys ]] || echo "reading $root instead of /proc/sys"
echo
printf '%-30s %-14s %-14s %-8s %s\n' KEY CURRENT RECOMMENDED STATUS SCOPE

differ=0
missing=0
failed=0
notes=()
for s in "${settings[@]}"; do
	IFS='|' read -r key rec rule scope why <<<"$s"
	cur=$(read_key "$key")
	st=$(judge "$cur" "$rec" "$rule")
	printf '%-30s %-14s %-14s %-8s %s\n' "$key" "${cur:--}" "$(show_rec "$rec" "$rule")" "$st" "$scope"
	case $st in
	ok) continue ;;
	missing)
		missing=$((missing + 1))
		notes+=("$key: missing"$'\n'"Not present here (an older kernel, or a host-wide setting not visible in this network namespace); skipped.")
		continue
		;;
	esac
	differ=$((differ + 1))
	notes+=("$key: $st ($cur, recommended $(show_rec "$rec" "$rule"))"$'\n'"$why")
	if $apply; then
		if printf '%s\n' "$rec" >"$(path_of "$key")" 2>/dev/null; then
			notes+=("  -> written: $key = $rec (was $cur)")
		else
			failed=$((failed + 1))
			if [[ $scope == host ]]; then
				notes+=("  -> could not set $key: it is host-wide; set it on the node, not in a container")
			else
				notes+=("  -> could not set $key (read-only /proc/sys? in a container it needs a privileged init container or securityContext.sysctls)")
			fi
		fi
	fi
done

echo
if ((${#notes[@]} > 0)); then
	# First line as is, the explanation wrapped and indented.
	for n in "${notes[@]}"; do
		printf '%s\n' "${n%%$'\n'*}"
		[[ $n == *$'\n'* ]] && printf '%s\n' "${n#*$'\n'}" | fold -s -w 92 | sed 's/^/    /'
	done
	echo
fi

if [[ -n $persist ]]; then
	{
		echo "# Written by scripts/sysctl-tune.sh: TCP settings against connection drops and resets."
		for s in "${settings[@]}"; do
			IFS='|' read -r key rec rule scope _ <<<"$s"
			cur=$(read_key "$key")
			val=$rec
			# A value already as good or better stays: the drop-in must not
			# lower it at the next boot.
			if [[ $(judge "$cur" "$rec" "$rule") == ok ]]; then
				val=$cur
			fi
			echo "$key = $val"
		done
	} >"$persist"
	echo "wrote the settings to $persist (loaded at boot; now: sysctl --system)"
fi

if ((missing == ${#settings[@]})); then
	echo "none of the ${#settings[@]} settings could be read under $root: nothing was checked."
	if $check; then
		exit 4
	fi
	exit 0
elif ((differ == 0)); then
	echo "all ${#settings[@]} settings are as recommended or better ($missing not present here)."
elif $apply; then
	echo "$differ of ${#settings[@]} settings differed; $((differ - failed)) written, $failed failed."
else
	echo "$differ of ${#settings[@]} settings differ from the recommended values. To write them: sudo bash scripts/sysctl-tune.sh --apply"
fi

if $apply && ((failed > 0)); then
	exit 1
fi
if $check && ! $apply && ((differ > 0)); then
	exit 3
fi
exit 0
