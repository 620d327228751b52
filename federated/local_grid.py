"""An in-process Flower ``Grid``: the same ServerApp loop and ClientApp, without a network.

Flower's own simulation engine needs Ray (not installed here), so the benchmark harness and the
unit tests use this: every message is a real ``flwr.app.Message``, handed to the real
``ClientApp`` with a per-node ``Context`` (node config + run state kept between rounds), and the
reply comes back through ``pull_messages`` exactly as from a SuperLink. Nodes can be marked
failing to exercise drop-outs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.app.error import Error
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

__all__ = ["LocalGrid"]


class LocalGrid(Grid):
    def __init__(
        self,
        client_app: ClientApp,
        node_configs: Mapping[int, Mapping[str, Any]],
        *,
        run_id: int = 1,
        run_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.client_app = client_app
        self._node_configs = {nid: dict(cfg) for nid, cfg in node_configs.items()}
        self._run_config = dict(run_config or {})
        self.contexts = {
            nid: Context(
                run_id=run_id,
                node_id=nid,
                node_config=dict(cfg),
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
            for nid, cfg in node_configs.items()
        }
        self.run_id = run_id
        self.offline: set[int] = set()  # nodes that no longer answer
        self.erroring: set[int] = set()  # nodes whose ClientApp answers with an error
        self.sent: list[Message] = []
        self.received: list[Message] = []
        self._replies: dict[str, Message] = {}

    def new_run(self) -> LocalGrid:
        """The same nodes in a new Flower run (fresh per-run state on every node), as
        ``flwr run`` gives; the nodes' data dirs (and ledgers) stay."""
        return LocalGrid(
            self.client_app,
            self._node_configs,
            run_id=self.run_id + 1,
            run_config=self._run_config,
        )

    def set_run(self, run: Any) -> None:  # pragma: no cover - not used in-process
        self.run_id = int(run.run_id)

    @property
    def run(self) -> Any:  # pragma: no cover
        return None

    def create_message(  # type: ignore[override]
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.contexts if n not in self.offline]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_run_id"] = self.run_id
            msg.metadata.__dict__["_src_node_id"] = 0
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            self.sent.append(msg)
            nid = msg.metadata.dst_node_id
            ids.append(msg.metadata.message_id)
            if nid in self.offline or nid not in self.contexts:
                continue
            if nid in self.erroring:
                reply = Message(Error(code=0, reason="node failed"), reply_to=msg)
            else:
                reply = self.client_app(msg, self.contexts[nid])
            reply.metadata.__dict__["_src_node_id"] = nid
            self._replies[msg.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        out = [self._replies.pop(i) for i in message_ids if i in self._replies]
        self.received += out
        return out

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
