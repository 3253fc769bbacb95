"""The CLI's side of the control API: find the running node of a home and call it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from sidedoor.errors import ControlAPIError, NodeNotRunning
from sidedoor.home import CONTROL_FILE


class ControlClient:
    def __init__(self, home: Path) -> None:
        self.home = home
        path = home / CONTROL_FILE
        try:
            info = json.loads(path.read_text())
            self.port = int(info["port"])
            self.token = str(info["token"])
            self.pid = int(info.get("pid", 0))
        except FileNotFoundError:
            raise NodeNotRunning(
                f"no node is running for {home}; start one with `sidedoor --home {home} up`"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise NodeNotRunning(f"{path} is damaged; restart the node") from exc
        self.base = f"http://127.0.0.1:{self.port}"
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ControlClient:
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None,
                   timeout: float = 30.0) -> Any:
        assert self._session is not None, "use `async with ControlClient(...)`"
        try:
            async with self._session.request(
                method, self.base + path, json=body, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except aiohttp.ClientConnectionError as exc:
            raise NodeNotRunning(
                f"the node for {self.home} is not answering (it may have stopped); "
                f"start it with `sidedoor --home {self.home} up`"
            ) from exc
        except TimeoutError:
            raise ControlAPIError(f"the node did not answer within {timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise ControlAPIError(f"the node's answer could not be read: {exc}") from exc
        try:
            data = json.loads(raw)
        except ValueError:  # not JSON, or not UTF-8: not an answer of our API
            hint = "; see its log" if status >= 500 else ""
            raise ControlAPIError(
                f"the node answered HTTP {status} without JSON{hint}", status
            ) from None
        if status >= 400:
            error = data.get("error") if isinstance(data, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            if not isinstance(message, str) or not message:
                message = f"the node answered HTTP {status}"
            raise ControlAPIError(message, status)
        return data

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Yield events from the node's event stream until it ends."""
        assert self._session is not None
        try:
            async with self._session.get(self.base + "/v1/events") as resp:
                if resp.status != 200:
                    raise ControlAPIError(f"event stream refused: HTTP {resp.status}", resp.status)
                async for raw in resp.content:
                    line = raw.decode(errors="replace").rstrip("\n")
                    if line.startswith("data: "):
                        try:
                            event = json.loads(line[6:])
                        except ValueError:
                            raise ControlAPIError("the event stream sent something that is "
                                                  "not JSON") from None
                        yield event
        except aiohttp.ClientConnectionError as exc:
            raise NodeNotRunning(f"the node for {self.home} is not answering") from exc
