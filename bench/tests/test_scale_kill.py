"""The scale-out harness, short: two test hosts (network namespaces), one
small batch, the host running it SIGKILLed mid-batch (every process in its
namespace). The batch resumes on the other host within a minute of the kill
and ends with every custom_id once. Root only (it builds namespaces);
`make soak` only. The full runs, figures and the link-cut case:
`python -m bench.scale` (docs/scale-out.md).
"""

from __future__ import annotations

import pytest

from bench.scale import RECOVERY_TARGET_SECONDS, lose_host, parse_args
from bench.scale_net import can_run, network

pytestmark = [pytest.mark.soak, pytest.mark.timeout(900)]


def test_a_batch_on_a_killed_host_resumes_on_the_other_host() -> None:
    reason = can_run()
    if reason:
        pytest.skip(reason)
    args = parse_args(["--hosts", "2", "--kill-batches", "1", "--kill-lines", "600"])
    with network(args.hosts) as hosts:
        result = lose_host(hosts, "served", args, "kill")
    print(result["table"])
    assert result["problems"] == [], result["table"]
    assert result["recovery"] < RECOVERY_TARGET_SECONDS, result["table"]
