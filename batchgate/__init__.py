"""The programs of batchgate, each in a home of its own around the HTTP app
(gateway/): the `batchgate` command (cli.py), the `up` supervisor (up/), the
tools that work on a stopped data directory (ops/), the `run` command's
terminal UI (run/), and the fake provider (mock_provider/)."""
