# Sourced by bin/test: command-line tools the tests use that pip cannot install, from Debian's packages.
ensure_debian_tool() {  # COMMAND PACKAGE WHO-NEEDS-IT
  if command -v "$1" >/dev/null 2>&1; then return; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing $1 (Debian package $2) for $3" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null
  else
    echo "$1 is missing: install Debian's $2 package ($3 need it)" >&2
  fi
}

# promtool checks and unit-tests deploy/prometheus/alerts.yml.
ensure_debian_tool promtool prometheus "the alert-rule tests"
# The admin's browser tests drive chromium through Playwright, which cannot download a browser here.
ensure_debian_tool chromium chromium "the admin's browser tests"
