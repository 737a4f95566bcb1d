"""The pooler statistics reader's cost follows the poolers, not the fleet."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace

from support.fakes import MemoryStore

from controller.api import types
from controller.app import process
from controller.metrics.exposition import OperatorMetrics
from controller.postgres import pooler
from controller.runtime.local.runtime import free_port


@dataclass
class CountingStore(MemoryStore):
    asked: list[str] = field(default_factory=list)
    lists: int = 0
    read: asyncio.Event = field(default_factory=asyncio.Event)

    async def list(self) -> Sequence[types.ServerlessDatabase]:
        self.lists += 1
        return await super().list()

    async def get(self, key: str) -> types.ServerlessDatabase | None:
        self.asked.append(key)
        self.read.set()
        return await super().get(key)


@dataclass
class OnePooler:
    key: str
    port: int

    def pooled(self) -> Collection[str]:
        return {self.key}

    def pooler_console(self, db: types.ServerlessDatabase) -> pooler.Console | None:
        return pooler.Console("127.0.0.1", self.port, "not-used")  # nothing listens: the read fails


def database(name: str, *, pooled: bool = False) -> types.ServerlessDatabase:
    spec = replace(types.DatabaseSpec(), pooling=types.PoolingSpec(enabled=pooled))
    return types.ServerlessDatabase(metadata=types.ObjectMeta(name=name, namespace="shop"), spec=spec)


async def test_only_databases_with_a_pooler_are_read_from_the_store() -> None:
    store = CountingStore()
    for index in range(500):
        store.put(database(f"db{index}", pooled=index == 7))
    reader = asyncio.create_task(
        process.watch_poolers(store, OnePooler("shop/db7", free_port()), OperatorMetrics(), every=3600)
    )
    try:
        await asyncio.wait_for(store.read.wait(), 10)
    finally:
        reader.cancel()
    assert store.asked == ["shop/db7"]
    assert store.lists == 0
