"""A broken OpenAI-style streaming server, for the token check's failure paths (issue 11).

    python broken_sse.py MODE      # prints its port on stdout, then serves until killed

Real sockets and HTTP/1.1 chunked server-sent events, stdlib only. Each request gets three good
token events (in the shape of OpenAI's text_completion chunks), then, by MODE:
  stall        nothing more: the connection stays open and silent
  malformed    an event whose data is not JSON
  close-early  the connection closes without a last chunk or data: [DONE]
  error-event  an {"error": ...} event, as vLLM sends when generation fails mid-stream
"""

from __future__ import annotations

import asyncio
import json
import sys

MODES = ("stall", "malformed", "close-early", "error-event")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def event(text: str) -> bytes:
    body = {"id": "cmpl-1", "object": "text_completion", "model": "broken",
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": None}]}
    return chunk(b"data: " + json.dumps(body).encode() + b"\n\n")


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mode: str) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                       if line.startswith(b"content-length:")), 0)
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for word in (" In", " the", " beginning"):
            writer.write(event(word))
            await writer.drain()
            await asyncio.sleep(0.005)
        if mode == "stall":
            await asyncio.sleep(3600)
        elif mode == "malformed":
            writer.write(chunk(b"data: {\"choices\": [{\"text\": \" God\"\n\n"))
            writer.write(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            await writer.drain()
            await reader.read()  # the client hangs up
        elif mode == "error-event":
            error = {"error": {"message": "CUDA out of memory", "type": "InternalServerError", "code": 500}}
            writer.write(chunk(b"data: " + json.dumps(error).encode() + b"\n\n"))
            writer.write(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            await writer.drain()
            await reader.read()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()  # close-early: right after the good events


async def main(mode: str) -> None:
    server = await asyncio.start_server(lambda r, w: handle(r, w, mode), "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in MODES:
        sys.exit(f"usage: broken_sse.py {{{','.join(MODES)}}}")
    asyncio.run(main(sys.argv[1]))
