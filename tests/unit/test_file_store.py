"""The local runtime's file store: a spec read on every login is parsed once per version of its file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from support.operator import database

from controller.runtime.local.store import FileStore


def test_a_spec_is_parsed_again_only_when_its_file_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStore(tmp_path)
    identity = {"issuer": "https://issuer.test", "subject": "alice", "role": "reader"}
    store.apply(database("orders", access={"identities": [identity]}))
    parsed: list[str] = []
    safe_load = yaml.safe_load

    def counted(text: str) -> Any:
        parsed.append(text)
        return safe_load(text)

    monkeypatch.setattr(yaml, "safe_load", counted)
    first = store.read_spec("default/orders")
    assert first is not None
    assert [i.subject for i in first.access.identities] == ["alice"]
    assert store.read_spec("default/orders") is first
    assert len(parsed) == 1
    store.apply(database("orders", access={"identities": [{**identity, "subject": "bob"}]}))
    again = store.read_spec("default/orders")
    assert again is not None
    assert [i.subject for i in again.access.identities] == ["bob"]
    store.remove("default/orders")
    assert store.read_spec("default/orders") is None
