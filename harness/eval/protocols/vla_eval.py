"""vla-eval's model-server protocol: a `PredictModelServer` over our policy
(`wam-bench serve --protocol vla-eval`; in Python, `vla_eval.api.serve_background(
WamBenchModelServer.from_checkpoint(C, suite=S))`). Written against `vla-eval==0.8.0` (the
`interop` extra): `vla_eval.model_servers.predict`, `.serve`, `vla_eval.specs`, its benchmarks'
`make_obs` and specs.

Batching is vla-eval's own (`max_batch_size`, `max_wait_time`: `--max-batch`, `--max-wait-ms`):
its dispatch loop hands `predict_batch` the observations of every session waiting, and one
`Policy.infer_batch` call infers them (`harness.eval.serving.run_batch`: a request that fails
alone gets vla-eval's ERROR message, its batch-mates their actions). The actions executed per call
(the suite's `action_horizon`, else the policy's, at most the chunk: `rollout.executed`) go into
vla-eval's chunk buffer, one action per step.

Conventions (`CONVENTIONS`, by our suite's adapter): which vla-eval benchmarks speak our suite's
action space, their image keys -> our cameras, where their state is, their action spec (whose
sizes add up to our action vector) and the observation params the HELLO asks of them. A suite
of our own (tabletop) has no vla-eval benchmark: its convention is our camera names, "state" and
a raw action vector, for a StepBenchmark of the user's own. `--benchmark NAME` names the vla-eval
benchmark meant to drive the server and is refused in one line when the checkpoint cannot
produce its action space (vla-eval's orchestrator itself only warns on a spec mismatch).

DreamZero's history: vla-eval sends every step's observation, so the server keeps the frames at
the policy's `frame_stride` cadence between calls, the last replaced by the current one, exactly
as our evaluator's workers render them: served and in-process histories are the same.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass, field

from vla_eval.model_servers.predict import PredictModelServer
from vla_eval.specs import (GRIPPER_CLOSE_POS, IMAGE_RGB, LANGUAGE, POSITION_DELTA, ROTATION_AA,
                            STATE_EEF_POS_AA_GRIP, STATE_JOINT, DimSpec)

from harness.errors import UserError
from harness.eval.rollout import executed
from harness.eval.serving import Episode, as_image, as_state, needed_cameras, run_batch
from harness.suites import robotwin


@dataclass(frozen=True)
class Convention:
    """How one family of vla-eval benchmarks talks to a model server."""
    benchmarks: tuple[str, ...]            # vla-eval's names (vla_eval/benchmarks/<name>/)
    images: dict[str, str]                 # vla-eval image key -> our camera
    state_keys: tuple[str, ...]            # the first present holds the state
    state: DimSpec
    action: dict[str, DimSpec]             # in order: their sizes add up to our action vector
    camera_params: dict[str, str] = field(default_factory=dict)  # camera -> benchmark flag that sends it
    params: dict = field(default_factory=dict)                   # other observation params


CONVENTIONS = {
    # vla_eval/benchmarks/libero (LIBERO-Pro, -Plus and -Mem subclass it): images flipped 180 degrees
    # as our LIBERO suite's, 8-d "states" as ours, 7-d delta actions with LIBERO's gripper sign
    "libero": Convention(("libero", "libero_pro", "libero_plus", "libero_mem"),
                         {"agentview": "agentview", "wrist": "wrist"}, ("states",), STATE_EEF_POS_AA_GRIP,
                         {"position": POSITION_DELTA, "rotation": ROTATION_AA, "gripper": GRIPPER_CLOSE_POS},
                         {"wrist": "send_wrist_image"}, {"send_state": True}),
    # vla_eval/benchmarks/robotwin: RoboTwin's three cameras under RoboTwin's own names (mapped to the
    # suite's by harness/suites/robotwin.py CAMERAS), the 14-d joint vector ("joint_state"), 14-d joint
    # position targets
    "robotwin": Convention(("robotwin",), robotwin.wire_names("robotwin"),
                           ("joint_state",), STATE_JOINT, {"joints": DimSpec("joints", 14, "joint_positions")}),
}


# vla-eval's LIBEROBenchmark (vla_eval/benchmarks/libero/benchmark.py, 0.8.0): what it fixes; the rest
# a config sets. docs/harness_agreement.md compares its protocol with our evaluator's line by line.
LIBERO_BENCHMARK = "vla_eval.benchmarks.libero.benchmark:LIBEROBenchmark"
LIBERO_RESOLUTION = 256   # LIBERO_ENV_RESOLUTION: both cameras, every step
LIBERO_CONTROL_HZ = 20    # it passes no control_freq: OffScreenRenderEnv's default
LIBERO_SEED = 7           # its default `seed`: env.seed once per task's environment (our `env_seed` option)


def libero_config(spec, episodes_per_task: int | None = None) -> tuple[dict, list[str]]:
    """vla-eval's eval config that runs our LIBERO suite `spec`'s episodes under our protocol: its
    tasks (by the benchmark's instruction), init states 0..n-1 (episode e of a task starts from
    init state e on both sides), our step limit, settle steps as `num_steps_wait`, our `env_seed`
    as its `seed`, and the state's axis-angle as robosuite computes it (`quat_no_antipodal`). Also
    one line per setting of the suite that vla-eval's LIBERO benchmark cannot take; with none, our
    evaluator (one worker) and vla-eval run the same episodes against this checkpoint's server
    (`wam-bench bench agreement` checks it)."""
    from harness.suites.libero import BENCHMARKS, benchmark
    name = spec.options.get("benchmark", spec.name)
    if spec.adapter != "libero" or name not in BENCHMARKS:
        raise UserError(f"suite {spec.name}: vla-eval's LIBERO benchmark runs LIBERO's own suites "
                        f"({', '.join(BENCHMARKS)}), not this one")
    n = episodes_per_task or spec.episodes_per_task
    bench = benchmark(name)
    tasks, unaligned = [], []
    for i, t in enumerate(spec.tasks):
        theirs = bench.get_task(int(t.options.get("task_id", i))).language
        tasks.append(theirs)
        if t.instruction != theirs:
            unaligned.append(f"task {t.name}: our instruction {t.instruction!r}, vla-eval sends {theirs!r}")
    if not spec.options.get("binarize_gripper", False):
        unaligned.append("gripper: vla-eval binarizes the command (< 0 -> -1, else +1); ours passes it through "
                         "(set options.binarize_gripper: true)")
    if spec.image_size != LIBERO_RESOLUTION:
        unaligned.append(f"images: vla-eval renders {LIBERO_RESOLUTION} px, ours {spec.image_size} px; the policy "
                         "resizes either to its tile, but a resized render is not the other render "
                         f"(set image_size: {LIBERO_RESOLUTION})")
    if not spec.options.get("robosuite_camera_obs", False):
        unaligned.append("images: vla-eval sends robosuite's camera observation, taken one physics substep (2 ms) "
                         "before the step ends; ours renders the step's end (set options.robosuite_camera_obs: true)")
    seed = spec.options.get("env_seed")
    if seed is None:
        unaligned.append("env seed: vla-eval seeds each task's environment once and resets it without reseeding; "
                         f"ours seeds every episode (set options.env_seed: {LIBERO_SEED} and run one worker)")
    if not spec.options.get("rotate_180", True):
        unaligned.append("images: vla-eval rotates them 180 degrees; ours does not (rotate_180: false)")
    if spec.control_hz != LIBERO_CONTROL_HZ:
        unaligned.append(f"control: vla-eval runs LIBERO at {LIBERO_CONTROL_HZ} Hz; ours at {spec.control_hz}")
    if n > spec.init_states:
        unaligned.append(f"episodes: {n} per task; ours cycle the suite's {spec.init_states} init states, "
                         "vla-eval's episode e starts from init state e")
    entry = {"benchmark": LIBERO_BENCHMARK, "subname": spec.name, "episodes_per_task": n,
             "max_steps": spec.max_steps, "tasks": tasks,
             "params": {"suite": name, "seed": LIBERO_SEED if seed is None else int(seed),
                        "num_steps_wait": spec.settle_steps, "quat_no_antipodal": True}}
    return {"benchmarks": [entry]}, unaligned


def convention(spec) -> Convention:
    known = CONVENTIONS.get(spec.adapter)
    if known is not None:
        return known
    own = f"wam-bench:{spec.name}"
    return Convention((), {c: c for c in spec.cameras}, ("state",), DimSpec("state", spec.state_dim, own),
                      {"actions": DimSpec("actions", spec.action_dim, own)})


def _describe(action: dict[str, DimSpec]) -> str:
    return " + ".join(f"{k} {d.format} {d.dims}" for k, d in action.items())


class _Failed(dict):
    """predict_batch's answer for the request that failed: raised in its own session only."""

    def __init__(self, error: BaseException):
        super().__init__()
        self.error = error


class WamBenchModelServer(PredictModelServer):
    """A wam-bench policy as a vla-eval model server: one `Episode` per session (reset at each
    EPISODE_START), `predict_batch` feeding `Policy.infer_batch`."""

    def __init__(self, policy, spec, *, benchmark: str | None = None, noise_seed: int | None = 0,
                 max_batch_size: int = 8, max_wait_time: float = 0.005):
        self.policy, self.spec, self.noise_seed = policy, spec, noise_seed
        self.conv = conv = convention(spec)
        self.cameras = needed_cameras(policy)
        what = (f"this checkpoint produces suite {spec.name}'s actions ({_describe(conv.action)}), the action space "
                f"of vla-eval's {', '.join(conv.benchmarks) or 'no benchmark (only a StepBenchmark of your own)'}")
        if benchmark is not None:
            name = benchmark.split(":")[0].removeprefix("vla_eval.benchmarks.").split(".")[0]
            if name not in conv.benchmarks:
                raise UserError(f"--benchmark {benchmark}: {what}; serve a checkpoint trained for {name}'s action space")
        size = policy.meta.get("action_size", spec.action_dim)
        if sum(d.dims for d in conv.action.values()) != size:
            raise UserError(f"suite {spec.name}: {what}, but the checkpoint's actions have {size} values; "
                            "serve it with the suite it was trained on (--suite)")
        if conv.state.dims and conv.state.dims != spec.state_dim:
            raise UserError(f"suite {spec.name}: vla-eval's {conv.benchmarks[0]} sends a {conv.state.dims}-d state "
                            f"({conv.state.format}), the suite's is {spec.state_dim}-d")
        unmapped = [c for c in self.cameras if c not in conv.images.values()]
        if unmapped:
            raise UserError(f"suite {spec.name}: the policy reads camera(s) {unmapped}, which vla-eval's "
                            f"{'/'.join(conv.benchmarks) or 'convention'} images {sorted(conv.images)} do not map to")
        super().__init__(chunk_size=executed(policy, spec), max_batch_size=max_batch_size,
                         max_wait_time=max_wait_time)  # after the checks: a refused suite gets no horizon note
        self.episodes: dict[str, Episode] = {}
        self.cadence: dict[str, list] = {}   # per session: frames at the policy's cadence since its last call
        self.batch_sizes: list[int] = []     # the size of every predict_batch call (for benches and tests)

    @classmethod
    def from_checkpoint(cls, checkpoint: str, *, suite: str = "tabletop", level: str = "O1-kvcache",
                        device: str | None = None, include_path=(), **kw) -> WamBenchModelServer:
        from harness.config import Registry
        from harness.policy.policy import build_policy
        reg = Registry(list(include_path))
        spec = reg.suite(suite)
        return cls(build_policy(checkpoint, level, registry=reg, device=device, suite=spec), spec, **kw)

    def get_action_spec(self) -> dict[str, DimSpec]:
        return dict(self.conv.action)

    def get_observation_spec(self) -> dict[str, DimSpec]:
        keys = [k for k, c in self.conv.images.items() if c in self.cameras]
        return {**{k: IMAGE_RGB for k in keys}, "state": self.conv.state, "language": LANGUAGE}

    def get_observation_params(self) -> dict:
        cams = {flag: True for cam, flag in self.conv.camera_params.items() if cam in self.cameras}
        return {**self.conv.params, **cams}

    def _episode(self, ctx) -> Episode:
        if ctx.session_id not in self.episodes:
            self.episodes[ctx.session_id] = Episode(self.policy, self.noise_seed)
        return self.episodes[ctx.session_id]

    def _images(self, obs: dict) -> dict:
        got = obs.get("images") or {}
        images = {cam: as_image(got[k], f"images/{k}")
                  for k, cam in self.conv.images.items() if k in got}
        missing = [c for c in self.cameras if c not in images]
        if missing:
            want = [k for k, c in self.conv.images.items() if c in missing]
            raise ValueError(f"observation lacks images {want} (got {sorted(got)}); this server speaks "
                             f"{'/'.join(self.conv.benchmarks) or 'wam-bench ' + self.spec.name}'s observations")
        return images

    async def on_episode_start(self, config, ctx) -> None:
        self.episodes[ctx.session_id] = Episode(self.policy, self.noise_seed)
        self.cadence[ctx.session_id] = []
        await super().on_episode_start(config, ctx)

    async def on_episode_end(self, result, ctx) -> None:
        self.episodes.pop(ctx.session_id, None)
        self.cadence.pop(ctx.session_id, None)
        await super().on_episode_end(result, ctx)

    async def on_observation(self, obs, ctx) -> None:
        if self.policy.needs_history and ctx.step > 0 and ctx.step % self.policy.frame_stride == 0 and obs.get("images"):
            self.cadence.setdefault(ctx.session_id, []).append(self._images(obs))
        await super().on_observation(obs, ctx)

    def _observation(self, obs: dict, ctx, ep: Episode):
        images = self._images(obs)
        key = next((k for k in self.conv.state_keys if obs.get(k) is not None), None)
        if key is None:
            raise ValueError(f"observation lacks the state ({' or '.join(self.conv.state_keys)}; got {sorted(obs)})")
        state = as_state(obs[key], key, self.spec.state_dim)
        text = obs.get("task_description")
        if not isinstance(text, str) or not text:
            raise ValueError(f"observation lacks 'task_description' (got {sorted(obs)})")
        history = self.cadence.get(ctx.session_id, [])
        self.cadence[ctx.session_id] = []
        if history:
            history[-1] = images
        return ep.observation(images, state, text, history if self.policy.needs_history else [])

    def predict_batch(self, obs_batch: list, ctx_batch: list) -> list:
        out, items, where = [], [], []
        for obs, ctx in zip(obs_batch, ctx_batch):
            ep = self._episode(ctx)
            try:
                items.append((self._observation(obs, ctx, ep), ep.seed(), ep.state))
                where.append((len(out), ep))
                out.append(None)
            except Exception as e:
                out.append(_Failed(e))
        if items:
            self.batch_sizes.append(len(items))
            for (i, ep), res in zip(where, run_batch(self.policy, items)):
                if isinstance(res, BaseException):
                    out[i] = _Failed(res)
                else:
                    ep.done(res[1])
                    out[i] = {"actions": res[0]}
        return out

    def _normalize_result(self, result, ctx):
        """vla-eval's hook between a predict result and its session's reply (pinned 0.8.0): a
        request that failed raises here, so only its session gets the ERROR message."""
        if isinstance(result, _Failed):
            raise result.error
        return super()._normalize_result(result, ctx)


def run(server: WamBenchModelServer, host: str, port: int, ready=None) -> None:
    """Serve until SIGINT or SIGTERM; `ready(port)` once listening."""
    import anyio
    from vla_eval.model_servers.serve import serve_async

    async def main():
        async with anyio.create_task_group() as tg:
            bound = await tg.start(serve_async, server, host, port)
            if ready is not None:
                ready(bound)
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    break
    anyio.run(main)
