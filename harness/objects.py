"""One key's worth of real objects of every kind, for tests that need ids to
aim at (isolation, API conformance): an input file, a batch that ran to the
end with an output and an error file, a live batch, a non-batch file.

Built on the parity suite's in-process `Env` (gateway under uvicorn, batch
runs in a thread, mock provider), which is much faster than the full stack.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.inline_gateway import Env
from harness.lines import chat_line


@dataclass(frozen=True)
class Objects:
    key: str
    input_file_id: str
    user_file_id: str
    output_file_id: str
    error_file_id: str
    done_batch_id: str
    live_batch_id: str

    @property
    def file_ids(self) -> dict[str, str]:
        return {
            "input": self.input_file_id,
            "user_data": self.user_file_id,
            "output": self.output_file_id,
            "error": self.error_file_id,
        }

    @property
    def batch_ids(self) -> dict[str, str]:
        return {"completed": self.done_batch_id, "live": self.live_batch_id}


def make_objects(env: Env, name: str) -> Objects:
    """A new key and its objects. The finished batch has one good line and one
    line for an unknown provider, so it has both an output and an error file.
    The live batch is created while runs are held, so it stays `validating`."""
    key = env.create_key(name)
    input_id = env.upload(
        key,
        [chat_line("ok-1", "hello"), chat_line("bad-1", "x", model="no-such-provider/m")],
    )
    done = env.wait(key, env.create_batch(key, input_id)["id"])
    assert done["status"] == "completed", done
    assert done["output_file_id"] and done["error_file_id"], done
    with env.held():
        live = env.create_batch(key, env.upload(key, [chat_line("live-1", "later")]))
    user = env.call(
        key,
        "POST",
        "/v1/files",
        data={"purpose": "user_data"},
        files={"file": ("notes.txt", b"private notes", "text/plain")},
    )
    assert user.status_code == 200, user.text
    return Objects(
        key=key,
        input_file_id=input_id,
        user_file_id=user.json()["id"],
        output_file_id=done["output_file_id"],
        error_file_id=done["error_file_id"],
        done_batch_id=done["id"],
        live_batch_id=live["id"],
    )
