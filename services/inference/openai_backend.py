"""`backend: openai`: a model served by OpenAI-compatible HTTP upstreams.

Each request gets one deadline (the model's `timeout_s`) for everything. The
balancer picks the replica with the fewest outstanding requests; connect
failures and 502/503 answers are retried on another replica, but only before
the upstream has answered: once a response has begun, its failure is the
request's failure. A streamed request's upstream is asked to stream with
usage, and everything one read delivered is forwarded as one batch; a whole
one's (the unary methods) is asked for one JSON answer, whatever kind comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from core.errors import Kind, ServiceError
from services.inference import tokens
from services.inference.balancer import Balancer, Replica
from services.inference.embedding import Embeddings, EmbedRequest
from services.inference.generation import ChatRequest, CompletionRequest, Event
from services.inference.image_fetch import ImageFetcher, has_remote_images, inline_remote_images
from services.inference.models_file import ModelSpec
from services.inference.openai_wire.chat import ChatChunks, chat_payload
from services.inference.openai_wire.completions import TextChunks, completion_payload
from services.inference.openai_wire.embeddings import embeddings_payload, parse_embeddings
from services.inference.openai_wire.errors import bad_response, rejection
from services.inference.sse import EventTooLarge, SseDecoder
from services.inference.upstream import (
    RETRY_ERRORS,
    TRANSPORT_ERRORS,
    UNREADABLE,
    ConnectTimeout,
    MalformedResponse,
    PoolBusy,
    PoolOptions,
    Response,
    Upstream,
)

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({502, 503})
ERROR_BODY_UNREADABLE: tuple[type[BaseException], ...] = (*UNREADABLE, ServiceError)
# Failures before any response: safe to try on another replica.
STREAM_HEADERS = {"accept": "text/event-stream", "accept-encoding": "identity"}
JSON_HEADERS = {"accept": "application/json"}
MAX_ERROR_BODY = 64 * 1024
MAX_COMPLETION_BODY = 64 * 1024 * 1024
MAX_EMBEDDINGS_BODY = 512 * 1024 * 1024


@dataclass(frozen=True)
class UpstreamOptions:
    max_connections: int = 100
    pool_wait_s: float = 5.0
    eject_after: int = 3
    cooldown_s: float = 10.0


class OpenAIBackend:
    def __init__(self, spec: ModelSpec, options: UpstreamOptions) -> None:
        self.spec = spec
        self.options = options
        pool = PoolOptions(options.max_connections, spec.connect_timeout_s, options.pool_wait_s)
        self.balancer = Balancer(
            [Upstream(u, spec.name, pool) for u in spec.upstreams],
            eject_after=options.eject_after,
            cooldown_s=options.cooldown_s,
        )
        self.retries = 0  # attempts after a first one failed (for metrics)
        self.images = ImageFetcher(spec.inline_images) if spec.inline_images else None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        for replica in self.balancer.replicas:
            await replica.target.close()

    def stream_chat(self, request: ChatRequest) -> AsyncGenerator[Event, None]:
        if self.images is not None and has_remote_images(request):
            return self._inlined_chat(self.images, request)
        return self._chat(request)

    async def _inlined_chat(
        self, fetcher: ImageFetcher, request: ChatRequest
    ) -> AsyncGenerator[Event, None]:
        """`inline_images`: remote images fetched here, sent as data URLs."""
        inlined = await inline_remote_images(fetcher, request)
        async with contextlib.aclosing(self._chat(inlined)) as events:
            async for event in events:
                yield event

    def _chat(self, request: ChatRequest) -> AsyncGenerator[Event, None]:
        return self._generate(
            request,
            "chat/completions",
            lambda upstream: chat_payload(request, upstream.model),
            ChatChunks(self.spec.name),
        )

    def stream_completion(self, request: CompletionRequest) -> AsyncGenerator[Event, None]:
        return self._generate(
            request,
            "completions",
            lambda upstream: completion_payload(request, upstream.model),
            TextChunks(self.spec.name),
        )

    async def _generate(
        self,
        request: ChatRequest | CompletionRequest,
        path: str,
        payload: Callable[[Upstream], bytes],
        chunks: ChatChunks,
    ) -> AsyncGenerator[Event, None]:
        deadline = asyncio.get_running_loop().time() + self.spec.timeout_s
        headers = JSON_HEADERS if request.whole else STREAM_HEADERS
        replica, response = await self._open(path, payload, headers, deadline)
        try:
            if response.headers.get("content-type", "").startswith("text/event-stream"):
                decoder = SseDecoder()
                while not chunks.done:
                    read = await response.take()
                    if read is None:
                        deltas = chunks.feed(decoder.close())
                    else:
                        deltas = chunks.feed(decoder.feed(b"".join(read)))
                    if deltas:
                        yield deltas
                    if read is None:
                        break
            else:  # asked for JSON (request.whole), or a server that ignored `stream`
                body = await response.read_all(MAX_COMPLETION_BODY, self._too_large)
                deltas = chunks.completion(body)
                if deltas:
                    yield deltas
            finish = chunks.finish(request)
        except ServiceError:
            self.balancer.failed(replica)
            raise
        except TimeoutError:
            self.balancer.failed(replica)
            raise self._timeout() from None
        except (MalformedResponse, EventTooLarge) as error:
            self.balancer.failed(replica)
            raise bad_response(self.spec.name, str(error)) from None
        except TRANSPORT_ERRORS as error:
            self.balancer.failed(replica)
            log.warning(
                "upstream stream broke",
                extra={"upstream": replica.target.url, "error": repr(error)},
            )
            raise ServiceError(
                Kind.UNAVAILABLE,
                "UPSTREAM_ERROR",
                f"The connection to the upstream of model '{self.spec.name}' broke mid-stream.",
            ) from None
        finally:
            response.close()
            self.balancer.release(replica)
        yield finish

    async def embed(self, request: EmbedRequest) -> Embeddings:
        deadline = asyncio.get_running_loop().time() + self.spec.timeout_s
        replica, response = await self._open(
            "embeddings",
            lambda upstream: embeddings_payload(request, upstream.model),
            JSON_HEADERS,
            deadline,
        )
        try:
            body = await response.read_all(MAX_EMBEDDINGS_BODY, self._too_large)
            matrix, prompt_tokens = parse_embeddings(body, len(request.inputs), self.spec.name)
        except ServiceError:
            self.balancer.failed(replica)
            raise
        except TimeoutError:
            self.balancer.failed(replica)
            raise self._timeout() from None
        except TRANSPORT_ERRORS:
            self.balancer.failed(replica)
            raise ServiceError(
                Kind.UNAVAILABLE,
                "UPSTREAM_ERROR",
                f"The connection to the upstream of model '{self.spec.name}' broke.",
            ) from None
        finally:
            response.close()
            self.balancer.release(replica)
        if prompt_tokens is None:
            prompt_tokens = sum(
                tokens.text_tokens(i) if isinstance(i, str) else len(i) for i in request.inputs
            )
        return Embeddings(matrix, prompt_tokens)

    async def _open(
        self,
        path: str,
        body: Callable[[Upstream], bytes],
        headers: dict[str, str],
        deadline: float,
    ) -> tuple[Replica[Upstream], Response]:
        """A response with a 2xx status from some replica, its load still counted.

        Tries each replica at most once; retries only what failed before an
        answer began (connect errors) or answered 502/503.
        """
        tried: list[Replica[Upstream]] = []
        failure: ServiceError | None = None
        while (replica := self.balancer.acquire(tried)) is not None:
            self.retries += bool(tried)
            tried.append(replica)
            upstream = replica.target
            try:
                async with asyncio.timeout_at(deadline):
                    response = await upstream.post(path, body(upstream), headers, deadline)
            except PoolBusy:  # busy, not broken: no mark against it; another may have room
                self.balancer.abandoned(replica)
                self.balancer.release(replica)
                failure = self._busy()
                continue
            except RETRY_ERRORS as error:  # before TimeoutError: a connect timeout is one too
                self._failed(replica, repr(error))
                failure = self._unreachable(error)
                continue
            except TimeoutError:
                self._failed(replica, "timed out")
                raise self._timeout() from None
            except TRANSPORT_ERRORS as error:
                self._failed(replica, repr(error))
                raise self._unreachable(error) from None
            except BaseException:
                self.balancer.abandoned(replica)
                self.balancer.release(replica)
                raise
            if response.status_code < 300:
                self.balancer.succeeded(replica)
                return replica, response
            try:
                answer = await response.read_all(
                    MAX_ERROR_BODY,
                    lambda: bad_response(self.spec.name, "error body too large"),
                )
                refusal = rejection(
                    response.status_code,
                    answer,
                    response.headers.get("retry-after"),
                    self.spec.name,
                )
            except ERROR_BODY_UNREADABLE:
                refusal = rejection(response.status_code, b"", None, self.spec.name)
            except BaseException:
                self.balancer.abandoned(replica)
                self.balancer.release(replica)
                raise
            finally:
                response.close()
            if response.status_code >= 500:
                self._failed(replica, f"HTTP {response.status_code}")
                if response.status_code in RETRY_STATUSES:
                    failure = refusal
                    continue
            else:
                self.balancer.succeeded(replica)  # it answered: alive
                self.balancer.release(replica)
            raise refusal
        raise failure or ServiceError(
            Kind.UNAVAILABLE,
            "NO_HEALTHY_UPSTREAM",
            f"Every upstream of model '{self.spec.name}' is cooling down after repeated "
            "failures; retry shortly.",
        )

    def _failed(self, replica: Replica[Upstream], why: str) -> None:
        log.warning(
            "upstream attempt failed",
            extra={"model": self.spec.name, "upstream": replica.target.url, "error": why},
        )
        self.balancer.failed(replica)
        self.balancer.release(replica)

    def _unreachable(self, error: BaseException) -> ServiceError:
        if isinstance(error, MalformedResponse):  # it answered, but not in HTTP
            return bad_response(self.spec.name, str(error))
        if isinstance(error, ConnectTimeout):
            return ServiceError(
                Kind.DEADLINE_EXCEEDED,
                "UPSTREAM_TIMEOUT",
                f"Could not connect to an upstream of model '{self.spec.name}' within "
                f"{self.spec.connect_timeout_s:g} s.",
            )
        return ServiceError(
            Kind.UNAVAILABLE,
            "UPSTREAM_UNAVAILABLE",
            f"Could not reach an upstream of model '{self.spec.name}'.",
        )

    def _busy(self) -> ServiceError:
        return ServiceError(
            Kind.UNAVAILABLE,
            "UPSTREAM_BUSY",
            f"Every connection to the upstreams of model '{self.spec.name}' is in use "
            f"(at most {self.options.max_connections} each) and none came free within "
            f"{self.options.pool_wait_s:g} s; retry shortly.",
            metadata={"retry_after_s": "1"},
        )

    def _timeout(self) -> ServiceError:
        return ServiceError(
            Kind.DEADLINE_EXCEEDED,
            "UPSTREAM_TIMEOUT",
            f"Model '{self.spec.name}' did not finish within its "
            f"{self.spec.timeout_s:g} s timeout.",
        )

    def _too_large(self) -> ServiceError:
        return bad_response(self.spec.name, "the answer is too large")
