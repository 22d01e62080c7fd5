"""Preference and reinforcement tuning: the reward model, the DPO family, GRPO.

The pure losses (``losses.py``), each answer's summed log-probability (``logps.py``),
the reference policy (``reference.py``), the task losses of ``reward-model`` and
``preference`` (``preference.py``) and their held-out scores (``scoring.py``);
verifiable and model rewards (``rewards.py``) and GRPO (``grpo.py``) for
``reinforcement``.
"""
