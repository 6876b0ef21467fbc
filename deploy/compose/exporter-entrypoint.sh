#!/bin/sh
# Entrypoint of the compose stack's exporter: the built-in demo (a simulated API, no key, no
# network) when there is no DEEPSEEK_API_KEY, no --config.file and no command; else
# deepseek-exporter with the arguments as given (`balance`, `--config.file=...`, ...), as
# ./scripts/run does. Tested by tests/test_deploy.py.
set -eu
demo=yes
[ -z "${DEEPSEEK_API_KEY:-}" ] || demo=no
for arg in "$@"; do
  case "$arg" in
    --config.file | --config.file=* | --config.check | --deepseek.base-url | --deepseek.base-url=* \
      | --demo | -h | --help | --version | balance | simulate) demo=no ;;
  esac
done
if [ "$demo" = yes ]; then
  echo "No DEEPSEEK_API_KEY, no --config.file and no command: starting the built-in demo." >&2
  exec deepseek-exporter --demo "$@"
fi
exec deepseek-exporter "$@"
