# Sourced by scripts/demo and scripts/test (from the repository root): make `python3` one
# that pip may install into.
#
# Debian's own Python (Debian 12's python3 is 3.11) refuses `pip install` outside a virtual
# environment (PEP 668, "externally-managed-environment"), so both set-up commands stopped
# there on a fresh Debian machine. With such a Python, and no virtual environment active,
# use the project's own .venv (created once; as root, Debian's python3-venv is installed
# first if missing) by putting .venv/bin first on PATH: python3, celeriac and lint-imports
# are then the venv's. Any other Python (pyenv, a venv, a container's python:3.11) is used
# as it is.

externally_managed() {
    python3 - <<'EOF'
import os, sys, sysconfig
in_venv = sys.prefix != sys.base_prefix
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if not in_venv and os.path.exists(marker) else 1)
EOF
}

if externally_managed; then
    if [ ! -x .venv/bin/python3 ]; then
        echo "$(command -v python3) refuses pip installs (PEP 668): installing into ./.venv" \
            "(then: source .venv/bin/activate, for the celeriac command)" >&2
        if ! python3 -c "import ensurepip" 2>/dev/null; then
            if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
            $SUDO apt-get update -qq
            DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
        fi
        rm -rf .venv
        python3 -m venv .venv
    fi
    PATH="$PWD/.venv/bin:$PATH"
    export PATH
fi
