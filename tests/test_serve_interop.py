"""`wam-bench serve` for the other harnesses' clients: XPolicyLab's protocol (RoboTwin's official
evaluation; a server subprocess and clients sending exactly the frames its `WsModelClient` sends,
written here from XPolicyLab's protocol with msgpack-numpy, the codec its clients use) and
vla-eval's (our `PredictModelServer` under vla-eval's own `serve_background`, driven by vla-eval's
own `Connection`, its specs checked by vla-eval's own `check_specs`).

Checkpoints hold random weights (`random_checkpoint`); the RoboTwin one is served for the recorded
suite robotwin2_clean (14-d joint state and actions, three cameras; it reads the head camera). A
trained checkpoint reading all three: tests/test_robotwin_route.py."""
import asyncio
import json
import uuid
from datetime import datetime, timezone

import anyio
import msgpack
import msgpack_numpy
import numpy as np
import pytest
import websockets
from test_serve import random_checkpoint, start_server, stateless_history, stop

from harness.config import Registry
from harness.errors import UserError
from harness.eval.protocols import xpolicylab
from harness.policy.policy import load_policy
from harness.suites.base import Observation

@pytest.fixture(scope="module")
def robotwin(tmp_path_factory):
    """A dreamzero checkpoint of RoboTwin's shapes (14-d state and actions) reading the head camera."""
    return random_checkpoint(tmp_path_factory.mktemp("robotwin") / "dreamzero.safetensors", "dreamzero", action=14,
                             state=14, camera="head")


@pytest.fixture(scope="module")
def xserver(robotwin, tmp_path_factory):
    log = tmp_path_factory.mktemp("xlog")
    record = log / "trials.jsonl"
    proc, port = start_server(robotwin, log / "server.log", "--protocol", "xpolicylab", "--suite", "robotwin2_clean",
                              "--max-batch", "4", "--max-wait-ms", "300", "--record", str(record))
    yield f"ws://127.0.0.1:{port}", record
    stop(proc)


class WsModelClientFrames:
    """The frames XPolicyLab's `WsModelClient` (over its `PolicyEvalClient`) sends, one request at a
    time: the `Frame` envelope as `to_wire_dict` writes it, packed with msgpack-numpy's encoder and
    `use_bin_type`; replies read as its codec reads them."""

    def __init__(self, url: str, evaluation_id: str, trial_id: str, action_case_id: str | None = None,
                 repeat_index: int | None = None):
        self.url, self.evaluation_id, self.trial_id = url, evaluation_id, trial_id
        self.action_case_id, self.repeat_index, self.step = action_case_id, repeat_index, 0

    async def connect(self):
        self.ws = await websockets.connect(self.url, max_size=None, ping_interval=20, ping_timeout=20)
        return await self.request("hello", {})

    async def send(self, kind: str, payload: dict, *, action_case_id=None, trial_id=None, repeat_index=None,
                   step: int = 0) -> str:
        message_id = str(uuid.uuid4())
        frame = {"message_type": kind, "evaluation_id": self.evaluation_id, "action_case_id": action_case_id,
                 "trial_id": trial_id, "repeat_index": repeat_index, "step": step,
                 "sent_at": datetime.now(timezone.utc).isoformat(), "message_id": message_id, "payload": payload}
        await self.ws.send(msgpack.packb(frame, default=msgpack_numpy.encode, use_bin_type=True))
        return message_id

    async def recv(self) -> dict:
        return msgpack.unpackb(await self.ws.recv(), raw=False, object_hook=msgpack_numpy.decode)

    async def request(self, kind: str, payload: dict, **ids) -> dict:
        message_id = await self.send(kind, payload, **ids)
        reply = await self.recv()
        assert reply["message_id"] == message_id
        return reply

    # WsModelClient.call(func_name=...)
    async def prepare_case(self, meta: dict):
        return await self.request("prepare_case", {"action_case_id": self.action_case_id, **meta},
                                  action_case_id=self.action_case_id)

    async def reset(self):
        self.step = 0
        return await self.request("reset", {"trial_id": self.trial_id}, action_case_id=self.action_case_id,
                                  trial_id=self.trial_id, repeat_index=self.repeat_index)

    async def get_action(self, obs: dict):
        reply = await self.request("infer", {"observation": obs}, trial_id=self.trial_id,
                                   action_case_id=self.action_case_id, step=self.step)
        self.step += 1
        return reply

    async def trial_end(self, result: dict):
        return await self.request("trial_end", {"trial_id": self.trial_id, **result}, trial_id=self.trial_id,
                                  action_case_id=self.action_case_id)


def aloha_obs(seed: int, instruction: str = "beat the block with the hammer") -> dict:
    """An observation as XPolicyLab's env clients send RoboTwin's aloha-agilex (debug_env_client's shape)."""
    rng = np.random.default_rng(seed)
    cam = lambda: {"color": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),  # noqa: E731
                   "intrinsic_matrix": [[615.0, 0.0, 32.0], [0.0, 615.0, 32.0], [0.0, 0.0, 1.0]]}
    state = {"left_arm_joint_state": rng.normal(size=6).astype(np.float32),
             "left_ee_joint_state": rng.normal(size=1).astype(np.float32),
             "right_arm_joint_state": rng.normal(size=6).astype(np.float32),
             "right_ee_joint_state": rng.normal(size=1).astype(np.float32),
             "left_ee_pose": np.ones(7, np.float32), "right_ee_pose": np.ones(7, np.float32)}
    return {"vision": {"cam_head": cam(), "cam_left_wrist": cam(), "cam_right_wrist": cam()}, "instruction": instruction,
            "state": state, "additional_info": {"frequency": 30}, "data_format_version": "v1.0", "env_idx": 0}


def packed_state(obs: dict) -> np.ndarray:
    s = obs["state"]
    return np.concatenate([s["left_arm_joint_state"], s["left_ee_joint_state"], s["right_arm_joint_state"],
                           s["right_ee_joint_state"]]).astype(np.float32)


def test_xpolicylab_codec_is_msgpack_numpys():
    frame = {"message_type": "infer", "message_id": "m", "evaluation_id": "e", "step": 3,
             "payload": {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.int64(3), "b": np.bool_(True),
                         "u": np.zeros((2, 2, 3), np.uint8), "x": "text"}}
    theirs = msgpack.packb(frame, default=msgpack_numpy.encode, use_bin_type=True)
    assert xpolicylab.pack(frame) == theirs
    back = xpolicylab.unpack(theirs)
    assert np.array_equal(back["payload"]["a"], frame["payload"]["a"]) and back["payload"]["s"] == 3
    assert back["payload"]["u"].dtype == np.uint8 and back["payload"]["b"]
    with pytest.raises(ValueError, match="object"):
        xpolicylab.pack({"o": np.array([None])})
    pickled = msgpack.packb({**frame, "payload": {"o": np.array([{}])}}, default=msgpack_numpy.encode, use_bin_type=True)
    with pytest.raises(xpolicylab.FrameError, match="refused"):   # msgpack-numpy would unpickle it
        xpolicylab.unpack(pickled)


def test_xpolicylab_eval_workers_get_14d_chunks_batched(xserver, robotwin):
    """Three RoboTwin eval workers (one connection each) run a trial of three calls through the
    frames WsModelClient sends: each call's reply is 8 steps of XPolicyLab's dual-arm joint maps (14
    values), equal to the in-process policy under the stateless history; the workers' calls share
    batches; a heartbeat is answered mid-trial; each trial_end lands in the record file."""
    url, record = xserver
    ckpt = robotwin
    calls = 3

    async def worker(w: int):
        c = WsModelClientFrames(url, "eval-1", f"trial-{w}", action_case_id="beat_block_hammer-demo_clean",
                                repeat_index=w)
        hello = await c.connect()
        await c.prepare_case({"task_name": "beat_block_hammer", "seed": 100000 * (1 + w)})
        reset = await c.reset()
        replies = []
        for k in range(calls):
            replies.append(await c.get_action(aloha_obs(100 * w + k)))
            if k == 0:
                beat = await c.request("heartbeat", {})
                assert beat["message_type"] == "heartbeat_ack" and beat["payload"]["ok"]
        end = await c.trial_end({"success": w == 1, "steps": 24, "error": None})
        await c.ws.close()
        return hello, reset, replies, end

    async def all_workers():
        return await asyncio.gather(*(worker(w) for w in range(3)))

    results = asyncio.run(all_workers())
    pol = load_policy(ckpt)
    lf = pol.chunk.latent_frames
    sizes = []
    for w, (hello, reset, replies, end) in enumerate(results):
        assert hello["message_type"] == "hello_ack" and hello["payload"]["metadata"]["variant"] == "dreamzero"
        assert reset["message_type"] == "reset_result" and reset["trial_id"] == f"trial-{w}"
        pol.reset()
        frames = []
        for k, r in enumerate(replies):
            assert r["message_type"] == "infer_result" and r["step"] == k
            obs = aloha_obs(100 * w + k)
            frames.append({"head": obs["vision"]["cam_head"]["color"]})
            expect = pol.infer(Observation(frames[-1], packed_state(obs), obs["instruction"],
                                           stateless_history(frames, lf)), noise_seed=k)
            steps = r["payload"]["actions"]
            assert len(steps) == 8 and list(steps[0]) == ["left_arm_joint_state", "left_ee_joint_state",
                                                          "right_arm_joint_state", "right_ee_joint_state"]
            got = np.stack([np.concatenate([s[key] for key in steps[0]]) for s in steps])
            assert got.shape == (8, 14) and np.abs(got - expect).max() <= 1e-5, (w, k)
            sizes.append(r["payload"]["policy_timing"]["batch_size"])
        assert end["message_type"] == "trial_end_ack" and end["payload"]["result"]["recorded"] == str(record)
    assert max(sizes) > 1
    lines = [json.loads(x) for x in record.read_text().splitlines()]
    assert sorted(x["trial_id"] for x in lines) == ["trial-0", "trial-1", "trial-2"]
    one = next(x for x in lines if x["trial_id"] == "trial-1")
    assert one["result"] == {"success": True, "steps": 24, "error": None} and one["evaluation_id"] == "eval-1"
    assert one["case"] == {"action_case_id": "beat_block_hammer-demo_clean", "task_name": "beat_block_hammer",
                           "seed": 200000}
    assert one["episodes"][0]["calls"] == calls and len(one["episodes"][0]["latency_ms"]) == calls
    assert one["served"]["variant"] == "dreamzero" and one["served"]["protocol"] == "xpolicylab"


def test_xpolicylab_failures_are_error_frames(xserver):
    """Each failure is the protocol's error frame, echoing the request's message_id, and the
    connection carries on; a close frame ends it."""

    async def session():
        c = WsModelClientFrames(url, "eval-2", "trial-x")
        await c.connect()
        await c.reset()
        out = {"no_obs": await c.request("infer", {}, trial_id="trial-x")}
        bad = aloha_obs(7)
        bad["state"] = {"left_arm_joint_state": np.zeros(6, np.float32)}
        out["bad_state"] = await c.get_action(bad)
        short = aloha_obs(8)
        short["state"]["left_arm_joint_state"] = np.zeros(5, np.float32)
        out["short_state"] = await c.get_action(short)
        out["unknown"] = await c.request("dance", {})
        out["heartbeat"] = await c.request("heartbeat", {})
        out["good"] = await c.get_action(aloha_obs(9))
        await c.send("close", {"reason": "done"})
        try:
            await c.recv()
            out["closed"] = False
        except websockets.ConnectionClosed:
            out["closed"] = True
        return out

    url, _ = xserver
    out = asyncio.run(session())
    for key, code, words in (("no_obs", "invalid_frame", "missing observation"), ("bad_state", "infer_failed", "layouts"),
                             ("short_state", "infer_failed", "expected 14 values"),
                             ("unknown", "unknown_message_type", "'dance'")):
        frame = out[key]
        assert frame["message_type"] == "error" and frame["payload"]["code"] == code, (key, frame["payload"])
        assert words in frame["payload"]["message"], (key, frame["payload"]["message"])
    assert out["heartbeat"]["message_type"] == "heartbeat_ack"
    assert out["good"]["message_type"] == "infer_result" and len(out["good"]["payload"]["actions"]) == 8
    assert out["closed"]


# ------------------------------------------------------------------------------------------- vla-eval

@pytest.fixture(scope="module")
def dz_tabletop(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("vla") / "dreamzero.safetensors", "dreamzero")


def test_vla_eval_sessions_share_batches_and_keep_dreamzero_history(dz_tabletop):
    """vla-eval's own client (`Connection`), one observation a step, two sessions at once against
    `serve_background`: every step's action is the in-process chunk's, DreamZero's history being
    the frames at the policy's cadence between calls, as our evaluator renders them; vla-eval's
    dispatch batches the sessions' calls into `predict_batch`."""
    from vla_eval.api import serve_background
    from vla_eval.connection import Connection

    from harness.eval.protocols.vla_eval import WamBenchModelServer
    policy = load_policy(dz_tabletop)
    server = WamBenchModelServer(policy, Registry().suite("tabletop"), max_batch_size=2, max_wait_time=1.0)
    H, stride, steps = policy.action_horizon, policy.frame_stride, 2 * policy.action_horizon + 1

    def obs(session: int, t: int) -> dict:
        rng = np.random.default_rng(1000 * session + t)
        return {"images": {"front": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)},
                "state": rng.normal(size=4).astype(np.float32), "task_description": "stack the red cube on the blue cube"}

    async def session(url: str, s: int, out: dict):
        async with Connection(url) as conn:
            assert conn.server_info["action_spec"]["actions"]["dims"] == 4
            await conn.start_episode({"task": {"name": "stack"}})
            out[s] = [np.asarray((await conn.act(obs(s, t)))["actions"]) for t in range(steps)]
            await conn.end_episode({"success": False})

    async def both(url: str) -> dict:
        out: dict = {}
        async with anyio.create_task_group() as tg:
            for s in range(2):
                tg.start_soon(session, url, s, out)
        return out

    with serve_background(server) as handle:
        got = anyio.run(both, handle.url)
    check = load_policy(dz_tabletop)
    for s in range(2):
        check.reset()
        for k, t0 in enumerate(range(0, steps, H)):
            o = obs(s, t0)
            history = [{"front": obs(s, t)["images"]["front"]}
                       for t in range(t0 - H + 1, t0 + 1) if t > 0 and t % stride == 0]
            chunk = check.infer(Observation(o["images"], o["state"], o["task_description"], history), noise_seed=k)
            for i in range(min(H, steps - t0)):
                assert np.abs(got[s][t0 + i] - chunk[i]).max() <= 1e-5, (s, t0, i)
    assert 2 in server.batch_sizes


def test_vla_eval_specs_match_its_benchmarks_and_others_are_refused(dz_tabletop, robotwin, tmp_path, capsys):
    """The server's declared specs pass vla-eval's own `check_specs` against its LIBERO and RoboTwin
    benchmarks; a LIBERO observation as vla-eval's LIBERO benchmark sends it comes back as the
    in-process 7-d action, one without its state as vla-eval's ERROR message; a benchmark the
    checkpoint cannot produce actions for is refused in one line."""
    from vla_eval.api import serve_background
    from vla_eval.benchmarks.libero.benchmark import LIBEROBenchmark
    from vla_eval.benchmarks.robotwin.benchmark import RoboTwinBenchmark
    from vla_eval.connection import Connection
    from vla_eval.specs import check_specs

    from harness.cli import main as cli
    from harness.eval.protocols.vla_eval import WamBenchModelServer
    libero_ckpt = random_checkpoint(tmp_path / "fastwam-libero.safetensors", "fastwam", action=7, state=8,
                                    camera="agentview")
    lib = WamBenchModelServer(load_policy(libero_ckpt), Registry().suite("libero_spatial"), benchmark="libero")
    assert lib.get_observation_params() == {"send_state": True}   # the checkpoint reads agentview only
    bench = LIBEROBenchmark(**lib.get_observation_params())
    assert check_specs(lib.get_action_spec(), bench.get_action_spec(), lib.get_observation_spec(),
                       bench.get_observation_spec()) == []
    twin = WamBenchModelServer(load_policy(robotwin), Registry().suite("robotwin2_clean"), benchmark="robotwin")
    bench = RoboTwinBenchmark(task_name="beat_block_hammer")
    assert check_specs(twin.get_action_spec(), bench.get_action_spec(), twin.get_observation_spec(),
                       bench.get_observation_spec()) == []

    rng = np.random.default_rng(3)
    sent = {"images": {"agentview": rng.integers(0, 255, (256, 256, 3), dtype=np.uint8),
                       "wrist": rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)},
            "task_description": "pick up the black bowl", "states": rng.normal(size=8),
            "controller_states": rng.normal(size=8).astype(np.float32)}

    async def one(url):
        async with Connection(url) as conn:
            await conn.start_episode({"task": {"name": "t"}})
            with pytest.raises(RuntimeError, match="observation_failed: ValueError: observation lacks the state"):
                await conn.act({k: v for k, v in sent.items() if k != "states"})   # its session alone gets ERROR
            return np.asarray((await conn.act(sent))["actions"])

    with serve_background(lib) as handle:
        action = anyio.run(one, handle.url)
    expect = load_policy(libero_ckpt).infer(Observation({"agentview": sent["images"]["agentview"]},
                                                        sent["states"].astype(np.float32), sent["task_description"]),
                                            noise_seed=0)
    assert action.shape == (7,) and np.abs(action - expect[0]).max() <= 1e-5

    tabletop = load_policy(dz_tabletop)
    for policy, suite, benchmark in ((tabletop, Registry().suite("tabletop"), "libero"),
                                     (load_policy(libero_ckpt), Registry().suite("libero_spatial"), "robotwin"),
                                     (load_policy(libero_ckpt), Registry().suite("libero_spatial"),
                                      "vla_eval.benchmarks.calvin.benchmark:CALVINBenchmark")):
        with pytest.raises(UserError, match=f"--benchmark {benchmark}: this checkpoint produces suite {suite.name}'s"):
            WamBenchModelServer(policy, suite, benchmark=benchmark)
    with pytest.raises(UserError, match="checkpoint's actions have 7 values"):   # served with the wrong suite
        WamBenchModelServer(load_policy(libero_ckpt), Registry().suite("robotwin2_clean"))
    assert cli(["serve", "--protocol", "vla-eval", "--checkpoint", str(dz_tabletop), "--benchmark", "libero"]) == 2
    assert cli(["serve", "--checkpoint", str(dz_tabletop), "--benchmark", "libero"]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("note:")]
    assert len(err) == 2 and "this checkpoint produces suite tabletop's actions" in err[0]
    assert "--benchmark applies to --protocol vla-eval only" in err[1]
