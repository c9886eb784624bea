"""Provider keys encrypted at rest and owner-only files:
what a copied DuckDB file, a backup or another local user can read."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from cryptography.fernet import Fernet, InvalidToken

from batchgate.ops.secret_rotation import RotationError, rotate_secret_key
from gateway.auth import load_or_create_secret
from storage.blobs import BlobStore
from storage.metadata import MetadataStore
from storage.private import tighten_tree
from storage.records import ProviderRecord
from storage.secrets import KEY_FILE, PREFIX, SecretKeyError, SecretKeys, load_or_create_keys
from tasks.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
CLEAR = "sk-unit-at-rest-4f1c9e0b7d2a"


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual shell umask, under which files come out 0644 unless made private."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def stored_key(db: Path, name: str) -> str:
    with duckdb.connect(str(db), read_only=True) as con:
        row = con.execute("SELECT api_key FROM providers WHERE name = ?", [name]).fetchone()
    assert row is not None
    return str(row[0])


def add_provider(store: MetadataStore, name: str = "vault", key: str = CLEAR) -> None:
    store.upsert_provider(ProviderRecord(name=name, base_url="http://127.0.0.1:9/v1", api_key=key))


def test_a_provider_key_is_stored_encrypted_and_read_back_clear(tmp_path: Path) -> None:
    keys, created = load_or_create_keys(None, tmp_path)
    assert created and mode(tmp_path / KEY_FILE) == 0o600
    store = MetadataStore(tmp_path / "m.duckdb", keys)
    add_provider(store)
    assert store.get_provider("vault").api_key == CLEAR  # type: ignore[union-attr]
    assert [p.api_key for p in store.list_providers()] == [CLEAR]
    store.close()
    assert CLEAR.encode() not in (tmp_path / "m.duckdb").read_bytes()
    assert stored_key(tmp_path / "m.duckdb", "vault").startswith(PREFIX)
    # The same data directory opens again with the key file it holds.
    again, created = load_or_create_keys(None, tmp_path)
    assert not created and again.current == keys.current


def test_an_older_install_s_clear_keys_are_encrypted_and_gone_from_the_file(
    tmp_path: Path,
) -> None:
    db = tmp_path / "m.duckdb"
    MetadataStore(db).close()  # the schema, as an older version left it
    with duckdb.connect(str(db)) as con:
        con.execute(
            "INSERT INTO providers (name, base_url, api_key, is_active, max_concurrency, "
            "is_default, created_at) VALUES ('legacy', 'http://x/v1', ?, TRUE, 4, FALSE, 1)",
            [CLEAR],
        )
    assert CLEAR.encode() in db.read_bytes()
    store = MetadataStore(db, SecretKeys(Fernet.generate_key().decode()))
    assert store.get_provider("legacy").api_key == CLEAR  # type: ignore[union-attr]
    store.close()
    # Not only re-encrypted: the freed block that held the clear row is gone too.
    assert CLEAR.encode() not in db.read_bytes()
    assert stored_key(db, "legacy").startswith(PREFIX)


def test_a_wrong_secret_key_fails_at_open_with_a_message(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "m.duckdb", SecretKeys(Fernet.generate_key().decode()))
    add_provider(store)
    store.close()
    with pytest.raises(SecretKeyError, match="rotate-secret-key"):
        MetadataStore(tmp_path / "m.duckdb", SecretKeys(Fernet.generate_key().decode()))
    with pytest.raises(SecretKeyError, match="Fernet key"):
        load_or_create_keys("not-a-key", tmp_path)


def test_a_store_without_the_key_cannot_touch_providers(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "m.duckdb")
    with pytest.raises(RuntimeError, match="secret key"):
        add_provider(store)
    store.close()


def test_rotation_re_encrypts_under_a_new_key_file(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    keys, _ = load_or_create_keys(None, tmp_path)
    store = MetadataStore(settings.db_path, keys)
    add_provider(store, "a")
    add_provider(store, "b", "sk-second-key-99887766")
    store.close()
    old_value = stored_key(settings.db_path, "a")

    rotation = rotate_secret_key(settings)

    assert rotation.re_encrypted == 2
    new_keys, _ = load_or_create_keys(None, tmp_path)
    assert new_keys.current != keys.current and mode(tmp_path / KEY_FILE) == 0o600
    assert not (tmp_path / "secret_key.next").exists()
    new_value = stored_key(settings.db_path, "a")
    with pytest.raises(InvalidToken):
        Fernet(keys.current.encode()).decrypt(new_value.removeprefix(PREFIX).encode())
    # The old ciphertext is not left in the file for the old key to open.
    assert old_value.encode() not in settings.db_path.read_bytes()
    store = MetadataStore(settings.db_path, new_keys)
    assert {p.name: p.api_key for p in store.list_providers()} == {
        "a": CLEAR,
        "b": "sk-second-key-99887766",
    }
    store.close()


def test_a_rotation_cut_short_still_opens_and_finishes_when_run_again(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    keys, _ = load_or_create_keys(None, tmp_path)
    store = MetadataStore(settings.db_path, keys)
    add_provider(store)
    # Killed after the transaction, before the rename: rows under the next key.
    pending = Fernet.generate_key().decode()
    (tmp_path / "secret_key.next").write_text(pending)
    store.rotate_provider_keys(SecretKeys(pending))
    store.close()

    reopened = MetadataStore(settings.db_path, load_or_create_keys(None, tmp_path)[0])
    assert reopened.get_provider("vault").api_key == CLEAR  # type: ignore[union-attr]
    reopened.close()
    rotate_secret_key(settings)
    assert (tmp_path / KEY_FILE).read_text() == pending
    assert not (tmp_path / "secret_key.next").exists()


def test_the_gateway_refuses_to_start_with_a_malformed_secret_key(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "batchgate.cli", "serve"],
        cwd=ROOT,
        env={**os.environ, "BATCHGATE_DATA_DIR": str(tmp_path), "BATCHGATE_SECRET_KEY": "hunter2"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result
    assert "not a Fernet key" in result.stderr and "hunter2" not in result.stderr


def test_rotation_with_the_key_in_the_environment_takes_the_new_one_from_it(
    tmp_path: Path,
) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    store = MetadataStore(tmp_path / "batchgate.duckdb", SecretKeys(old))
    add_provider(store)
    store.close()
    with pytest.raises(RotationError, match="BATCHGATE_NEW_SECRET_KEY"):
        rotate_secret_key(load_settings(data_dir=tmp_path, secret_key=old))

    settings = load_settings(data_dir=tmp_path, secret_key=old, new_secret_key=new)
    assert "set BATCHGATE_SECRET_KEY" in rotate_secret_key(settings).next_step
    assert rotate_secret_key(settings).re_encrypted == 1  # a second run is harmless
    assert not (tmp_path / KEY_FILE).exists()  # the key stays out of the data directory
    with pytest.raises(SecretKeyError):
        MetadataStore(tmp_path / "batchgate.duckdb", SecretKeys(old))
    store = MetadataStore(tmp_path / "batchgate.duckdb", SecretKeys(new))
    assert store.get_provider("vault").api_key == CLEAR  # type: ignore[union-attr]
    store.close()


def test_rotation_refuses_while_the_gateway_holds_the_database(tmp_path: Path) -> None:
    keys, _ = load_or_create_keys(None, tmp_path)
    store = MetadataStore(tmp_path / "batchgate.duckdb", keys)  # as the gateway does
    add_provider(store)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "batchgate.cli", "rotate-secret-key"],
            cwd=ROOT,
            env={**os.environ, "BATCHGATE_DATA_DIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        store.close()
    assert result.returncode == 2, result
    assert "is the gateway still running?" in result.stderr
    assert not (tmp_path / "secret_key.next").exists()
    assert load_or_create_keys(None, tmp_path)[0].current == keys.current


def test_blobs_and_generated_secrets_are_owner_only_under_umask_022(
    tmp_path: Path, umask_022: None
) -> None:
    blobs = BlobStore(tmp_path / "data" / "blobs")
    blobs.write_bytes("file-abc", b"a user's prompt")
    load_or_create_secret(tmp_path / "data" / "admin_key")
    assert mode(tmp_path / "data" / "blobs") == 0o700
    assert mode(tmp_path / "data" / "blobs" / "file-abc") == 0o600
    assert mode(tmp_path / "data" / "admin_key") == 0o600


def test_tightening_fixes_an_older_install_s_modes(tmp_path: Path, umask_022: None) -> None:
    tmp_path.chmod(0o755)
    (tmp_path / "logs").mkdir(mode=0o755)
    (tmp_path / "logs" / "gateway.log").write_text("x")
    (tmp_path / "batchgate.duckdb").write_bytes(b"x")
    assert mode(tmp_path / "logs" / "gateway.log") == 0o644
    assert tighten_tree(tmp_path) == 4  # root, logs, two files
    assert {mode(p) for p in tmp_path.rglob("*") if p.is_dir()} | {mode(tmp_path)} == {0o700}
    assert {mode(p) for p in tmp_path.rglob("*") if p.is_file()} == {0o600}
    assert tighten_tree(tmp_path) == 0
