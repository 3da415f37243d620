#!/usr/bin/env bash
# rename.sh: after `gonew`, rewrite the mentions of the template that gonew
# leaves behind (it rewrites only go.mod and Go import paths).
set -euo pipefail

# The template this tree was made from. Running the script rewrites these
# lines as well, so a second run finds nothing to do and nothing in the new
# module names the template any more.
old_module="github.com/hardenedgo/ginservice"
old_owner="hardenedgo"
old_name="ginservice"

usage() {
	cat <<EOF
Usage: bash scripts/rename.sh [-n] [-h]

Run once in a module made with
  gonew $old_module example.com/acme/newsvc
gonew rewrote go.mod and the Go imports; this rewrites every other file
(README, docs, Dockerfile, manifests, dashboards, scripts) from the module
path in go.mod:

  $old_module  ->  the new module path      (example.com/acme/newsvc)
  $old_owner/$old_name             ->  <owner>/<name>            (acme/newsvc)
  $old_name                        ->  <name>, DNS-safe          (newsvc)
  $old_owner                        ->  <owner>, DNS-safe         (acme)

<name> is the last element of the path (a /vN suffix dropped), <owner> the
one before it. The app's Kubernetes and image names are neutral ("api") and
are not touched: rename those with kustomize namePrefix/images.

  -n          dry run: list the lines that would change
  -h, --help  this help
EOF
}

# dns_safe lower-cases and replaces anything outside [a-z0-9-] with '-'.
dns_safe() {
	local s
	s=$(printf '%s' "$1" | tr '[:upper:]' '[:lower:]' | tr -c 'a-z0-9-' '-')
	s=${s##-}
	s=${s%%-}
	printf '%s' "${s:-app}"
}

main() {
	local dry=false
	while [[ $# -gt 0 ]]; do
		case $1 in
		-h | --help)
			usage
			return 0
			;;
		-n | --dry-run) dry=true ;;
		*)
			echo "rename: unknown argument '$1' (see -h)" >&2
			return 2
			;;
		esac
		shift
	done

	local root
	root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
	cd "$root"
	if [[ ! -f go.mod ]]; then
		echo "rename: no go.mod in $root" >&2
		return 1
	fi
	local new_module
	new_module=$(awk '$1 == "module" { gsub(/"/, "", $2); print $2; exit }' go.mod)
	if [[ -z $new_module ]]; then
		echo "rename: no module line in go.mod" >&2
		return 1
	fi
	if [[ $new_module == "$old_module" ]]; then
		echo "rename: nothing to do: go.mod says $old_module, the name this tree already uses."
		echo "        (In the template: make a new module first, gonew $old_module example.com/you/yoursvc.)"
		return 0
	fi

	# example.com/acme/newsvc/v2 -> owner acme, name newsvc.
	local path=$new_module parts owner name
	if [[ $path =~ /v[0-9]+$ ]]; then
		path=${path%/*}
	fi
	IFS=/ read -ra parts <<<"$path"
	name=$(dns_safe "${parts[${#parts[@]} - 1]}")
	if ((${#parts[@]} >= 3)); then
		owner=$(dns_safe "${parts[${#parts[@]} - 2]}")
	else
		owner=$(dns_safe "${parts[0]}")
	fi

	# Most specific first, so the full path is not half-rewritten by the
	# shorter patterns. '|' cannot occur in a module path.
	local -a expr=(
		-e "s|${old_module//./\\.}|${new_module}|g"
		-e "s|${old_owner}/${old_name}|${owner}/${name}|g"
		-e "s|${old_name}|${name}|g"
		-e "s|${old_owner}|${owner}|g"
	)

	local -a files=()
	local f
	while IFS= read -r -d '' f; do
		files+=("$f")
	done < <(grep -rlIZ --exclude-dir=.git -e "$old_owner" -e "$old_name" . || true)

	if $dry; then
		echo "rename (dry run): $new_module (owner '$owner', name '$name'); ${#files[@]} file(s) would change:"
		for f in "${files[@]}"; do
			grep -nH -e "$old_owner" -e "$old_name" "$f" | sed 's/^/  /'
		done
		return 0
	fi

	local tmp
	for f in "${files[@]}"; do
		tmp=$(mktemp "$f.rename.XXXXXX")
		sed "${expr[@]}" "$f" >"$tmp"
		if [[ -x $f ]]; then chmod 755 "$tmp"; else chmod 644 "$tmp"; fi
		# A new file replaces the old one (this script included, which bash
		# keeps reading from the old file).
		mv "$tmp" "$f"
		echo "rewrote $f"
	done

	# File and directory names, deepest first.
	local p dir base
	while IFS= read -r -d '' p; do
		dir=$(dirname "$p")
		base=$(basename "$p" | sed "${expr[@]}")
		mv "$p" "$dir/$base"
		echo "renamed $p -> $dir/$base"
	done < <(find . -depth -path ./.git -prune -o \( -name "*${old_name}*" -o -name "*${old_owner}*" \) -print0)

	# Mentions in other letter cases are not rewritten automatically.
	local left
	left=$(grep -rIil --exclude-dir=.git -e "$old_owner" -e "$old_name" . || true)
	if [[ -n $left ]]; then
		echo "rename: these files still mention the template in another letter case; edit them by hand:" >&2
		printf '  %s\n' "$left" >&2
		return 1
	fi
	echo "rename: ${#files[@]} file(s) rewritten for $new_module; nothing names the template any more."
}

main "$@"
exit $?
