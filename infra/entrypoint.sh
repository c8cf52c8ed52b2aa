#!/bin/sh
# Container entry point; dispatches on the first argument:
#   worker [ARGS]       prefect worker start --type ecs --pool "$PREFECT_WORK_POOL" (default bayesfan-ecs) ARGS
#   flow-run [ARGS]     prefect flow-run execute ARGS
#   batch-child [ARGS]  bayesfan batch-child ARGS (an AWS Batch child)
#   anything else       run as given, e.g. the ECS worker's own "prefect flow-run execute"
set -eu
command="${1:-worker}"
[ "$#" -gt 0 ] && shift
case "$command" in
    worker) exec prefect worker start --type ecs --pool "${PREFECT_WORK_POOL:-bayesfan-ecs}" "$@" ;;
    flow-run) exec prefect flow-run execute "$@" ;;
    batch-child) exec bayesfan batch-child "$@" ;;
    *) exec "$command" "$@" ;;
esac
