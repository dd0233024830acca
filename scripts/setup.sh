#!/usr/bin/env bash
# Install everything ascend-fleet and its lab need, from nothing. Safe to re-run.
#   - Debian packages: Docker Engine, the registry, debootstrap, ssh client, iproute2
#   - a Python venv in .venv with the pinned controller tools (requirements.txt)
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pkg in docker.io docker-registry debootstrap openssh-client iproute2 iputils-ping rsync chromium; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
    echo "setup: installing ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    python3 -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing Python requirements"
    .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
    echo "$want" > "$stamp"
fi
if [ ! -x .venv/bin/ascend-fleet ]; then
    echo "setup: installing the ascend-fleet command (pip install -e .)"
    .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
fi

# This checkout is also the ascend.fleet collection (the roles call its filters by their
# full name, ascend.fleet.*): linked into the venv, where Ansible finds installed collections.
site_packages=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
link="$site_packages/ansible_collections/ascend/fleet"
if [ "$(readlink "$link" 2>/dev/null)" != "$PWD" ]; then
    if [ -e "$link" ] && [ ! -L "$link" ]; then
        echo "setup: $link is not a link to this checkout: remove it and run again" >&2
        exit 1
    fi
    echo "setup: linking this checkout as the ascend.fleet collection"
    mkdir -p "$(dirname "$link")"
    ln -sfn "$PWD" "$link"
fi
echo "setup: ready ($(.venv/bin/ansible --version | sed -n 1p))"
