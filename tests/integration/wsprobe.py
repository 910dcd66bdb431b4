"""``WsProbe``: a WebSocket client for the integration tests, driven synchronously.

autobahn's asyncio client on a private event loop: every call runs the loop until what it
waits for arrived or its deadline passed (no sleeps).  It keeps every message it
received: answers by request id, stream messages by stream id, in arrival order.  Over TLS
(``ssl``: a client context trusting the cluster CA) it speaks wss.  A ``token`` goes in the
``Authorization`` header, or (``token_in="subprotocol"``) as a browser sends it: as the
``paxoslog.bearer.<base64url>`` subprotocol.  It can
stop reading from its socket (``pause_reading``: the server's view of a client that does
not read) and send raw frames of its own choosing through autobahn (``send_raw``).
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict

import cbor2
from autobahn.asyncio.websocket import WebSocketClientFactory, WebSocketClientProtocol

from paxoslog.server.access import bearer_subprotocol

JSON = "paxoslog.v1.json"
CBOR = "paxoslog.v1.cbor"


class WsProbe:
    def __init__(self, port: int, subprotocol: str | None = JSON, *,
                 max_message_bytes: int = 0, ssl=None, token: str | None = None,
                 token_in: str = "header") -> None:
        self.port = port
        self.token = token
        self.token_in = token_in      # "header" (Authorization) or "subprotocol" (browsers)
        self.ssl = ssl
        self.subprotocol = subprotocol
        self.loop = asyncio.new_event_loop()
        self.replies: dict = {}
        self.answers: list = []       # every answer, in arrival order
        self.streams: dict = defaultdict(list)
        self.frames = 0
        self.closed = None            # (code, reason) once closed
        self.chosen = None            # the subprotocol the server chose
        self.protocol = None
        self._event = None
        self._ids = 0
        self._connect(max_message_bytes)

    @classmethod
    def of(cls, cluster, node: int, subprotocol: str | None = JSON, **options) -> "WsProbe":
        """A probe of ``node`` of a ``ClusterHarness``: wss when the cluster has TLS."""
        if cluster.tls:
            import ssl
            options["ssl"] = ssl.create_default_context(cafile=cluster.ca_file)
        return cls(cluster.api_ports[node], subprotocol, **options)

    # ------------------------------------------------------------------ plumbing

    def _connect(self, max_message_bytes: int) -> None:
        probe = self

        class _Protocol(WebSocketClientProtocol):
            def onConnect(self, response):
                probe.chosen = response.protocol

            def onOpen(self):
                probe.protocol = self
                probe._wake()

            def onMessage(self, payload, isBinary):
                probe.frames += 1
                value = cbor2.loads(payload) if isBinary else json.loads(payload)
                for message in value if isinstance(value, list) else [value]:
                    if "stream" in message and "id" not in message:
                        probe.streams[message["stream"]].append(message)
                    else:
                        probe.replies[message.get("id")] = message
                        probe.answers.append(message)
                probe._wake()

            def onClose(self, wasClean, code, reason):
                probe.closed = (code, reason)
                probe._wake()

        protocols = [self.subprotocol] if self.subprotocol else []
        headers = None
        if self.token and self.token_in == "subprotocol":
            protocols.append(bearer_subprotocol(self.token))
        elif self.token:
            headers = {"Authorization": f"Bearer {self.token}"}
        scheme = "wss" if self.ssl is not None else "ws"
        factory = WebSocketClientFactory(f"{scheme}://127.0.0.1:{self.port}/api/v1/ws",
                                         protocols=protocols or None, loop=self.loop,
                                         headers=headers)
        factory.protocol = _Protocol
        factory.setProtocolOptions(maxMessagePayloadSize=max_message_bytes,
                                   maxFramePayloadSize=max_message_bytes, autoPingInterval=0)
        tls = {"ssl": self.ssl, "server_hostname": "127.0.0.1"} if self.ssl is not None else {}
        self._run(self.loop.create_connection(factory, "127.0.0.1", self.port, **tls), 10)
        self.wait(lambda: self.protocol is not None or self.closed is not None, 10,
                  "the WebSocket handshake")

    def _wake(self) -> None:
        if self._event is not None:
            self._event.set()

    def _run(self, coroutine, timeout: float):
        return self.loop.run_until_complete(asyncio.wait_for(coroutine, timeout))

    def wait(self, condition, timeout: float = 10.0, what: str = "a condition"):
        """Run the loop until ``condition()`` is truthy (its value) or fail at ``timeout``."""
        async def waiting():
            while True:
                value = condition()
                if value:
                    return value
                self._event = asyncio.Event()
                await self._event.wait()
        try:
            return self._run(waiting(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None

    def pump(self, seconds: float = 0.0) -> None:
        """Let the loop run (read what arrives) for ``seconds``."""
        self.loop.run_until_complete(asyncio.sleep(seconds))

    # ------------------------------------------------------------------ sending

    def encode(self, message) -> tuple[bytes, bool]:
        if self.chosen == CBOR:
            return cbor2.dumps(message), True
        return json.dumps(message).encode(), False

    def send(self, message) -> None:
        payload, binary = self.encode(message)
        self.protocol.sendMessage(payload, binary)

    def send_raw(self, payload: bytes, binary: bool = False) -> None:
        self.protocol.sendMessage(payload, binary)

    def next_id(self) -> int:
        self._ids += 1
        return self._ids

    def request(self, message: dict, timeout: float = 15.0) -> tuple[int, dict]:
        """Send a request (id assigned) and wait for its answer: (status, body)."""
        message = dict(message)
        request_id = message.setdefault("id", self.next_id())
        self.send(message)
        reply = self.wait(lambda: self.replies.get(request_id), timeout,
                          f"the answer to {message.get('op')} {request_id}")
        return reply["status"], reply.get("body")

    def subscribe(self, message: dict, timeout: float = 15.0) -> int:
        status, body = self.request(message, timeout)
        assert status == 200, (status, body)
        return body["stream"]

    # ------------------------------------------------------------------ streams

    def entries(self, stream: int) -> list[dict]:
        return [e for m in self.streams[stream] if m.get("type") == "entries"
                for e in m["entries"]]

    def events(self, stream: int) -> list[dict]:
        return [e for m in self.streams[stream] if m.get("type") == "events"
                for e in m["events"]]

    def end(self, stream: int) -> dict | None:
        return next((m for m in self.streams[stream] if m.get("type") == "end"), None)

    def wait_index(self, stream: int, index: int, timeout: float = 20.0) -> list[dict]:
        """Wait until the tail ``stream`` delivered ``index`` (or ended)."""
        self.wait(lambda: self.end(stream) or (self.entries(stream)
                                               and self.entries(stream)[-1]["index"] >= index),
                  timeout, f"index {index} on stream {stream}")
        return self.entries(stream)

    def wait_revision(self, stream: int, revision: int, timeout: float = 20.0) -> list[dict]:
        def current():
            for m in reversed(self.streams[stream]):
                if m.get("type") == "end":
                    return True
                if "revision" in m:
                    return m["revision"] >= revision
            return False
        self.wait(current, timeout, f"revision {revision} on stream {stream}")
        return self.events(stream)

    # ------------------------------------------------------------------ reading

    def pause_reading(self) -> None:
        self.protocol.transport.pause_reading()

    def resume_reading(self) -> None:
        self.protocol.transport.resume_reading()

    def close(self) -> None:
        if self.protocol is not None and self.closed is None:
            self.protocol.sendClose(1000)
            try:
                self.wait(lambda: self.closed, 3, "the close")
            except AssertionError:
                pass
            if self.protocol.transport is not None:
                self.protocol.transport.close()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()

    def __enter__(self) -> "WsProbe":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
