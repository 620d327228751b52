"""The node app's MLLP service: configured by NodeSettings.mllp_port, stores through the app's
own FhirStore (the one its REST API serves)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import hl7

from node.app import create_app
from node.feeds.hl7v2 import send_mllp
from node.feeds.hl7v2.node_service import mllp_service
from node.settings import NodeSettings
from node_feeds.hl7_samples import oru
from servicekit.ports import read_announced_ports


def test_node_app_service_listens_on_the_configured_port(db_url: str, tmp_path: Path) -> None:
    # port 0: the OS picks (held from the bind on) and the node announces what it got
    settings = NodeSettings(data_dir=tmp_path / "node", db_url=db_url, mllp_port=0)
    app = create_app(settings)
    store = app.state.store

    async def main() -> str:
        async with mllp_service(app) as server:
            port = server.sockets[0].getsockname()[1]
            assert read_announced_ports(settings.data_dir) == {"mllp": port}
            return await asyncio.to_thread(send_mllp, "127.0.0.1", port, oru())

    ack = asyncio.run(main())
    assert str(hl7.parse(ack).segment("MSA")[1]) == "AA"
    assert store.counts()["Observation"] == 4
    app.state.engine.dispose()


def test_no_port_means_no_listener(tmp_path: Path) -> None:
    settings = NodeSettings(data_dir=tmp_path / "node", mllp_port=None)
    app = create_app(settings)

    async def main() -> object:
        async with mllp_service(app) as server:
            return server

    assert asyncio.run(main()) is None
    app.state.engine.dispose()
