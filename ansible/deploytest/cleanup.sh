#!/bin/sh
# cleanup.sh RUN — remove what the deploy test's run RUN made: the
# containers, network and image labelled shoal-deploytest=RUN, and its temp
# dir (ssh keys, inventories, logs). The test removes them itself; `make
# test-deploy` calls this too, for a go test killed before its cleanup.
set -u
run=${1:?usage: cleanup.sh RUN}
case $run in
*[!a-z0-9-]* | -*) echo "cleanup.sh: bad run id $run" >&2; exit 2 ;;
esac
label=shoal-deploytest=$run
rc=0
ids=$(docker ps -aq --filter "label=$label") || rc=1
if [ -n "${ids:-}" ]; then
	# shellcheck disable=SC2086 # one argument per id
	docker rm -f -v $ids >/dev/null || rc=1
fi
ids=$(docker network ls -q --filter "label=$label") || rc=1
if [ -n "${ids:-}" ]; then
	# shellcheck disable=SC2086
	docker network rm $ids >/dev/null || rc=1
fi
ids=$(docker images -q --filter "label=$label" | sort -u) || rc=1
if [ -n "${ids:-}" ]; then
	# shellcheck disable=SC2086
	docker rmi -f $ids >/dev/null || rc=1
fi
for dir in "${TMPDIR:-/tmp}"/shoal-dt-"$run"-*; do
	[ -d "$dir" ] || continue
	# Ansible's ssh master connections (ControlPersist) of the run.
	for s in "$dir"/cp/*; do
		[ -S "$s" ] && ssh -o ControlPath="$s" -O exit shoal-deploytest >/dev/null 2>&1
	done
	rm -rf "$dir" || rc=1
done
exit $rc
