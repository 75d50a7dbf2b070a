"""Demos registered at import, for the parallel ``run_demos`` test (worker processes import this module)."""

from __future__ import annotations

import os

from tenfold.engine.demo import DemoResult, register_demo


@register_demo("first", budget_s=5, title="First of a group", group="pair")
def first(ctx):
    ctx.shared["token"] = 41
    return DemoResult(rows=[{"demo": "first", "pid": os.getpid()}])


@register_demo("second", budget_s=5, title="Second of a group", group="pair")
def second(ctx):
    return DemoResult(rows=[{"demo": "second", "pid": os.getpid(), "token": ctx.shared.get("token", -1) + 1}])


@register_demo("solo", budget_s=5, title="Exclusive demo", exclusive=True)
def solo(ctx):
    return DemoResult(rows=[{"demo": "solo", "pid": os.getpid()}])


@register_demo("other", budget_s=5, title="Parallel demo")
def other(ctx):
    return DemoResult(rows=[{"demo": "other", "pid": os.getpid()}])


@register_demo("crash", budget_s=5, title="Failing demo")
def crash(ctx):
    raise RuntimeError("worker boom")
