"""The reference server's OpenAI-compatible text endpoints, backed by ``textgen``'s model.

* ``POST /v1/completions``: ``{"prompt", "max_tokens", "temperature", "seed", "stream"}``.
* ``POST /v1/chat/completions``: the same with ``messages`` (their contents are the prompt).
* ``GET /v1/models``: the one model served.

With ``"stream": true`` the answer is server-sent events, one token per event, then
``data: [DONE]``, in the shape of OpenAI's API reference (``text_completion`` and
``chat.completion.chunk`` objects; a last chunk with ``usage`` when
``stream_options.include_usage`` is true). Errors are OpenAI's ``{"error": {...}}`` bodies.

The model loads on the first request that needs it (numpy and a 100 KB file), not at start:
a server that never generates text starts as fast as before, and ``verify``'s warm-up
requests take that first load. ``token_ms`` paces the stream (a slower GPU, for budget tests).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time

from mlinfra.textgen import TextModel

MAX_TOKENS_LIMIT = 4096
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
_JSON = {"content_type": "application/json", "charset": "utf-8"}


class RequestError(ValueError):
    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


def _number(body: dict, name: str, default, lo: float, hi: float, kind: type):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise RequestError(f"'{name}' must be {'a number' if kind is float else 'an integer'}", name)
    if not lo <= value <= hi:
        raise RequestError(f"'{name}' must be between {lo:g} and {hi:g}", name)
    return kind(value)


def parse_request(body, chat: bool, model_name: str) -> dict:
    """The generation arguments of a request body; ``RequestError`` says what is wrong."""
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    model = body.get("model")
    if model not in (None, model_name):
        raise RequestError(f"The model `{model}` does not exist.", "model", 404, "model_not_found")
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError("'messages' must be a non-empty list", "messages")
        parts = []
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if not isinstance(content, str):
                raise RequestError("each message needs a string 'content'", "messages")
            parts.append(content)
        prompt = "\n".join(parts)
    else:
        prompt = body.get("prompt", "")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise RequestError("'prompt' must be a string (token ids and batches are not supported)", "prompt")
    max_tokens = body.get("max_completion_tokens") if chat and "max_completion_tokens" in body else None
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", DEFAULT_MAX_TOKENS, 1, MAX_TOKENS_LIMIT, int)
    else:
        max_tokens = _number(body, "max_completion_tokens", DEFAULT_MAX_TOKENS, 1, MAX_TOKENS_LIMIT, int)
    options = body.get("stream_options") or {}
    return {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": _number(body, "temperature", 1.0, 0, 2, float),
        "seed": _number(body, "seed", None, 0, 2**63 - 1, int),
        "stream": body.get("stream") is True,
        "usage": isinstance(options, dict) and options.get("include_usage") is True,
    }


class Completions:
    """The handlers; ``routes()`` plugs them into ``serve.InferenceServer``'s route table."""

    def __init__(self, web, token_ms: float = 0.0) -> None:
        self.web = web
        self.token_s = max(token_ms, 0.0) / 1000.0
        self.model: TextModel | None = None
        self._loading: asyncio.Future | None = None
        self._ids = itertools.count(1)

    def routes(self) -> dict:
        post, get = ("POST",), ("GET", "HEAD")
        return {
            "/v1/completions": ("/v1/completions", post, self.completions),
            "/v1/chat/completions": ("/v1/chat/completions", post, self.chat),
            "/v1/models": ("/v1/models", get, self.models),
        }

    async def _model(self) -> TextModel:
        if self.model is None:
            if self._loading is None:  # one load, however many requests wait for it
                self._loading = asyncio.get_running_loop().run_in_executor(None, TextModel.load)
            self.model = await self._loading
        return self.model

    def _error(self, exc: RequestError):
        body = {"error": {"message": str(exc), "type": "invalid_request_error", "param": exc.param, "code": exc.code}}
        return self.web.Response(body=json.dumps(body).encode(), status=exc.status, **_JSON)

    async def models(self, request):
        model = await self._model()
        body = {"object": "list", "data": [{"id": model.name, "object": "model", "owned_by": "mlinfra"}]}
        return self.web.Response(body=json.dumps(body).encode(), **_JSON)

    async def completions(self, request):
        return await self._generate(request, chat=False)

    async def chat(self, request):
        return await self._generate(request, chat=True)

    async def _generate(self, request, chat: bool):
        model = await self._model()
        try:
            try:
                body = json.loads(await request.read())
            except ValueError:
                raise RequestError("the body must be valid JSON") from None
            args = parse_request(body, chat, model.name)
        except RequestError as exc:
            return self._error(exc)
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{next(self._ids):08x}"
        head: dict = {"id": ident, "object": "chat.completion.chunk" if chat else "text_completion"}
        head.update(created=int(time.time()), model=model.name)
        pieces = model.generate(args["prompt"], args["max_tokens"], args["temperature"], args["seed"])
        usage = {"prompt_tokens": len(model.encode(args["prompt"])), "completion_tokens": args["max_tokens"]}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if not args["stream"]:
            text = "".join(pieces)
            choice = {"index": 0, "finish_reason": "length", "logprobs": None}
            choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
            whole = {**head, "object": "chat.completion" if chat else "text_completion", "choices": [choice]}
            return self.web.Response(body=json.dumps({**whole, "usage": usage}).encode(), **_JSON)
        response = self.web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)

        async def send(choice: dict | None, **extra) -> None:
            event = {**head, "choices": [choice] if choice is not None else [], **extra}
            await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")

        try:
            await self._stream(send, pieces, chat, usage if args["usage"] else None)
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:  # the client went away mid-stream: stop generating for it
            pass
        return response

    async def _stream(self, send, pieces, chat: bool, usage: dict | None) -> None:
        if chat:
            await send({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})
        for text in pieces:
            # A decode step: paced like a slower model, or at least a turn of the event loop, so
            # concurrent streams interleave token by token as on a batching server.
            await asyncio.sleep(self.token_s)
            if chat:
                await send({"index": 0, "delta": {"content": text}, "finish_reason": None})
            else:
                await send({"index": 0, "text": text, "logprobs": None, "finish_reason": None})
        end = {"index": 0, "finish_reason": "length"}
        await send({**end, "delta": {}} if chat else {**end, "text": "", "logprobs": None})
        if usage is not None:
            await send(None, usage=usage)
