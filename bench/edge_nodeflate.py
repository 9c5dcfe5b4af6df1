"""A what-if variant of the edge: ``cam_edge.main`` unchanged, except that uvicorn is told
not to negotiate permessage-deflate (``ws_per_message_deflate=False``).

Used by ``bench.fanout`` to measure the fix it recommends without editing the service;
this is not the shipped configuration.
"""

from __future__ import annotations

from typing import Any

import uvicorn
from cam_edge import main as edge_main

_Config = uvicorn.Config


class _NoDeflateConfig(_Config):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ws_per_message_deflate"] = False
        super().__init__(*args, **kwargs)


uvicorn.Config = _NoDeflateConfig  # type: ignore[misc]

if __name__ == "__main__":
    edge_main.main()
