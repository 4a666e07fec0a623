"""adapter/graph.py without a fit: the backward stand-in and the kernel guards."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from conftest import pl
from torch import nn

from lightning_hyperopt import Clip, FirstOrder, L2Penalty, TangentEngine
from lightning_hyperopt.adapter.graph import GraphBridge


class Module(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(3, 1)
        self.l2 = L2Penalty(0.1)

    def loss(self):
        x = torch.linspace(-1, 1, 12).reshape(4, 3)
        return self.net(x).pow(2).mean() + self.l2(self.net.parameters())


def engine_for(module, method):
    optimizer = torch.optim.SGD(module.net.parameters(), lr=0.1)
    return TangentEngine(method, {"l2": module.l2}, optimizer)


def plan(patch_backward=True, native_rnn=False):
    return SimpleNamespace(patch_backward=patch_backward, native_rnn=native_rnn)


def test_the_stand_in_fills_the_gradients_and_takes_the_drift_then_goes():
    module = Module()
    engine = engine_for(module, Clip(5.0))
    bridge = GraphBridge()
    bridge.start(module, engine, plan())
    assert bridge.patched and "backward" in vars(module)
    module.backward(module.loss())  # what Lightning calls
    assert engine.step_pending and module.net.weight.grad is not None
    grad = module.net.weight.grad.clone()
    module.net.weight.grad = None
    bridge.end()
    assert not bridge.patched and "backward" not in vars(module)
    engine.window.discard()
    module.loss().backward()
    torch.testing.assert_close(module.net.weight.grad, grad)  # the same gradient


def test_hook_mode_takes_the_drift_from_the_graph_before_the_modules_backward():
    module = Module()
    engine = engine_for(module, Clip(5.0))
    bridge = GraphBridge()
    bridge.start(module, engine, plan(patch_backward=False))
    assert not bridge.patched
    loss = module.loss()
    bridge.before_backward(engine, loss)
    assert engine.step_pending and module.net.weight.grad is None  # the module's own fills it
    loss.backward()
    assert module.net.weight.grad is not None


def test_only_a_step_that_needs_h_y_switches_kernels_and_they_come_back():
    module = Module()
    bridge = GraphBridge()
    bridge.start(module, engine_for(module, FirstOrder()), plan(native_rnn=True))
    bridge.enter_step(engine_for(module, FirstOrder()))
    assert torch.backends.mkldnn.enabled  # first order: the fast kernels
    bridge.exit_step()
    bridge.enter_step(engine_for(module, Clip(5.0)))
    assert not torch.backends.mkldnn.enabled and not torch.backends.cudnn.enabled
    bridge.exit_step()
    assert torch.backends.mkldnn.enabled
