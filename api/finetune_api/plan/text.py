"""A plan as people read it: the table ``finetune plan`` prints."""

from __future__ import annotations

from finetune_api.plan.planner import format_bytes
from finetune_api.plan.report import Plan
from finetune_api.plan.target import duration_text


def _count(n: int) -> str:
    if n >= 10**9:
        return f"{n / 1e9:.2f}B"
    if n >= 10**6:
        return f"{n / 1e6:.1f}M"
    if n >= 10**4:
        return f"{n / 1e3:.1f}K"
    return f"{n:,}"


def render_plan(plan: Plan, title: str) -> str:
    """The plan as an aligned text table: what is trained, the memory terms, the time,
    the verdict and the suggestions."""
    p, m, d, t = plan.parameters, plan.memory, plan.data, plan.time
    where = "per GPU" if t.device != "CPU" else "per process"
    lines = [f"plan: {title}"]
    model = plan.model + (
        " (architecture not known: read as Llama-like)" if plan.approximate else ""
    )
    lines.append(f"  model      {model}")
    lines.append(
        f"  method     {plan.method} ({plan.precision}): trains {_count(p.trainable)} of "
        f"{_count(p.total)} parameters ({p.trainable_percent:.2f}%)"
    )
    if d.source == "dataset":
        lines.append(
            f"  data       {d.rows:,} sequences, {d.tokens_per_epoch:,} tokens an epoch, the "
            f"longest {d.longest_sequence:,} tokens (counted from the dataset)"
        )
    else:
        lines.append(
            f"  data       not read: sequences of up to {d.longest_sequence:,} tokens assumed "
            "(training.maxSeqLength)"
        )
    if d.steps is not None:
        tokens = f", {d.tokens:,} tokens" if d.tokens is not None else ""
        lines.append(f"  steps      {d.steps:,} optimizer steps{tokens}")
    cores = f" ({t.cpu_cores:g} cores each)" if t.cpu_cores is not None else ""
    lines.append(f"  devices    {t.devices} x {t.device}{cores}")
    lines.append("")
    lines.append(f"  memory {where}, peak in {m.phase}:")
    width = max(len(term.name) for term in m.terms)
    for term in m.terms:
        lines.append(f"    {term.name:<{width}}  {format_bytes(term.bytes):>10}  {term.detail}")
    capacity = f" of {format_bytes(m.capacity_bytes)}" if m.capacity_bytes is not None else ""
    lines.append(f"    {'total':<{width}}  {format_bytes(m.per_device_bytes):>10}{capacity}")
    lines.append("")
    if t.seconds is not None and t.seconds_per_step is not None:
        lines.append(
            f"  time       ~{duration_text(t.seconds)} ({t.seconds_per_step:.2f} s a step, "
            f"{t.flops_per_token / 1e9:.2f} GFLOP a token)"
        )
    else:
        lines.append(
            "  time       unknown: the number of steps needs the data (or training.maxSteps)"
        )
    lines.append(f"  verdict    {plan.verdict}")
    if plan.suggestions:
        lines.append("  to make it fit:")
        for s in plan.suggestions:
            fits = "fits" if s.fits else "does not fit"
            same = ", same result" if s.same_result else ""
            fields = ", ".join(f"{k}: {_value(v)}" for k, v in s.set.items())
            lines.append(
                f"    - {s.change}: {format_bytes(s.per_device_bytes)} ({fits}{same}); set {fields}"
            )
    return "\n".join(lines)


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
