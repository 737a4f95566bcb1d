"""Manifests as users write them: YAML documents, read within limits a hostile file cannot stretch.

A YAML alias repeats a whole node wherever it is named, so a few lines can expand to gigabytes (the
"billion laughs"); a manifest never needs more than a handful. Files are bounded in size as the API
server bounds a request.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_BYTES = 3 * 1024 * 1024
"""The API server's default request limit, for a whole file of documents."""
MAX_ALIASES = 64


class ManifestError(ValueError):
    """A manifest that cannot be read; the message says why, for the user."""


class _BoundedLoader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise ManifestError(
                    f"uses more than {MAX_ALIASES} YAML aliases; write the values out instead"
                )
        return super().compose_node(parent, index)


def load_all(text: str, *, source: str) -> list[Any]:
    """The documents of a manifest (empty ones dropped); raises ManifestError naming the source."""
    if len(text.encode()) > MAX_BYTES:
        raise ManifestError(f"{source} is larger than {MAX_BYTES // (1024 * 1024)} MiB")
    loader = _BoundedLoader(text)
    try:
        documents = []
        while loader.check_data():  # type: ignore[no-untyped-call]
            document = loader.get_data()
            if document is not None:
                documents.append(document)
        return documents
    except ManifestError as error:
        raise ManifestError(f"{source} {error}") from None
    except yaml.YAMLError as error:
        raise ManifestError(f"{source} is not valid YAML: {error}") from None
    finally:
        loader.dispose()
