"""Three training steps of a tiny upstream nanochat GPT on CPU, run in a subprocess by
tests/test_nanochat_hooks.py with PYTHONPATH at a nanochat tree. Arguments: ``off`` or ``mc``,
then optionally ``compile`` (torch.compile as the training scripts do; prints dynamo's graph-break
and graph counts)."""

import argparse
import sys

import torch
from nanochat.gpt import GPT, GPTConfig

try:
    from nanochat.common import get_plugin_hooks
except ImportError:  # a pristine tree has no plugin host

    def get_plugin_hooks():
        return None


MC_FLAGS = ["--mc", "--block_size", "8", "--allocator_recent_tokens", "16", "--mc_horizon", "8",
            "--gistnet_heads", "2", "--lensnet_dim", "32", "--lensnet_heads", "2"]


def main(mode: str, compile_: bool) -> None:
    torch.manual_seed(0)
    cfg = GPTConfig(sequence_len=128, vocab_size=256, n_layer=2, n_head=2, n_kv_head=2, n_embd=64)
    with torch.device("meta"):
        model = GPT(cfg)
    model.to_empty(device="cpu")
    model.init_weights()
    hooks = get_plugin_hooks()
    print("hooks", hooks is not None)
    train = torch.compile(model, dynamic=False) if compile_ else model
    if mode == "mc":
        parser = argparse.ArgumentParser()
        hooks.register_arguments(parser=parser)
        args = parser.parse_args(MC_FLAGS)
        hooks.adjust_arguments(args=args, stage="base")
        if any(hooks.setup_model(model=model, args=args, num_iterations=5, stage="base")):
            train = model.attach_plugin(hooks, compile=compile_)  # as base_train does
    budgets: set[int] = set()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    xy = torch.randint(0, 256, (2, 129), generator=torch.Generator().manual_seed(1))
    for step in range(8 if compile_ else 3):  # compiled: past the curriculum, widths repeat
        loss = train(xy[:, :-1].contiguous(), xy[:, 1:].contiguous())  # contiguous: the pristine tree needs it
        loss.backward()
        opt.step()
        opt.zero_grad()
        if hooks is not None:
            hooks.after_optimizer_step(step=step)
            for metrics in hooks.on_step_telemetry(step=step, metrics={}):
                budgets.add(int(metrics["mc/wc_budget"]))
        print(f"loss {loss.item():.6f}")
    if mode == "mc":
        (metrics,) = hooks.on_step_telemetry(step=step, metrics={})
        print("telemetry", " ".join(sorted(metrics)))
        print("budgets", len(budgets))
    if compile_:
        from torch._dynamo.utils import counters
        print("graph_breaks", sum(counters["graph_break"].values()))
        print("graphs", counters["stats"]["unique_graphs"])


if __name__ == "__main__":
    main(sys.argv[1], "compile" in sys.argv[2:])
