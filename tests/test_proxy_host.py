"""The documented dedicated proxy host, end to end on the lab (marker ``lab``).

a3-1p1d-proxy: one A3 prefill node, one A3 decode node and a host of its own in group
``proxy``. site.yml renders proxy.sh only there, starts the proxy container only there
(none on the prefill master), and verifies the tutorial's request through it.
"""

from __future__ import annotations

import pytest

from tests.conftest import run_site
from tests.lab.conftest import Lab, lab_unavailable, labctl

pytestmark = pytest.mark.lab
TOPOLOGY = "a3-1p1d-proxy"


def test_dedicated_proxy_host_serves_the_answer():
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    labctl("up", TOPOLOGY)
    lab = Lab(TOPOLOGY)
    try:
        proc = run_site(TOPOLOGY, check=True)
        out = proc.stdout
        proxy_ip = lab.nodes["proxy-0"]["mgmt_ip"]
        assert f"Endpoint http://{proxy_ip}:1999/v1/chat/completions" in out and "answered:" in out
        names = {h: lab.ssh(h, "docker ps --format '{{.Names}}'").stdout.split() for h in lab.nodes}
        assert names["proxy-0"] == ["vllm-ascend-proxy"], names
        assert not any("proxy" in n for n in names["prefill-0"] + names["decode-0"]), names
        files = lab.ssh("proxy-0", "ls /etc/ascend-fleet").stdout.split()
        assert "proxy.sh" in files and "run_dp_template.sh" not in files and "launch.sh" not in files
        again = run_site(TOPOLOGY, check=True)
        assert "changed=0" in again.stdout
        for line in again.stdout.splitlines():
            if " : ok=" in line:
                assert "changed=0" in line, line
    finally:
        labctl("down", TOPOLOGY)
