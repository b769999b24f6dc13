"""XPolicyLab's websocket protocol (`wam-bench serve --protocol xpolicylab`): the path RoboTwin
2.0's official evaluation (`eval_policy_xpolicylab.py`) drives a policy through. Written from
XPolicyLab's `client_server/ws/` (protocol/messages.py, schemas.py, codec.py, client.py,
model_client.py, model_server.py at 7198143e) and its plug-ins (`model_template.py`,
`policy/FastWAM`, `policy/DreamZero`).

Frames: one binary msgpack map each (`use_bin_type`), numpy arrays in msgpack-numpy's encoding
({b"nd": True, b"type": dtype.str, b"kind": b"", b"shape": shape, b"data": raw bytes}; a scalar
{b"nd": False, b"type", b"data"}); object and void arrays are refused, nothing is unpickled. The
envelope is `ENVELOPE` (unknown fields refused); a reply echoes the request's message_id, ids and
step:

    hello        -> hello_ack         {"ok", "server": "wam-bench", "metadata": what is served}
    prepare_case -> prepare_case_ack  {"ok"}; the case's fields go into its trials' records
    reset        -> reset_result      {"ok"}; the frame's trial starts over (DreamZero's context)
    infer        -> infer_result      {"actions", "latency_ms", "policy_timing"}
    trial_end    -> trial_end_ack     {"ok", "result": {"recorded": FILE}}
    heartbeat    -> heartbeat_ack     {"ok"}
    close           the server closes the connection
    a failure    -> error             {"code", "message", "details"}; the connection stays open.
                                      Codes as XPolicyLab's: invalid_frame, unknown_message_type,
                                      infer_failed, reset_failed, internal.

Observation (`infer`'s {"observation": ...}, RoboTwin's aloha-agilex as XPolicyLab's env clients
send it): {"vision": {camera: {"color": (H, W, 3)} or (H, W, 3)}, "state": {"left_arm_joint_state":
(6,), "left_ee_joint_state": (1,), "right_arm_joint_state": (6,), "right_ee_joint_state": (1,)},
"instruction": str ("task_instruction" and "instructions" too; a list gives its first),
"env_idx": int}. A camera maps to the suite's by XPolicyLab's name for it (the suite adapter's
`WIRE_CAMERAS["xpolicylab"]`; RoboTwin's: harness/suites/robotwin.py CAMERAS, `cam_head` -> `head`)
or by its own name, and every camera the checkpoint's frame composes must come; the state is packed
in XPolicyLab's order (each arm's joints then its gripper, left arm first; single-arm `joint_state`
+ `ee_joint_state`) or sent as a flat array. Actions come back as XPolicyLab's plug-ins return
them: the actions the client executes before it observes again (the suite's `action_horizon`, else
the policy's, at most the chunk: `harness.eval.rollout.executed`; XPolicyLab's FastWAM plug-in
returns its `replan_steps` the same way), one map per step with the state's keys when the state
came as such a map and its sizes add up to the action size (joint targets, RoboTwin's layout), else
an (H, D) float32 array.

Trials: each (trial_id, env_idx) of a connection is one episode (`harness.eval.serving.Episode`;
XPolicyLab's clients are stateless, so DreamZero's history is the stateless rule there). RoboTwin's
eval workers, one connection each, share the batcher; a connection may also send several infer
frames without waiting (heartbeats are answered meanwhile). Each trial_end is appended as one
JSON line to the record file (`--record`, default results/served/xpolicylab_trials.jsonl): the
ids, the client's result, the case's fields, per episode the server's calls with their latency
and batch size, and what was served (variant, level, suite, checkpoint hash), for `import-results`.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
import traceback
import uuid
from datetime import datetime, timezone
from pathlib import Path

import msgpack
import numpy as np

from harness.eval.rollout import executed
from harness.eval.serving import Episode, WebsocketServer, as_image, as_state
from harness.suites.base import wire_cameras

REPLIES = {"hello": "hello_ack", "prepare_case": "prepare_case_ack", "reset": "reset_result",
           "infer": "infer_result", "trial_end": "trial_end_ack", "heartbeat": "heartbeat_ack"}
ENVELOPE = ("message_type", "message_id", "evaluation_id", "action_case_id", "trial_id", "repeat_index",
            "step", "sent_at", "payload")
# XPolicyLab's packing order of a joint state (`pack_robot_state`, action_type "joint").
STATE_LAYOUTS = (("left_arm_joint_state", "left_ee_joint_state", "right_arm_joint_state", "right_ee_joint_state"),
                 ("joint_state", "ee_joint_state"), ("arm_joint_state", "ee_joint_state"))


class FrameError(Exception):
    """A request that gets an error frame: `code` is one of XPolicyLab's error codes; `frame` what
    could be read of the request (its ids are echoed, so the client's waiting request fails at once)."""

    def __init__(self, code: str, message: str, details: dict | None = None, frame: dict | None = None):
        super().__init__(message)
        self.code, self.message, self.details, self.frame = code, message, details or {}, frame or {}


def _encode(obj):
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in "OV":
        raise ValueError(f"cannot send a numpy array of dtype {obj.dtype} (object and void are refused)")
    if isinstance(obj, np.ndarray):
        return {b"nd": True, b"type": obj.dtype.str, b"kind": b"", b"shape": obj.shape,
                b"data": np.ascontiguousarray(obj).tobytes()}
    if isinstance(obj, np.generic):
        return {b"nd": False, b"type": obj.dtype.str, b"data": obj.tobytes()}
    return obj


def _decode(obj: dict):
    if b"nd" not in obj:
        return obj
    if obj.get(b"kind", b"") != b"":
        raise ValueError(f"refused a numpy array of kind {obj[b'kind']!r} (object and void are refused)")
    dtype = np.dtype(obj[b"type"])
    if dtype.kind in "OV":
        raise ValueError(f"refused a numpy array of dtype {dtype}")
    if obj[b"nd"] is True:
        return np.ndarray(buffer=obj[b"data"], dtype=dtype, shape=obj[b"shape"])
    return np.frombuffer(obj[b"data"], dtype=dtype)[0]


def pack(frame: dict) -> bytes:
    return msgpack.packb(frame, default=_encode, use_bin_type=True)


def decode(data: bytes) -> dict:
    """A frame's bytes -> its map (FrameError when it is not one)."""
    try:
        frame = msgpack.unpackb(data, raw=False, object_hook=_decode)
    except Exception as e:
        raise FrameError("invalid_frame", f"msgpack decode failed: {e}") from None
    if not isinstance(frame, dict):
        raise FrameError("invalid_frame", "frame must be a msgpack map")
    return frame


def unpack(data: bytes) -> dict:
    """A request's bytes -> its envelope, checked as XPolicyLab's `Frame.from_wire_dict` (FrameError)."""
    frame = decode(data)
    for key in ("message_type", "message_id", "evaluation_id"):
        if frame.get(key) is None:
            raise FrameError("invalid_frame", f"missing {key}", frame=frame)
    extra = sorted(map(str, set(frame) - set(ENVELOPE)))
    if extra:
        raise FrameError("invalid_frame", f"unknown envelope field(s) {extra}; a frame has {list(ENVELOPE)}", frame=frame)
    if frame["message_type"] not in REPLIES and frame["message_type"] != "close":
        raise FrameError("unknown_message_type", f"unsupported request type: {frame['message_type']!r}", frame=frame)
    if not isinstance(frame.get("payload") or {}, dict):
        raise FrameError("invalid_frame", "payload must be a map", frame=frame)
    return {**frame, "payload": frame.get("payload") or {}}


def reply(frame: dict, message_type: str, payload: dict) -> dict:
    step = frame.get("step")
    return {"message_type": message_type, "message_id": str(frame.get("message_id") or ""),
            "evaluation_id": str(frame.get("evaluation_id") or ""), "action_case_id": frame.get("action_case_id"),
            "trial_id": frame.get("trial_id"), "repeat_index": frame.get("repeat_index"),
            "step": step if isinstance(step, int) else 0, "sent_at": datetime.now(timezone.utc).isoformat(),
            "payload": payload}


def error(frame: dict, e: FrameError) -> dict:
    return reply(frame, "error", {"code": e.code, "message": e.message, "details": e.details})


def _image(entry):
    if isinstance(entry, dict):
        entry = next((entry[k] for k in ("color", "rgb", "colors") if entry.get(k) is not None), None)
    return entry


def to_observation(obs: dict, names: dict[str, str], cameras: list[str], state_dim: int, episode: Episode):
    """An infer frame's observation -> (this call's Observation, the state's layout
    [(key, size)] or None for a flat state). `names`: XPolicyLab's camera name -> the suite's."""
    if not isinstance(obs, dict):
        raise ValueError(f"observation: expected a map, got {type(obs).__name__}")
    vision = obs.get("vision") or {}
    images = {}
    for key, entry in vision.items():
        cam = names.get(key)
        img = _image(entry)
        if cam in cameras and img is not None and cam not in images:
            images[cam] = as_image(img, f"vision/{key}")
    missing = [c for c in cameras if c not in images]
    if missing:
        want = {c: [k for k, v in names.items() if v == c] for c in missing}
        raise ValueError(f"observation: vision lacks camera(s) {want} (an image or {{'color': image}}); "
                         f"got {sorted(vision)}")
    raw = obs.get("state")
    layout = None
    if isinstance(raw, dict):
        keys = next((lay for lay in STATE_LAYOUTS if all(k in raw for k in lay)), None)
        if keys is None:
            raise ValueError("observation: state has none of XPolicyLab's joint layouts "
                             f"{[list(x) for x in STATE_LAYOUTS]} "
                             f"(got {sorted(raw)})")
        parts = [np.asarray(raw[k], np.float32).reshape(-1) for k in keys]
        layout = [(k, len(p)) for k, p in zip(keys, parts)]
        raw = np.concatenate(parts)
    elif raw is None:
        raise ValueError("observation: no 'state'")
    state = as_state(raw, "state", state_dim)
    text = next((obs[k] for k in ("task_instruction", "instruction", "instructions") if obs.get(k) is not None), None)
    if isinstance(text, (list, tuple)):
        text = text[0] if text else None
    if isinstance(text, bytes):
        text = text.decode()
    if not isinstance(text, str) or not text:
        raise ValueError("observation: no 'instruction' (a string, or 'task_instruction', or a list 'instructions')")
    return episode.observation(images, state, text), layout


def to_actions(chunk: np.ndarray, layout):
    """(H, D) -> one map per step in the state's layout, or the array itself."""
    chunk = np.asarray(chunk, np.float32)
    if layout is None or sum(n for _, n in layout) != chunk.shape[1]:
        return chunk
    bounds = np.cumsum([0] + [n for _, n in layout])
    return [{k: np.ascontiguousarray(a[lo:hi]) for (k, _), lo, hi in zip(layout, bounds[:-1], bounds[1:])}
            for a in chunk]


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    return str(v)


class XPolicyLabServer(WebsocketServer):
    """XPolicyLab's protocol over the shared batcher: per connection, one episode per trial and env."""

    def __init__(self, policy, spec, meta: dict, record: str | Path, **kw):
        super().__init__(policy, spec, meta, **kw)
        self.record = Path(record)
        self.names = wire_cameras(spec, "xpolicylab")   # XPolicyLab's camera names -> the suite's
        self.horizon = executed(policy, spec)

    async def serve_connection(self, ws):
        import websockets
        trials: dict = {}      # trial_id -> {env_idx: Episode}
        cases: dict = {}       # action_case_id -> prepare_case's fields
        pending: set = set()   # infer replies being computed
        lock = asyncio.Lock()

        async def send(frame):
            async with lock:
                await ws.send(pack(frame))

        async def answer(frame, work):
            try:
                await send(await work)
            except FrameError as e:
                await send(error(frame, e))
            except websockets.ConnectionClosed:
                pass

        try:
            async for raw in ws:
                if not isinstance(raw, (bytes, bytearray)):
                    continue
                try:
                    frame = unpack(bytes(raw))
                except FrameError as e:
                    await send(error(e.frame, e))
                    continue
                kind = frame["message_type"]
                if kind == "close":
                    break
                try:
                    if kind == "infer":  # queued now, in order; answered when its batch is done
                        task = asyncio.create_task(answer(frame, self._infer(frame, trials)))
                        pending.add(task)
                        task.add_done_callback(pending.discard)
                        continue
                    if kind == "trial_end" and pending:
                        await asyncio.gather(*pending, return_exceptions=True)
                    await send(self._handle(frame, trials, cases))
                except FrameError as e:
                    await send(error(frame, e))
                except Exception as e:
                    await send(error(frame, FrameError("internal", f"{type(e).__name__}: {e}",
                                                       {"traceback": traceback.format_exc()})))
        except websockets.ConnectionClosed:
            pass
        finally:
            for task in pending:
                task.cancel()
        await ws.close()

    def _handle(self, frame: dict, trials: dict, cases: dict) -> dict:
        kind, payload = frame["message_type"], frame["payload"]
        if kind == "hello":
            return reply(frame, "hello_ack", {"ok": True, "server": "wam-bench", "metadata": self.metadata})
        if kind == "heartbeat":
            return reply(frame, "heartbeat_ack", {"ok": True})
        if kind == "prepare_case":
            case = frame.get("action_case_id") or payload.get("action_case_id")
            cases[case] = {k: _jsonable(v) if not isinstance(v, (str, int, float, bool, type(None), list, dict)) else v
                           for k, v in payload.items()}
            return reply(frame, "prepare_case_ack", {"ok": True})
        trial = frame.get("trial_id") or payload.get("trial_id")
        if kind == "reset":
            trials[trial] = {}
            return reply(frame, "reset_result", {"ok": True})
        # trial_end
        episodes = trials.pop(trial, {})
        try:
            self._append({"evaluation_id": frame["evaluation_id"], "action_case_id": frame.get("action_case_id"),
                          "trial_id": trial, "repeat_index": frame.get("repeat_index"),
                          "result": {k: v for k, v in payload.items() if k != "trial_id"},
                          "case": cases.get(frame.get("action_case_id")),
                          "episodes": [{"env_idx": i, "calls": ep.calls, "latency_ms": ep.latency_ms,
                                        "batch_size": ep.batch_size} for i, ep in episodes.items()],
                          "served": {"protocol": "xpolicylab", "variant": self.metadata["variant"],
                                     "level": self.metadata["level"], "suite": self.metadata["suite"],
                                     "checkpoint_sha256": self.metadata["checkpoint_sha256"]},
                          "received_at": datetime.now(timezone.utc).isoformat()})
        except OSError as e:
            raise FrameError("internal", f"could not record the trial in {self.record}: {e}") from None
        return reply(frame, "trial_end_ack", {"ok": True, "result": {"recorded": str(self.record)}})

    def _append(self, record: dict) -> None:
        """One JSON line, flushed to disk before the ack (a finished trial is never lost)."""
        self.record.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, default=_jsonable) + "\n"
        with open(self.record, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def _infer(self, frame: dict, trials: dict):
        """Map the observation and queue it now (so frames of a trial keep their order); the
        returned coroutine waits for the batch and makes the reply."""
        t0 = time.monotonic()
        obs = frame["payload"].get("observation")
        if obs is None:
            raise FrameError("invalid_frame", "infer payload missing observation")
        trial = trials.setdefault(frame.get("trial_id"), {})
        env = obs.get("env_idx", 0) if isinstance(obs, dict) else 0
        ep = trial.setdefault(int(env), self.episode())
        try:
            observation, layout = to_observation(obs, self.names, self.cameras, self.spec.state_dim, ep)
        except Exception as e:
            raise FrameError("infer_failed", f"{type(e).__name__}: {e}") from None
        result = self.infer(observation, ep.seed(), ep)

        async def finish() -> dict:
            try:
                chunk, stats = await result
            except Exception as e:
                raise FrameError("infer_failed", f"{type(e).__name__}: {e}",
                                 {"traceback": "".join(traceback.format_exception(e))}) from None
            return reply(frame, "infer_result", {
                "actions": to_actions(chunk[:self.horizon], layout), "latency_ms": (time.monotonic() - t0) * 1000,
                "policy_timing": {"infer_ms": stats["latency_ms"], "batch_size": stats["batch_size"],
                                  "effective_steps": stats["effective_steps"],
                                  "forward_passes": stats["forward_passes"]}})
        return finish()


class Client:
    """A synchronous client sending the frames XPolicyLab's `WsModelClient` sends, one request at a
    time (for `bench serve` and smoke checks; RoboTwin's evaluation uses XPolicyLab's own)."""

    def __init__(self, url: str, evaluation_id: str = "wam-bench", trial_id: str = "trial-0",
                 action_case_id: str | None = None):
        import websockets.sync.client
        # held open across calls (not a `with` block): entering it says so to websockets >= 17.1
        self.ws = websockets.sync.client.connect(url, max_size=None, compression=None).__enter__()
        self.evaluation_id, self.trial_id, self.action_case_id, self.step = evaluation_id, trial_id, action_case_id, 0
        self.metadata = self.request("hello", {})["payload"]["metadata"]

    def request(self, kind: str, payload: dict, step: int = 0) -> dict:
        frame = {"message_type": kind, "evaluation_id": self.evaluation_id, "action_case_id": self.action_case_id,
                 "trial_id": self.trial_id, "repeat_index": None, "step": step,
                 "sent_at": datetime.now(timezone.utc).isoformat(), "message_id": str(uuid.uuid4()), "payload": payload}
        self.ws.send(pack(frame))
        reply = decode(self.ws.recv())
        if reply.get("message_type") == "error":
            raise RuntimeError(f"policy server error {reply['payload'].get('code')}: {reply['payload'].get('message')}")
        return reply

    def reset(self) -> None:
        self.step = 0
        self.request("reset", {"trial_id": self.trial_id})

    def infer(self, observation: dict) -> dict:
        """The infer_result's payload ({"actions", "latency_ms", "policy_timing"})."""
        self.step += 1
        return self.request("infer", {"observation": observation}, step=self.step - 1)["payload"]

    def trial_end(self, result: dict) -> dict:
        return self.request("trial_end", {"trial_id": self.trial_id, **result})["payload"]

    def close(self) -> None:
        self.ws.close()
