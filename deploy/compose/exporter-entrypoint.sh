#!/bin/sh
# Entrypoint of the compose stack's exporter: the real exporter when DEEPSEEK_API_KEY is set
# or a --config.file is given, else the built-in demo (a simulated API, no key, no network).
# Extra arguments go to deepseek-exporter. Tested by tests/test_deploy.py.
set -eu
case " $* " in
  *" --config.file"*) exec deepseek-exporter "$@" ;;
esac
if [ -n "${DEEPSEEK_API_KEY:-}" ]; then
  exec deepseek-exporter "$@"
fi
echo "No DEEPSEEK_API_KEY and no --config.file: starting the built-in demo." >&2
exec deepseek-exporter --demo "$@"
