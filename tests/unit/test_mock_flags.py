"""`batchgate mock-upstream` flags: each lands in its MockConfig field, and
a share outside 0..1 is refused with a message naming the flag."""

from __future__ import annotations

import argparse

import pytest

from batchgate.mock_provider.server import FLOAT_KNOBS, MockConfig, add_arguments, config_from_args


def parse(*argv: str) -> MockConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)))


def test_no_flags_give_the_default_config() -> None:
    assert parse() == MockConfig()


@pytest.mark.parametrize("flag", [flag for flag, _ in FLOAT_KNOBS])
def test_each_knob_sets_its_own_field_only(flag: str) -> None:
    field = flag.removeprefix("--").replace("-", "_")
    config = parse(flag, "0.25")
    assert getattr(config, field) == 0.25
    assert {k: v for k, v in vars(config).items() if k != field} == {
        k: v for k, v in vars(MockConfig()).items() if k != field
    }


def test_host_port_key_and_seed() -> None:
    config = parse("--host", "0.0.0.0", "--port", "8123", "--api-key", "sk-x", "--seed", "7")
    assert (config.host, config.port, config.api_key, config.seed) == ("0.0.0.0", 8123, "sk-x", 7)


@pytest.mark.parametrize(
    "flag",
    ["--failure-rate", "--rate-429", "--reset-rate", "--hang-rate", "--missing-request-id-rate"],
)
def test_a_share_above_one_is_refused(flag: str) -> None:
    with pytest.raises(SystemExit, match=f"{flag} must be between 0 and 1"):
        parse(flag, "1.5")
