"""A response sent as several buffers, so large outputs are not joined into one copy."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class BuffersResponse(Response):
    """Sends `buffers` one after the other, with an exact Content-Length; `done` is called
    once they are sent, or the sending failed (the client went away)."""

    def __init__(
        self,
        buffers: Sequence[bytes | memoryview],
        *,
        media_type: str,
        headers: Mapping[str, str] | None = None,
        done: Callable[[], None] | None = None,
    ) -> None:
        # Response.__init__'s work, done once: it would render no body, and setting the
        # length after it (MutableHeaders) walked its headers again.
        self.buffers = list(buffers)
        self.done = done
        self.status_code = 200
        self.media_type = media_type
        length = str(sum(len(b) for b in self.buffers))
        self.init_headers({**(headers or {}), "content-length": length, "content-type": media_type})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            last = len(self.buffers) - 1
            for index, buffer in enumerate(self.buffers):
                await send(
                    {"type": "http.response.body", "body": buffer, "more_body": index < last}
                )
        finally:
            self.buffers = []
            if self.done is not None:
                self.done()
