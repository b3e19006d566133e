"""What the plugin tests read of a ``MegaContextPlugin``'s run, from its public state (``plugin.run``,
``plugin.training``): the training step, whether the budget anneals, the step the budget is taken
at, and the chat stage's runtime."""

from __future__ import annotations

from megacontext_plugin.inference import ChatRuntime
from megacontext_plugin.plugin import MegaContextPlugin


def step(plugin: MegaContextPlugin) -> int:
    """The training run's optimizer step (0 without one)."""
    return 0 if plugin.training is None else plugin.training.step


def anneal(plugin: MegaContextPlugin) -> bool:
    """Whether the stage anneals the working-context budget (base_train; True without a training run)."""
    return plugin.training is None or plugin.training.anneal


def budget_step(plugin: MegaContextPlugin) -> int:
    """The step the curriculum's budget is taken at (``TrainingRun.budget_step``)."""
    assert plugin.training is not None
    return plugin.training.budget_step


def chat(plugin: MegaContextPlugin) -> ChatRuntime | None:
    """MC decoding for the Engine (the chat stage's, or a training stage's samples)."""
    return plugin.run.chat
