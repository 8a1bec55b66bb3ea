#!/usr/bin/env bash
# Builds the two Debian packages from one release build:
#   target/debian/persona-agent_<version>-1_<arch>.deb        persona-agent, persona-actuator
#   target/debian/persona-coordinator_<version>-1_<arch>.deb  persona-coordinator, personactl
# Needs cargo-deb (cargo install cargo-deb --locked --version 3.8.0) and dpkg-dev.
# Prints the paths of the packages, one a line, on stdout (logs go to stderr).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    echo "cargo-deb is missing: cargo install cargo-deb --locked --version 3.8.0" >&2
    exit 1
fi

# One release build for every binary of both packages (shared dependencies build once),
# then package without rebuilding.
# persona-coordinator is built from the persona-coordinator-bin crate (it sits above the
# coordinator and agent libraries for `demo`); the coordinator package ships it.
cargo build --release --locked -p persona-agent -p persona-coordinator -p persona-coordinator-bin \
    --bin persona-agent --bin persona-actuator --bin persona-coordinator --bin personactl >&2

for pkg in persona-agent persona-coordinator; do
    cargo deb --no-build -p "$pkg" --output target/debian/ >&2
done

ls -1 target/debian/persona-agent_*.deb target/debian/persona-coordinator_*.deb
