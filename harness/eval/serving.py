"""What every protocol of `wam-bench serve` shares: one batching thread in front of one policy,
the episode a client is in, images, and what the server announces. The wire formats are one
module each in `harness/eval/protocols/` (openpi's, XPolicyLab's, vla-eval's); `serve.py` is the
command.

DreamZero's history. A history-keeping policy is told the frames observed since its previous
call (`Observation.history`); what a client can tell the server decides what that history is:

- our own evaluator (`eval --server`) renders them at the policy's `frame_stride` cadence and
  sends them (`wam/history`), and vla-eval sends every step's observation, from which the server
  keeps the same cadence frames: both get exactly the in-process evaluator's history;
- openpi's and XPolicyLab's clients are stateless by design: a call brings one frame, the current
  one, and nothing between. For them the history of a call is the last `latent_frames` frames
  the episode's calls brought, the current one last, the oldest repeated while fewer have come:
  the rule DreamZero's own server applies to its clients' frames (`Episode.observation`).

Served and in-process policies agree under the same definition: `tests/test_serve.py` drives one
in-process with histories made by this rule and the server with the bare frames.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import http
import queue
import signal
import threading
import time
from collections import deque

import numpy as np

from harness.eval.rollout import executed
from harness.suites.base import Observation


def needed_cameras(policy) -> list[str]:
    """The cameras a policy reads from `Observation.images` (a request must bring each; the
    policy composes them into its frame)."""
    return list(policy.cameras)


def as_image(value, key: str) -> np.ndarray:
    """A client's image -> (H, W, 3) uint8 at the size it came: CHW is transposed, floats in [0, 1]
    scaled. It is not resized here: the policy's `Frame` resizes each camera to its tile, the one
    resampling a training frame also gets (resizing here first would resample twice). `key` names the
    request field in the error."""
    img = np.asarray(value)
    if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
        img = img.transpose(1, 2, 0)                     # CHW -> HWC
    if img.ndim != 3 or img.shape[-1] != 3 or min(img.shape[:2]) < 1:
        raise ValueError(f"request key '{key}': expected an (H, W, 3) image, got shape {img.shape}")
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255).round().astype(np.uint8) if img.dtype.kind == "f" else img.astype(np.uint8)
    return np.ascontiguousarray(img)



def as_state(value, key: str, state_dim: int) -> np.ndarray:
    state = np.asarray(value, np.float32).reshape(-1)
    if state.shape[0] != state_dim:
        raise ValueError(f"request key '{key}': expected {state_dim} values, got {state.shape[0]}")
    return state


class Episode:
    """One episode as the server sees it (a connection, a trial, a vla-eval session): the policy's
    context, the calls made (call k's noise seed is `noise_seed + k` unless the client sends one),
    the frames the calls brought, and each call's latency and batch size."""

    def __init__(self, policy, noise_seed: int | None):
        self.state = policy.new_state()
        self.noise_seed = noise_seed
        self.needs_history = policy.needs_history
        self.frames: deque = deque(maxlen=policy.chunk.latent_frames)
        self.calls = 0
        self.latency_ms: list[float] = []
        self.batch_size: list[int] = []

    def observation(self, images: dict, state: np.ndarray, instruction: str, history: list | None = None) -> Observation:
        """This call's Observation. `history`: the frames since the previous call as the client sent
        them; None (a stateless client): the last `latent_frames` frames of the episode's calls."""
        if history is None and self.needs_history:
            self.frames.append(images)
            history = [self.frames[0]] * (self.frames.maxlen - len(self.frames)) + list(self.frames)
        return Observation(images, state, instruction, list(history or []))

    def seed(self, explicit=None) -> int | None:
        """This call's noise seed; counts the call."""
        if explicit is not None:
            seed = int(explicit)
        else:
            seed = None if self.noise_seed is None else self.noise_seed + self.calls
        self.calls += 1
        return seed

    def done(self, stats: dict) -> None:
        self.latency_ms.append(stats["latency_ms"])
        self.batch_size.append(stats["batch_size"])


def _snapshot(state):
    return None if state is None else {k: list(v) if isinstance(v, list) else v for k, v in vars(state).items()}


def _restore(state, snap) -> None:
    if state is not None:
        vars(state).update({k: list(v) if isinstance(v, list) else v for k, v in snap.items()})


def run_batch(policy, items: list[tuple]) -> list:
    """Infer `items` [(observation, seed, episode context)] in one call -> per item (chunk, stats),
    or the exception that item raised. When the batch raises, every context is put back as it was
    and each item runs alone, so only a request that fails by itself gets an error and the others
    their actions (batching never changes an answer: noise is seeded per sample)."""
    import torch
    snaps = [_snapshot(it[2]) for it in items]
    try:
        with torch.inference_mode():
            chunks = policy.infer_batch([it[0] for it in items], [it[1] for it in items], [it[2] for it in items])
        return list(zip(chunks, policy.last_stats))
    except Exception as e:
        for it, snap in zip(items, snaps):
            _restore(it[2], snap)
        if len(items) == 1:
            return [e]
        return [run_batch(policy, [it])[0] for it in items]


class Batcher:
    """One thread that infers queued requests in batches: up to `max_batch`, waiting at most
    `max_wait_ms` after the first for more, but never for more requests than there are connected
    clients (`clients`: a lone client pays no wait). A second request of an episode already in the
    batch waits for the next one (its context must see the first). `submit` returns a Future of
    (chunk, stats)."""

    def __init__(self, policy, max_batch: int = 8, max_wait_ms: float = 5.0):
        self.policy, self.max_batch, self.max_wait = policy, max_batch, max_wait_ms / 1000
        self.clients = 0   # open connections (set by the server's handlers, read here)
        self.q: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="wam-batcher", daemon=True)
        self.thread.start()

    def submit(self, obs: Observation, seed: int | None, state) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self.q.put((obs, seed, state, fut))
        return fut

    def close(self):
        self.q.put(None)
        self.thread.join(timeout=10)

    def _loop(self):
        held: list = []   # requests of an episode that already had one in the batch being formed
        stop = False
        while not stop:
            batch, seen, rest = [], set(), []
            for it in held:
                k = _key(it)
                (rest if k in seen or len(batch) >= self.max_batch else batch).append(it)
                seen.add(k)
            held = rest
            if not batch:
                item = self.q.get()
                if item is None:
                    return
                batch, seen = [item], {_key(item)}
            deadline = time.perf_counter() + self.max_wait
            while len(batch) < min(self.max_batch, max(1, self.clients)):
                try:
                    nxt = self.q.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                if _key(nxt) in seen:
                    held.append(nxt)
                    continue
                batch.append(nxt)
                seen.add(_key(nxt))
            for it, out in zip(batch, run_batch(self.policy, [it[:3] for it in batch])):
                _settle(it[3], out)
        for it in held:
            _settle(it[3], RuntimeError("the server is stopping"))


def _key(item) -> int:
    return id(item[2]) if item[2] is not None else id(item)


def _settle(fut: concurrent.futures.Future, out) -> None:
    try:
        if isinstance(out, BaseException):
            fut.set_exception(out)
        else:
            fut.set_result(out)
    except concurrent.futures.InvalidStateError:  # its client left (the awaiting side was cancelled)
        pass


class WebsocketServer:
    """A websocket server in front of one `Batcher` (openpi's and XPolicyLab's protocols): a
    protocol subclass implements `serve_connection(ws)`. `GET /healthz` answers 200; SIGINT and
    SIGTERM stop it."""

    def __init__(self, policy, spec, meta: dict, max_batch: int = 8, max_wait_ms: float = 5.0,
                 noise_seed: int | None = 0):
        self.policy, self.spec, self.metadata, self.noise_seed = policy, spec, meta, noise_seed
        self.cameras = needed_cameras(policy)
        self.batcher = Batcher(policy, max_batch, max_wait_ms)

    def episode(self) -> Episode:
        return Episode(self.policy, self.noise_seed)

    def infer(self, obs: Observation, seed: int | None, ep: Episode):
        """Queue one request now -> an awaitable of (chunk, stats); the episode records the call."""
        fut = asyncio.wrap_future(self.batcher.submit(obs, seed, ep.state))

        async def result() -> tuple[np.ndarray, dict]:
            chunk, stats = await fut
            ep.done(stats)
            return chunk, stats
        return result()

    async def serve_connection(self, ws):
        raise NotImplementedError

    async def handler(self, ws):
        self.batcher.clients += 1
        try:
            await self.serve_connection(ws)
        finally:
            self.batcher.clients -= 1

    @staticmethod
    def health(connection, request):
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        return None

    async def run(self, host: str, port: int, ready=None):
        import websockets.asyncio.server as ws_server
        stop = asyncio.get_running_loop().create_future()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
            except (NotImplementedError, RuntimeError):  # not the main thread (tests, benches)
                pass
        try:
            async with ws_server.serve(self.handler, host, port, compression=None, max_size=None,
                                       process_request=self.health) as server:
                bound = server.sockets[0].getsockname()[1]
                if ready is not None:
                    ready(bound, stop)
                await stop
        finally:
            self.batcher.close()


def metadata(policy, spec, checkpoint_sha256: str | None, max_batch: int, **extra) -> dict:
    """What the server announces (openpi's metadata frame, XPolicyLab's hello_ack): what an eval
    cell records (`config`: the same cell config as in-process) and what a client must send."""
    return {"server": "wam-bench", "variant": policy.variant, "level": policy.level, "suite": spec.name,
            "procedure": policy.procedure, "cameras": needed_cameras(policy), "compose": policy.frame.compose,
            "action_dim": spec.action_dim, "state_dim": spec.state_dim, "image_size": spec.image_size,
            "action_horizon": executed(policy, spec), "chunk_actions": policy.chunk.actions,
            "frame_stride": policy.frame_stride, "needs_history": policy.needs_history,
            "checkpoint_sha256": checkpoint_sha256, "max_batch": max_batch, "config": policy.config, **extra}
