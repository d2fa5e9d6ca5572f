#!/bin/sh
# The block's container command. Checks the configuration, then hands PID 1 to supervisord,
# which runs the agent (block/supervisord.conf).
#
# Bad configuration must not crash-loop the container: a restart loop scrolls the reason out
# of the dashboard log and keeps a Pi Zero busy restarting Python. So check-config prints
# every problem once, and `update-lock park` then asks the Supervisor to stop this service
# (or sleeps when the Supervisor API is not available), holding no lock.
#
# SUPERVISORD_CONF names another supervisord config (the tests point it at the repository's
# copy). It deliberately has no UPDATE_LOCK_ prefix: the agent warns about unknown
# UPDATE_LOCK_* names, which are usually typos.
set -eu

conf=${SUPERVISORD_CONF:-/usr/src/app/block/supervisord.conf}

status=0
update-lock check-config || status=$?
case $status in
    0)
        exec supervisord -c "$conf"
        ;;
    78)
        # EX_CONFIG: the problems are printed above.
        echo "ERROR entry.config-invalid action=park"
        exec update-lock park
        ;;
    *)
        # Not a configuration problem (a broken install?): exit and let the restart policy
        # retry, rather than hide it behind a park.
        echo "ERROR entry.check-config-failed status=$status"
        exit "$status"
        ;;
esac
