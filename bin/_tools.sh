# Sourced by bin/test: command-line tools the tests use that pip cannot install.
# promtool (Debian's prometheus package) checks and unit-tests deploy/prometheus/alerts.yml.
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing promtool (Debian package prometheus) for the alert-rule tests" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "promtool is missing: install Debian's prometheus package (the alert-rule tests need it)" >&2
  fi
fi
