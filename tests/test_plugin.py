"""The plugin loads through the `nanochat` entry point, every hook spec has a test of its own, and a
small host that calls the hooks as patched nanochat will checks the contract."""

from __future__ import annotations

import argparse
import inspect
import json
import math
from pathlib import Path

import pluggy
import plugin_support
import pytest
import torch

from megacontext_plugin import hookspecs
from megacontext_plugin.hookspecs import ForwardOverride
from megacontext_plugin.nets.tiny_gpt import TinyGPT, TinyGPTConfig
from megacontext_plugin.plugin import MegaContextPlugin, plugin


def _manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def test_entry_point_loads_the_plugin_object() -> None:
    pm = _manager()
    assert pm.load_setuptools_entrypoints(hookspecs.PROJECT, name="megacontext") == 1
    loaded = pm.get_plugin("megacontext")
    assert loaded is plugin and isinstance(loaded, MegaContextPlugin)
    pm.check_pending()  # no misspelled hook implementation


def test_register_arguments_hook_adds_the_mc_flags() -> None:
    pm = _manager()
    pm.register(plugin, name="megacontext")
    try:
        parser = argparse.ArgumentParser()
        pm.hook.register_arguments(parser=parser)
        ns = parser.parse_args(["--mc", "--mc-tree", "disk", "--block_size", "8"])
        assert (ns.mc, ns.mc_tree, ns.block_size) == (True, "disk", 8)
    finally:
        pm.unregister(plugin)


def test_every_hook_spec_has_a_test_of_its_own() -> None:
    specs = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
             if getattr(fn, hookspecs.PROJECT + "_spec", None) is not None]
    assert specs, "no hook specs found"
    tests = "\n".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    missing = [name for name in specs if f"def test_{name}_hook" not in tests]
    assert not missing, f"hook specs without a test named test_<hook>_hook...: {missing}"


# ---- the hook contract, exercised by a small host that calls the hooks as patched nanochat does ----

T = 128
SMALL = ["--block_size", "8", "--allocator_recent_tokens", "16", "--mc_horizon", "8", "--gistnet_heads", "2",
         "--gistnet_layers", "1", "--lensnet_dim", "32", "--lensnet_heads", "2", "--lensnet_layers", "1"]


class SmallHost:
    """The calls patched nanochat makes, around a TinyGPT (no upstream needed)."""

    def __init__(self, argv: list[str], num_iterations: int = 10, stage: str = "base",
                 source: tuple[Path, int] | None = None, web: bool = False) -> None:
        self.pm = _manager()
        self.plugin = MegaContextPlugin()
        self.pm.register(self.plugin, name="megacontext")
        parser = argparse.ArgumentParser()
        parser.add_argument("--max-seq-len", type=int, default=T)  # the host's own flags
        parser.add_argument("--device-batch-size", type=int, default=2)
        if web:  # chat_web's
            parser.add_argument("--host", type=str, default="0.0.0.0")
            parser.add_argument("--port", type=int, default=8000)
            parser.add_argument("--num-gpus", type=int, default=1)
        self.pm.hook.register_arguments(parser=parser)
        self.args = parser.parse_args(argv)
        self.pm.hook.adjust_arguments(args=self.args, stage=stage)
        if source is not None:  # load_model() read a checkpoint before the stage set up
            self.pm.hook.load_state(checkpoint_dir=str(source[0]), step=source[1])
        torch.manual_seed(0)
        self.model = TinyGPT(TinyGPTConfig(vocab_size=64, sequence_len=T, n_layer=1, n_head=4, n_embd=64))
        with torch.no_grad():
            for block in self.model.blocks:
                torch.nn.init.normal_(block.proj.weight, std=0.3)
        self.attached = any(self.pm.hook.setup_model(model=self.model, args=self.args,
                                                     num_iterations=num_iterations, stage=stage))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        ov = self.pm.hook.before_forward(model=self.model, idx=idx, targets=targets, kv_cache=None)
        if ov is None:
            return self.model(idx, targets)
        cos_sin = self.pm.hook.positional_overrides(model=self.model, override=ov)
        nll = self.model(inputs_embeds=ov.inputs_embeds, targets=ov.targets, cos_sin=cos_sin, loss_reduction="none")
        valid = (ov.targets.reshape(-1) >= 0).float()
        loss = (nll * valid).sum() / valid.sum()
        for extras in self.pm.hook.extra_loss(model=self.model, override=ov, per_entry_loss=nll):
            loss = loss + sum(extras.values())
        return loss

    def step(self, step: int, idx: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        loss = self.loss(idx, targets)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.pm.hook.after_optimizer_step(step=step)
        log = {"train/loss": float(loss.detach())}
        for extra in self.pm.hook.on_step_telemetry(step=step, metrics=dict(log)):
            log.update(extra)
        return log

    def close(self) -> None:
        self.plugin.reset()
        self.pm.unregister(self.plugin)


def _data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    xy = torch.randint(0, 64, (2, T + 1), generator=torch.Generator().manual_seed(seed))
    return xy[:, :-1], xy[:, 1:]


def test_setup_model_hook_builds_the_controller_only_with_mc(capsys: pytest.CaptureFixture[str]) -> None:
    off = SmallHost([])
    assert off.plugin.controller is None and not off.attached  # the host leaves its forward alone
    off.close()
    on = SmallHost(["--mc", *SMALL])
    assert on.plugin.controller is not None and on.plugin.controller.sequence_len == T
    assert on.attached  # the host hands this model's training forward to the hooks
    on.close()
    with pytest.raises(SystemExit) as exc:  # checked against the model, before any work: one line, exit 2
        SmallHost(["--mc", *SMALL, "--mc_wc_budget", str(2 * T)])
    assert exc.value.code == 2
    assert "--mc_wc_budget" in capsys.readouterr().err


def test_before_forward_hook_overrides_training_forwards_only() -> None:
    host = SmallHost(["--mc", *SMALL])
    x, y = _data(1)
    ov = host.pm.hook.before_forward(model=host.model, idx=x, targets=y, kv_cache=None)
    assert isinstance(ov, ForwardOverride)
    R, W, D = ov.inputs_embeds.shape
    assert 2 * host.plugin.controller.cfg.num_variants == R and D == 64
    assert ov.targets.shape == ov.value_ids.shape == (R, W)
    batch = ov.state
    raw = batch.index.levels_RW == 0
    starts = torch.from_numpy(batch.layouts.starts_RW)
    rows = torch.arange(R)[:, None] // batch.layouts.variants
    assert torch.equal(ov.value_ids[raw], x[rows.expand(R, W), starts][raw])  # raw entries: their own token
    assert bool((ov.value_ids[~raw] == -1).all())  # gists and padding: no value embedding
    assert host.pm.hook.before_forward(model=host.model, idx=x, targets=None, kv_cache=None) is None
    assert host.pm.hook.before_forward(model=host.model, idx=x, targets=y, kv_cache=object()) is None
    host.model.eval()
    assert host.pm.hook.before_forward(model=host.model, idx=x, targets=y, kv_cache=None) is None
    host.close()


def test_positional_overrides_hook_gives_per_row_tables_when_positions_change() -> None:
    ordinal = SmallHost(["--mc", *SMALL])
    ov = ordinal.pm.hook.before_forward(model=ordinal.model, idx=_data(2)[0], targets=_data(2)[1], kv_cache=None)
    assert ordinal.pm.hook.positional_overrides(model=ordinal.model, override=ov) is None  # model's own table
    ordinal.close()
    scaled = SmallHost(["--mc", *SMALL, "--mc_position_scheme", "span_center_scaled"])
    ov = scaled.pm.hook.before_forward(model=scaled.model, idx=_data(2)[0], targets=_data(2)[1], kv_cache=None)
    cos, sin = scaled.pm.hook.positional_overrides(model=scaled.model, override=ov)
    R, W, _ = ov.inputs_embeds.shape
    assert cos.shape == sin.shape == (R, W, 1, 8)
    scaled.close()


def test_extra_loss_hook_adds_the_gist_and_lens_losses_with_their_weights() -> None:
    host = SmallHost(["--mc", *SMALL, "--mc_lens_loss_weight", "0.5"])
    x, y = _data(3)
    ov = host.pm.hook.before_forward(model=host.model, idx=x, targets=y, kv_cache=None)
    nll = host.model(inputs_embeds=ov.inputs_embeds, targets=ov.targets, loss_reduction="none")
    (extras,) = host.pm.hook.extra_loss(model=host.model, override=ov, per_entry_loss=nll)
    assert set(extras) == {"mc_gist", "mc_lens"}
    losses = host.plugin.controller.compute_losses(ov.state, nll.view_as(ov.targets))
    assert torch.allclose(extras["mc_lens"], 0.5 * losses.terms["lens_loss"])
    sum(extras.values()).backward()
    assert any(p.grad is not None for p in host.plugin.controller.lensnet.parameters())
    host.close()


def test_after_optimizer_step_hook_steps_the_aux_nets() -> None:
    host = SmallHost(["--mc", *SMALL, "--mc_aux_lr", "0.01"])
    before = [p.detach().clone() for p in host.plugin.controller.gistnet.parameters()]
    host.step(0, *_data(4))
    after = list(host.plugin.controller.gistnet.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert plugin_support.step(host.plugin) == 1 and host.plugin.controller.steps_done == 1
    host.close()


def test_on_step_telemetry_hook_merges_mc_metrics_into_the_log() -> None:
    host = SmallHost(["--mc", *SMALL])
    log = host.step(0, *_data(5))
    for key in ("mc/token_loss", "mc/lens_loss", "mc/lod0_loss", "mc/time_controller_ms", "mc/variants_total",
                "mc/adv_delta_mean", "mc/adv_delta_p95", "mc/preference_corr_mean", "mc/delta_nll_h"):
        assert key in log, key
    cfg = host.plugin.controller.cfg
    assert log["mc/variant_rows"] == 2 * cfg.num_variants
    assert log["mc/variants_total"] == 2 * cfg.variant_counts[2]  # the guide's: random variants x batch
    host.close()
    off = SmallHost([])
    assert set(off.step(0, *_data(5))) == {"train/loss"}
    off.close()


def test_without_mc_the_host_computes_exactly_the_plain_loss() -> None:
    host = SmallHost([])
    x, y = _data(6)
    assert torch.equal(host.loss(x, y), host.model(x, y))
    host.close()


def test_a_short_mc_run_trains_the_base_model() -> None:
    host = SmallHost(["--mc", *SMALL])
    losses = [host.step(s, *_data(7))["mc/token_loss"] for s in range(8)]
    assert losses[-1] < losses[0]
    assert all(math.isfinite(v) for v in losses)
    host.close()


def test_save_state_hook_writes_beside_the_checkpoint_and_load_state_hook_resumes(tmp_path: Path) -> None:
    straight = SmallHost(["--mc", *SMALL, "--mc_aux_lr", "0.01"])
    for step in range(2):
        straight.step(step, *_data(10 + step))
    straight.pm.hook.save_state(checkpoint_dir=str(tmp_path), step=2, rank=0)
    straight.pm.hook.save_state(checkpoint_dir=str(tmp_path / "other"), step=2, rank=1)  # replicas do not write
    assert (tmp_path / "megacontext_000002.pt").is_file() and not (tmp_path / "other").exists()
    model_state = {k: v.clone() for k, v in straight.model.state_dict().items()}
    want = straight.step(2, *_data(12))

    resumed = SmallHost(["--mc", *SMALL, "--mc_aux_lr", "0.01"])
    resumed.model.load_state_dict(model_state)
    resumed.opt = torch.optim.SGD(resumed.model.parameters(), lr=0.1)
    resumed.pm.hook.load_state(checkpoint_dir=str(tmp_path), step=2)
    assert plugin_support.step(resumed.plugin) == 2
    got = resumed.step(2, *_data(12))
    def mc(log: dict[str, float]) -> dict[str, float]:
        timed = ("mc/wall_time_s", "mc/telemetry_frac")  # wall-clock readings: they differ between runs
        return {k: v for k, v in log.items()
                if k.startswith("mc/") and "_ms" not in k and k not in timed and not math.isnan(v)}

    assert mc(got) == mc(want)
    straight.close()
    resumed.close()


def test_load_state_hook_without_saved_state_is_a_clear_error(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    host = SmallHost(["--mc", *SMALL])
    with pytest.raises(SystemExit) as exc:
        host.pm.hook.load_state(checkpoint_dir=str(tmp_path), step=5)
    assert exc.value.code == 2
    assert "megacontext_000005.pt is missing" in capsys.readouterr().err
    host.close()
    off = SmallHost([])
    off.pm.hook.load_state(checkpoint_dir=str(tmp_path), step=5)  # without --mc: nothing to load
    off.close()


def _host_parser(*extra: tuple[str, int]) -> tuple[pluggy.PluginManager, MegaContextPlugin, argparse.ArgumentParser]:
    """The plugin registered on a host whose parser has nanochat's batch flags (``--max-seq-len`` T,
    ``--device-batch-size`` 32, and ``extra`` (flag, default) pairs) and the plugin's own."""
    pm = _manager()
    mc = MegaContextPlugin()
    pm.register(mc, name="megacontext")
    parser = argparse.ArgumentParser()
    for flag, default in (("--max-seq-len", T), ("--device-batch-size", 32), *extra):
        parser.add_argument(flag, type=int, default=default)
    pm.hook.register_arguments(parser=parser)
    return pm, mc, parser


def test_adjust_arguments_hook_rejects_bad_combinations_before_any_work(capsys: pytest.CaptureFixture[str]) -> None:
    pm, mc, parser = _host_parser()
    bad = parser.parse_args(["--mc", *SMALL, "--mc_train_wc_length", "0.1"])  # 12 entries <= the 16-token tail
    with pytest.raises(SystemExit) as exc:
        pm.hook.adjust_arguments(args=bad, stage="base")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --mc_train_wc_length") and err.count("\n") == 1

    args = parser.parse_args(["--mc", *SMALL])  # auto-batch: a smaller divisor of the device batch
    pm.hook.adjust_arguments(args=args, stage="base")
    assert args.device_batch_size < 32 and 32 % args.device_batch_size == 0
    assert "auto-batch" in capsys.readouterr().out
    for argv in (["--mc", *SMALL, "--mc_auto_batch", "0"], []):  # off, or no --mc: the user's batch stays
        kept = parser.parse_args(argv)
        pm.hook.adjust_arguments(args=kept, stage="base")
        assert kept.device_batch_size == 32
    mc.reset()


def test_adjust_arguments_hook_keeps_mid_trains_steps_when_auto_batch_lowers_its_batch(
        capsys: pytest.CaptureFixture[str]) -> None:
    pm, mc, parser = _host_parser(("--num-iterations", 20))
    args = parser.parse_args(["--mc", *SMALL])
    pm.hook.adjust_arguments(args=args, stage="mid")
    k = 32 // args.device_batch_size
    assert k > 1 and args.num_iterations == 19 * k + 1  # the loader's micro-batches for upstream's 19 steps
    assert f"--num-iterations 20 -> {19 * k + 1}" in capsys.readouterr().out
    model = TinyGPT(TinyGPTConfig(vocab_size=64, sequence_len=T, n_layer=1, n_head=4, n_embd=64))
    pm.hook.setup_model(model=model, args=args, num_iterations=args.num_iterations, stage="mid")
    assert mc.run.training is not None and mc.run.training.controller.total_steps == 20  # optimizer steps
    mc.reset()


def test_plan_iterations_hook_keeps_the_base_model_positions_of_vanilla() -> None:
    host = SmallHost(["--mc", *SMALL])
    planned = host.pm.hook.plan_iterations(args=host.args, num_iterations=1000)
    assert planned is not None and 0 < planned < 1000  # variants multiply the positions per sequence
    host.close()
    for argv in (["--mc", *SMALL, "--mc_auto_batch", "0"], []):
        other = SmallHost(argv)
        assert other.pm.hook.plan_iterations(args=other.args, num_iterations=1000) is None
        other.close()


def test_load_state_hook_before_setup_starts_the_next_stage_from_the_saved_nets(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = SmallHost(["--mc", *SMALL])
    for step in range(2):
        base.step(step, *_data(30 + step))
    base.pm.hook.save_state(checkpoint_dir=str(tmp_path), step=2, rank=0)
    gist_state = base.plugin.controller.gistnet.state_dict()
    base.close()

    mid = SmallHost(["--mc", *SMALL], num_iterations=-1, stage="mid", source=(tmp_path, 2))
    assert "loaded from" in capsys.readouterr().out
    for key, value in mid.plugin.controller.gistnet.state_dict().items():
        assert torch.equal(value, gist_state[key])
    budget_step = plugin_support.budget_step(mid.plugin)
    assert not plugin_support.anneal(mid.plugin) and budget_step == mid.plugin.controller.total_steps
    assert mid.plugin.controller.budget_at(budget_step) == mid.plugin.controller.budget_at(10**9)
    mid.close()

    fresh = SmallHost(["--mc", *SMALL], stage="mid", source=(tmp_path / "vanilla", 7))  # trained without --mc
    assert "start fresh" in capsys.readouterr().out and fresh.plugin.controller is not None
    fresh.close()

    with pytest.raises(SystemExit) as exc:  # aux nets of another shape: one line, exit 2
        SmallHost(["--mc", *SMALL[:-2], "--lensnet_layers", "2"], stage="mid", source=(tmp_path, 2))
    assert exc.value.code == 2
    assert "--lensnet_layers 1 but this run asks for --lensnet_layers 2" in capsys.readouterr().err


def test_a_later_stage_takes_the_checkpoints_settings_with_mc_alone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = SmallHost(["--mc", *SMALL])
    base.step(0, *_data(40))
    base.pm.hook.save_state(checkpoint_dir=str(tmp_path), step=1, rank=0)
    trained = base.plugin.controller.cfg
    lens_state = base.plugin.controller.lensnet.state_dict()
    base.close()
    capsys.readouterr()

    chat = SmallHost(["--mc", "--mc_refocus_every", "4"], stage="chat", source=(tmp_path, 1))  # inference: free
    cfg = chat.plugin.nets.cfg  # the chat stage holds the aux nets alone, no training controller
    for knob in ("block_size", "mc_horizon", "allocator_recent_tokens", "gistnet_layers", "lensnet_dim"):
        assert getattr(cfg, knob) == getattr(trained, knob), knob
    assert cfg.mc_refocus_every == 4
    out = capsys.readouterr().out
    assert "--block_size 8" in out and "loaded from" in out
    for key, value in chat.plugin.nets.lensnet.state_dict().items():
        assert torch.equal(value, lens_state[key])
    chat.close()

    with pytest.raises(SystemExit) as exc:  # an explicit contradiction: one line naming both values
        SmallHost(["--mc", "--block_size", "16"], stage="chat", source=(tmp_path, 1))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--block_size 8" in err[0] and "--block_size 16" in err[0]


class _ChatTokenizer:
    """The tokenizer surface the Engine's stream needs; specials lie outside the tiny vocabulary."""

    def encode_special(self, name: str) -> int:
        return 1000 + len(name)

    def get_bos_token_id(self) -> int:
        return 999

    def encode(self, text: str) -> list[int]:
        return [1 for _ in text]

    def decode(self, ids: list[int]) -> str:
        return "x" * len(ids)


class _Engine:
    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.tokenizer = model, _ChatTokenizer()


def test_generate_hook_decodes_prompts_past_the_window_over_megacontext_and_leaves_short_ones_to_upstream(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    off = SmallHost([], stage="chat")  # --mc absent: the Engine decodes everything itself
    engine = _Engine(off.model.eval())
    assert off.pm.hook.generate(engine=engine, tokens=[1] * (4 * T), num_samples=1, max_tokens=4, temperature=0.0,
                                top_k=None, seed=0) is None
    off.close()

    on = SmallHost(["--mc", *SMALL, "--mc_telemetry_dir", str(tmp_path / "telemetry")], stage="chat")
    hooked = _HookedEngine(on.model.eval(), on.pm.hook)
    short = list(hooked.generate([1] * (T - 8), max_tokens=8, temperature=0.0))
    assert short == [([7], [1])] * 8 and hooked.upstream_calls == 1  # prompt + answer fit: upstream's decode
    engine = _Engine(on.model.eval())
    long_prompt = torch.randint(0, 64, (10 * T,), generator=torch.Generator().manual_seed(0)).tolist()
    stream = on.pm.hook.generate(engine=engine, tokens=long_prompt, num_samples=1, max_tokens=40, temperature=0.0,
                                 top_k=None, seed=0)
    columns = list(stream)
    assert len(columns) == 40 and all(masks == [1] for _, masks in columns)
    session = on.plugin.inference.last_session
    assert session.num_tokens == 10 * T + 40 and session.stats.lens_calls >= 2  # the prompt, then every 32 tokens
    assert len(session.wc) <= T and session.level_map()["num_tokens"] == 10 * T + 40
    on.close()
    (events,) = (tmp_path / "telemetry").glob("chat-*/telemetry.jsonl")  # every refocus, as inference_update
    names = [json.loads(line)["name"] for line in events.read_text().splitlines()]
    assert names.count("inference_update") == session.stats.lens_calls
    assert names.count("focus_allocator") == session.stats.lens_calls  # and its shape events (the default: each)
    assert session.closed  # reset() closes the sessions

    with pytest.raises(SystemExit) as exc:  # chat setup checks the inference knobs: one line, exit 2
        SmallHost(["--mc", *SMALL, "--mc_wc_headroom", "120"], stage="chat")
    assert exc.value.code == 2 and "--mc_wc_headroom" in capsys.readouterr().err
    named = SmallHost(["--mc", *SMALL, "--mc_tree", "disk", "--mc_tree_dir", str(tmp_path), "--mc_session", "s1"],
                      stage="chat")
    assert (tmp_path / "s1").is_dir()  # a named session opens at setup, before the first prompt
    named.close()


def test_on_step_telemetry_hook_never_reports_an_older_steps_losses() -> None:
    host = SmallHost(["--mc", *SMALL])
    assert "mc/token_loss" in host.step(0, *_data(40))
    x, y = _data(41)
    short = host.step(1, x[:, :12].contiguous(), y[:, :12].contiguous())  # too short to compress: plain forward
    assert "train/loss" in short and "mc/token_loss" not in short
    assert "mc/token_loss" in host.step(2, *_data(42))
    host.close()


class _HookedEngine(_Engine):
    """Engine.generate as the patch makes it: the plugin's hook first, else upstream's decode (token 7)."""

    def __init__(self, model: torch.nn.Module, hooks: pluggy.HookRelay) -> None:
        super().__init__(model)
        self.hooks, self.upstream_calls = hooks, 0

    def generate(self, tokens: list[int], num_samples: int = 1, max_tokens: int | None = None,
                 temperature: float = 1.0, top_k: int | None = None, seed: int = 42):
        stream = self.hooks.generate(engine=self, tokens=tokens, num_samples=num_samples, max_tokens=max_tokens,
                                     temperature=temperature, top_k=top_k, seed=seed)
        if stream is not None:
            yield from stream
            return
        self.upstream_calls += 1
        yield from self.upstream_decode(num_samples, max_tokens)

    def upstream_decode(self, num_samples: int, max_tokens: int | None):
        for _ in range(max_tokens or 1):
            yield [7] * num_samples, [1] * num_samples


def test_chat_cli_answers_print_their_latency_and_past_the_window_the_level_map(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host = SmallHost(["--mc", *SMALL, "--mc_telemetry", "none"], stage="chat")
    chat = plugin_support.chat(host.plugin)
    assert chat is not None and chat.answer_reports is False  # pytest is not chat_cli: chat_web, chat_eval stay quiet
    chat.answer_reports = True
    engine = _HookedEngine(host.model.eval(), host.pm.hook)
    capsys.readouterr()

    short = list(engine.generate([1] * (T - 8), max_tokens=5, temperature=0.0))
    assert [c for c, _ in short] == [[7]] * 5 and engine.upstream_calls == 1  # upstream's decode, timed
    out = capsys.readouterr().out
    assert f"megacontext: {T - 8}-token prompt, upstream decode: first token " in out and "5 tokens" in out
    assert "level map" not in out

    long_prompt = torch.randint(0, 64, (6 * T,), generator=torch.Generator().manual_seed(0)).tolist()
    columns = list(engine.generate(long_prompt, max_tokens=12, temperature=0.0))
    assert len(columns) == 12 and engine.upstream_calls == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"megacontext: {6 * T}-token prompt, over MegaContext: first token ")
    assert "12 tokens at " in lines[0] and lines[0].endswith(" tokens/s")
    assert lines[1].startswith(f"megacontext: level map: {6 * T + 12} tokens in ") and f"/{T} entries" in lines[1]
    assert lines[2].strip().startswith("[") and lines[2].strip().endswith("]")
    host.close()


class _BosEngine(_HookedEngine):
    """Upstream's decode samples ``<|bos|>`` after one token (a model that ends its answer so)."""

    def upstream_decode(self, num_samples: int, max_tokens: int | None):
        for token in (7, self.tokenizer.get_bos_token_id(), 7):
            yield [token], [1]


def test_chat_cli_answers_never_show_the_token_that_ends_them(monkeypatch: pytest.MonkeyPatch) -> None:
    host = SmallHost(["--mc", *SMALL, "--mc_telemetry", "none"], stage="chat")
    chat = plugin_support.chat(host.plugin)
    assert chat is not None
    chat.answer_reports = True  # chat_cli prints every token it gets, specials included
    engine = _BosEngine(host.model.eval(), host.pm.hook)
    assert [c for c, _ in engine.generate([1] * (T - 8), max_tokens=3)] == [[7]]  # upstream's decode, it fits
    tok = engine.tokenizer
    for terminal in (tok.get_bos_token_id(), tok.encode_special("<|assistant_end|>")):  # MegaContext's stream
        monkeypatch.setattr(chat.runtime, "stream",
                            lambda *a, t=terminal, **k: (iter([([5], [1]), ([6], [1]), ([t], [1]), ([8], [1])]), True))
        assert [c for c, _ in engine.generate([1] * (6 * T), max_tokens=8)] == [[5], [6]]
    host.close()


class _RoleEngine(_HookedEngine):
    """Upstream's decode samples ``<|user_end|>`` after one token (a model that leaves its turn)."""

    def upstream_decode(self, num_samples: int, max_tokens: int | None):
        for token in (7, self.tokenizer.encode_special("<|user_end|>"), 7, 7):
            yield [token] * num_samples, [1] * num_samples


@pytest.mark.parametrize("reports", [False, True])
def test_with_mc_upstreams_decode_ends_an_answer_at_a_role_token(reports: bool) -> None:
    host = SmallHost(["--mc", *SMALL, "--mc_telemetry", "none"], stage="chat")
    chat = plugin_support.chat(host.plugin)
    assert chat is not None
    chat.answer_reports = reports  # chat_cli (reports) or chat_web and chat_eval
    engine = _RoleEngine(host.model.eval(), host.pm.hook)
    end = engine.tokenizer.encode_special("<|assistant_end|>")
    columns = list(engine.generate([1] * (T - 8), num_samples=1, max_tokens=4))
    assert columns == ([([7], [1])] if reports else [([7], [1]), ([end], [0])])  # chat_cli prints no terminal
    assert engine.upstream_calls == 1
    host.close()


def test_chat_limits_hook_gives_chat_web_the_mc_limits_and_leaves_upstreams_without_mc(
        capsys: pytest.CaptureFixture[str]) -> None:
    off = SmallHost([], stage="chat", web=True)
    assert off.pm.hook.chat_limits(message_chars=8000, conversation_chars=32000) is None
    off.close()
    fixed = SmallHost(["--mc", *SMALL, "--mc_telemetry", "none", "--mc_web_max_chars", "123456"], stage="chat",
                      web=True)
    capsys.readouterr()
    assert fixed.pm.hook.chat_limits(message_chars=8000, conversation_chars=32000) == (123456, 123456)
    assert ("megacontext: chat_web accepts conversations, and messages, of up to 123,456 characters "
            "(--mc_web_max_chars)") in capsys.readouterr().out
    fixed.close()
    auto = SmallHost(["--mc", *SMALL, "--mc_telemetry", "none"], stage="chat", web=True)
    message, conversation = auto.pm.hook.chat_limits(message_chars=8000, conversation_chars=32000)
    assert message == conversation >= 32000  # never below upstream's
    auto.close()


def test_chat_web_refuses_a_named_session_every_client_would_share_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    session = ["--mc", *SMALL, "--mc_telemetry", "none", "--mc_tree", "disk", "--mc_tree_dir", str(tmp_path),
               "--mc_session", "notes"]
    with pytest.raises(SystemExit) as exc:  # upstream's default --host 0.0.0.0, before any model is loaded
        SmallHost(session, stage="chat", web=True)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: --mc_session notes: chat_web on --host 0.0.0.0 would give every client")
    assert not (tmp_path / "notes").exists()
    local = SmallHost([*session, "--host", "127.0.0.1"], stage="chat", web=True)
    assert "megacontext: chat_web: every conversation of every client goes to session 'notes'" in (
        capsys.readouterr().out)
    local.close()
    cli = SmallHost(session, stage="chat")  # chat_cli: one person, one terminal, a persistent memory
    cli.close()
