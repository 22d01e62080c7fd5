"""Preference and reinforcement tuning: ours against TRL, side by side in one run.

    python benchmarks/alignment_vs_trl.py [--quick] [--only rm,dpo,simpo,grpo]
        [--out benchmarks/results/alignment_cpu.json]

TRL is not a project dependency: ``pip install trl==1.16.0`` (it brings ``datasets``)
into the environment that runs this. The data are examples/alignment/data (written by
examples/alignment/generate.py): preference pairs whose chosen answer is ``ANSWER: <x>``
and whose rejected answer is the same x in chattier prose, and small sums to answer in
that form for GRPO.

Configurations (``--only`` takes the groups rm, dpo, simpo, grpo), each in its own
subprocess so its peak memory is its own:

- rm: ours (task reward-model, Bradley-Terry) and TRL's ``RewardTrainer``;
- dpo: ours (task preference, loss dpo, the reference = the adapter switched off, per
  step) and TRL's ``DPOTrainer`` (loss sigmoid, the same reference);
- simpo: ours (loss simpo) and TRL's ``CPOTrainer`` (loss_type simpo, cpo_alpha 0: SimPO);
- grpo: ours (task reinforcement) and TRL's ``GRPOTrainer`` (loss_type grpo: per
  completion token means, as ours; one pass per generation).

Everything that could differ is set the same: the model (SmolLM2-135M-Instruct), the
LoRA (r 16, alpha 32, dropout 0, the seven projections), optimizer steps, pairs or
prompts per step, learning rate and schedule, beta/gamma/epsilon, sampling, precision
(fp32 on CPU, bf16 on CUDA), threads, seed; no gradient checkpointing on either side.

Every adapter is then scored by the SAME code here, on the held-out files:

- preference: ``preferenceAccuracy`` (share of pairs whose chosen answer has the higher
  mean per-token log-probability under the tuned model: its own preference) and
  ``rewardAccuracy`` (share whose DPO implicit reward, log-prob of the tuned model minus
  the base's, summed over the answer, is higher for chosen);
- reward model: ``pairwiseAccuracy`` (chosen scored above rejected);
- grpo: ``meanReward`` of greedy completions with the same reward functions and weights
  (exact reference answer 1, the ``ANSWER: <n>`` form 0.5, at most 10 tokens 0.25).

Reported per configuration: training-loop seconds per optimizer step (model loading,
tokenisation and evaluation excluded: ours is the loop's own clock, TRL's is
``trainer.train()``), process peak RSS (CUDA: allocator peak), the held-out scores, the
base model's scores, ratios ours/TRL, and greedy samples before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "operator"), str(REPO / "trainer_image")]
DATA = REPO / "examples/alignment/data"

LORA = {"r": 16, "alpha": 32, "dropout": 0.0}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SEED = 42
MAX_LENGTH = 256


def settings(quick: bool, steps: str = "") -> dict[str, dict[str, Any]]:
    """Each group's training settings (``--quick``: a few steps, to check the harness;
    ``steps``: ``group=N,...`` overrides, the same for ours and TRL)."""
    full = {
        "rm": {"steps": 48, "batch": 8, "lr": 5e-4},
        "dpo": {"steps": 48, "batch": 8, "lr": 5e-4, "beta": 0.1},
        "simpo": {"steps": 48, "batch": 8, "lr": 5e-4, "beta": 2.0, "gamma": 1.0},
        "grpo": {
            "steps": 40,
            "batch": 4,  # prompts per step; x generations completions
            "lr": 2e-4,
            "generations": 8,
            "maxNewTokens": 16,
            "temperature": 1.0,
            "beta": 0.04,
            "epsilon": 0.2,
        },
    }
    if quick:
        for group in full.values():
            group["steps"] = 2
    for item in filter(None, steps.split(",")):
        group, n = item.split("=")
        full[group]["steps"] = int(n)
    return full


# GRPO's rewards: the manifest's (ours) and this module's functions (TRL and the scoring).
FORM = r"^ANSWER: \d+$"
SHORT = 10
REWARDS = [
    {"type": "exactMatch", "weight": 1.0},
    {"type": "regex", "pattern": FORM, "weight": 0.5, "name": "form"},
    {"type": "length", "maxLength": SHORT, "weight": 0.25, "name": "short"},
]


def reward_values(text: str, tokens: int, reference: str) -> list[float]:
    """The three rewards of one completion: exact answer, form, short (tokens counted up
    to and including the end of sequence, as the trainer counts them)."""
    return [
        float(text.strip() == reference.strip()),
        float(re.search(FORM, text) is not None),
        float(tokens <= SHORT),
    ]


def combined(values: Sequence[float]) -> float:
    return sum(float(r["weight"]) * v for r, v in zip(REWARDS, values, strict=True))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def device_and_dtype() -> tuple[str, Any]:
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", torch.float32


# --------------------------------------------------------------------------- ours


def run_ours(args: argparse.Namespace, group: str) -> dict[str, Any]:
    from finetune_api.config import TrainerConfig
    from finetune_trainer.publish import stage_artifacts
    from finetune_trainer.runner import fine_tune

    work, s = Path(args.work), settings(args.quick, args.steps)[group]
    task = {"rm": "reward-model", "grpo": "reinforcement"}.get(group, "preference")
    files = ("prompts" if group == "grpo" else "pairs") + "-{}.jsonl"
    spec: dict[str, Any] = {
        "jobName": f"bench-{group}",
        "task": task,
        "model": {"uri": f"file://{args.model}"},
        "dataset": {
            "train": f"file://{DATA / files.format('train')}",
            "validation": f"file://{DATA / files.format('validation')}",
            "format": "prompts" if group == "grpo" else "preference",
            "deduplicate": False,
        },
        "method": {"type": "lora", "lora": {**LORA, "targetModules": TARGETS}},
        "training": {
            "maxSteps": s["steps"],
            "learningRate": s["lr"],
            "scheduler": "constant" if group == "grpo" else "linear",
            "warmupRatio": 0.0,
            "batchSize": s["batch"],
            "maxSeqLength": MAX_LENGTH,
            "precision": "bf16" if device_and_dtype()[0] == "cuda" else "fp32",
            "seed": SEED,
            "metricsPort": 0,
        },
        # The held-out scores that matter are this benchmark's; keep the run's own short.
        "evaluation": {"exactMatchSamples": 0, "maxNewTokens": s.get("maxNewTokens", 16)},
        "output": {"uri": f"file://{work / f'out-{args.name}'}"},
    }
    if group in ("dpo", "simpo"):
        spec["preference"] = {"loss": group, "beta": s["beta"]}
        if group == "simpo":
            spec["preference"]["gamma"] = s["gamma"]
    if group == "grpo":
        spec["reinforcement"] = {
            "generations": s["generations"],
            "maxNewTokens": s["maxNewTokens"],
            "temperature": s["temperature"],
            "beta": s["beta"],
            "epsilon": s["epsilon"],
            "rewards": REWARDS,
        }
    config = TrainerConfig.model_validate(spec)
    run = fine_tune(config)
    adapter = work / f"adapter-{args.name}"
    stage_artifacts(adapter, run.model, run.tokenizer, config, run.metrics, str(args.model))
    metrics = run.metrics
    return {"trainSeconds": metrics["trainSeconds"], "steps": metrics["steps"]}


# --------------------------------------------------------------------------- TRL


def peft_lora(task_type: str = "CAUSAL_LM") -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=TARGETS,
        task_type=task_type,
    )


def trl_common(args: argparse.Namespace, s: dict[str, Any], scheduler: str) -> dict[str, Any]:
    """The TrainingArguments every TRL configuration shares."""
    return {
        "output_dir": str(Path(args.work) / f"trl-{args.name}"),
        "max_steps": s["steps"],
        "learning_rate": s["lr"],
        "lr_scheduler_type": scheduler,
        "warmup_steps": 0,
        "gradient_accumulation_steps": 1,
        "bf16": device_and_dtype()[0] == "cuda",
        "gradient_checkpointing": False,
        "save_strategy": "no",
        "report_to": "none",
        "logging_steps": 10,
        "dataloader_num_workers": 0,
        "seed": SEED,
    }


def train_and_save(trainer: Any, adapter: Path) -> dict[str, Any]:
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    trainer.model.save_pretrained(adapter)
    return {"trainSeconds": seconds, "steps": output.global_step}


def run_trl(args: argparse.Namespace, group: str) -> dict[str, Any]:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    work, s = Path(args.work), settings(args.quick, args.steps)[group]
    _, dtype = device_and_dtype()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    adapter = work / f"adapter-{args.name}"
    files = ("prompts" if group == "grpo" else "pairs") + "-train.jsonl"
    rows = load_dataset("json", data_files=str(DATA / files), split="train")
    if group == "rm":
        from transformers import AutoModelForSequenceClassification
        from trl import RewardConfig, RewardTrainer

        model = AutoModelForSequenceClassification.from_pretrained(
            args.model, num_labels=1, dtype=dtype
        )
        model.config.pad_token_id = tokenizer.pad_token_id
        config = RewardConfig(
            **trl_common(args, s, "linear"),
            per_device_train_batch_size=s["batch"],
            max_length=MAX_LENGTH,
        )
        trainer = RewardTrainer(
            model=model,
            args=config,
            train_dataset=rows,
            processing_class=tokenizer,
            peft_config=peft_lora("SEQ_CLS"),
        )
        return train_and_save(trainer, adapter)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    if group == "dpo":
        from trl import DPOConfig, DPOTrainer

        config = DPOConfig(
            **trl_common(args, s, "linear"),
            per_device_train_batch_size=s["batch"],
            max_length=MAX_LENGTH,
            beta=s["beta"],
            loss_type=["sigmoid"],
        )
        trainer = DPOTrainer(
            model=model,
            args=config,
            train_dataset=rows,
            processing_class=tokenizer,
            peft_config=peft_lora(),
        )
        return train_and_save(trainer, adapter)
    if group == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        config = CPOConfig(
            **trl_common(args, s, "linear"),
            per_device_train_batch_size=s["batch"],
            max_length=MAX_LENGTH,
            beta=s["beta"],
            loss_type="simpo",
            simpo_gamma=s["gamma"],  # in reward units, as ours: beta*dlogp - gamma
            cpo_alpha=0.0,  # no NLL term: SimPO itself
        )
        trainer = CPOTrainer(
            model=model,
            args=config,
            train_dataset=rows,
            processing_class=tokenizer,
            peft_config=peft_lora(),
        )
        return train_and_save(trainer, adapter)
    from trl import GRPOConfig, GRPOTrainer

    def reward_fn(index: int) -> Callable[..., list[float]]:
        def score(
            completions: list[Any], completion_ids: list[list[int]], **kw: Any
        ) -> list[float]:
            out = []
            for completion, ids, answer in zip(
                completions, completion_ids, kw["answer"], strict=True
            ):
                text = completion[0]["content"] if isinstance(completion, list) else completion
                out.append(reward_values(text, len(ids), answer)[index])
            return out

        score.__name__ = ["exactMatch", "form", "short"][index]
        return score

    config = GRPOConfig(
        **trl_common(args, s, "constant"),
        # TRL counts completions per device batch: prompts x generations.
        per_device_train_batch_size=s["batch"] * s["generations"],
        num_generations=s["generations"],
        max_completion_length=s["maxNewTokens"],
        temperature=s["temperature"],
        top_p=1.0,
        beta=s["beta"],
        epsilon=s["epsilon"],
        num_iterations=1,
        loss_type="grpo",
        scale_rewards="group",
        reward_weights=[float(r["weight"]) for r in REWARDS],
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[reward_fn(i) for i in range(len(REWARDS))],
        args=config,
        train_dataset=rows,
        processing_class=tokenizer,
        peft_config=peft_lora(),
    )
    return train_and_save(trainer, adapter)


CONFIGS: dict[str, tuple[str, Callable[[argparse.Namespace, str], dict[str, Any]]]] = {
    f"{group}-{side}": (group, run)
    for group in ("rm", "dpo", "simpo", "grpo")
    for side, run in (("ours", run_ours), ("trl", run_trl))
}


def child(args: argparse.Namespace) -> None:
    """One configuration, in this process; prints its result as the last line."""
    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(args.threads)
    group, run = CONFIGS[args.name]
    result = run(args, group)
    if torch.cuda.is_available():
        result["peakMemoryBytes"] = torch.cuda.max_memory_allocated()
    else:
        result["peakMemoryBytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(result))


# --------------------------------------------------------------------------- scoring


def chat(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=generation_prompt, tokenize=True, return_dict=True
    )["input_ids"]
    return list(ids)


def answer_logps(model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> list[tuple[float, ...]]:
    """Per pair: (chosen sum, chosen tokens, rejected sum, rejected tokens) of the answer
    tokens' log-probabilities (the answer turn as the chat template closes it)."""
    import torch

    device = next(model.parameters()).device
    out = []
    for row in rows:
        prompt = chat(tokenizer, row["prompt"], True)
        sums: list[float] = []
        for key in ("chosen", "rejected"):
            full = chat(tokenizer, row["prompt"] + row[key], False)[:MAX_LENGTH]
            ids = torch.tensor([full], device=device)
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, :-1].float()
            logps = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]
            answer = logps[len(prompt) - 1 :]
            sums += [float(answer.sum()), float(answer.numel())]
        out.append(tuple(sums))
    return out


def preference_scores(
    model_dir: Path, adapter: Path | None, rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """Held-out preference accuracy (mean per-token log-prob) and the DPO implicit
    reward accuracy (tuned minus base, summed) of an adapter; with ``adapter`` None the
    base model's preference accuracy."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from finetune_trainer.modeling import load_tokenizer

    device, dtype = device_and_dtype()
    tokenizer = load_tokenizer(model_dir, False)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    if adapter is None:
        tuned = answer_logps(base, tokenizer, rows)
        return {"preferenceAccuracy": accuracy(tuned, mean_per_token)}
    model = PeftModel.from_pretrained(base, adapter).eval()
    tuned = answer_logps(model, tokenizer, rows)
    with model.disable_adapter():
        ref = answer_logps(model, tokenizer, rows)
    margins = [(t[0] - r[0]) - (t[2] - r[2]) for t, r in zip(tuned, ref, strict=True)]
    return {
        "preferenceAccuracy": accuracy(tuned, mean_per_token),
        "rewardAccuracy": sum(m > 0 for m in margins) / len(margins),
        "chosenLogps": sum(t[0] for t in tuned) / len(tuned),
        "rejectedLogps": sum(t[2] for t in tuned) / len(tuned),
    }


def mean_per_token(p: tuple[float, ...]) -> bool:
    return p[0] / p[1] > p[2] / p[3]


def accuracy(
    pairs: list[tuple[float, ...]], chosen_wins: Callable[[tuple[float, ...]], bool]
) -> float:
    return sum(chosen_wins(p) for p in pairs) / len(pairs)


def reward_model_scores(
    model_dir: Path, adapter: Path | None, rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """Held-out pairwise accuracy and mean margin of a reward model: the base with a
    one-output head and the adapter (its trained head saved with it); ``adapter`` None:
    the base with a fresh head (seeded), the before value."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from finetune_trainer.modeling import load_tokenizer

    device, dtype = device_and_dtype()
    tokenizer = load_tokenizer(model_dir, False)
    torch.manual_seed(SEED)
    model: Any = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=1, dtype=dtype
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model = model.to(device).eval()
    margins = []
    for row in rows:
        scores = []
        for key in ("chosen", "rejected"):
            ids = chat(tokenizer, row["prompt"] + row[key], False)[:MAX_LENGTH]
            with torch.no_grad():
                scores.append(
                    float(model(input_ids=torch.tensor([ids], device=device)).logits[0, 0])
                )
        margins.append(scores[0] - scores[1])
    return {
        "pairwiseAccuracy": sum(m > 0 for m in margins) / len(margins),
        "meanMargin": sum(margins) / len(margins),
    }


def greedy(
    model: Any, tokenizer: Any, prompt: list[dict[str, str]], max_new: int
) -> tuple[str, int]:
    """The greedy completion's text and its token count (end of sequence included)."""
    import torch

    device = next(model.parameters()).device
    ids = torch.tensor([chat(tokenizer, prompt, True)], device=device)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    completion = out[0, ids.shape[1] :].tolist()
    eos = tokenizer.eos_token_id
    if eos in completion:
        completion = completion[: completion.index(eos) + 1]
    return tokenizer.decode(completion, skip_special_tokens=True), len(completion)


def generation_scores(
    model_dir: Path, adapter: Path | None, rows: list[dict[str, Any]], max_new: int, samples: int
) -> dict[str, Any]:
    """Greedy completions of the held-out prompts: the mean combined reward (rows with a
    reference answer), each reward's mean, and the first few completions."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from finetune_trainer.modeling import load_tokenizer

    device, dtype = device_and_dtype()
    tokenizer = load_tokenizer(model_dir, False)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    rewards, shown = [], []
    for i, row in enumerate(rows):
        text, tokens = greedy(model, tokenizer, row["prompt"], max_new)
        if "answer" in row:
            rewards.append(reward_values(text, tokens, row["answer"]))
        if i < samples:
            shown.append({"prompt": row["prompt"][-1]["content"], "completion": text})
    result: dict[str, Any] = {"samples": shown}
    if rewards:
        result["meanReward"] = sum(combined(r) for r in rewards) / len(rewards)
        for k, reward in enumerate(REWARDS):
            name = str(reward.get("name", reward["type"]))
            result[name] = sum(r[k] for r in rewards) / len(rewards)
    return result


def score(
    group: str, model_dir: Path, adapter: Path | None, args: argparse.Namespace
) -> dict[str, Any]:
    """The held-out scores of one adapter (or the base model), the same code for all."""
    n = 8 if args.quick else None
    if group == "grpo":
        rows = read_jsonl(DATA / "prompts-validation.jsonl")[:n]
        max_new = settings(args.quick, args.steps)["grpo"]["maxNewTokens"]
        return generation_scores(model_dir, adapter, rows, max_new, samples=4)
    rows = read_jsonl(DATA / "pairs-validation.jsonl")[:n]
    if group == "rm":
        return reward_model_scores(model_dir, adapter, rows)
    result = preference_scores(model_dir, adapter, rows)
    result["samples"] = generation_scores(model_dir, adapter, rows[:4], 24, samples=4)["samples"]
    return result


# --------------------------------------------------------------------------- report


def ratios(results: dict[str, Any]) -> None:
    """ours/TRL per group: seconds per step, peak memory, and each quality score."""
    for group in ("rm", "dpo", "simpo", "grpo"):
        ours, trl = results.get(f"{group}-ours"), results.get(f"{group}-trl")
        if not ours or not trl or "error" in ours or "error" in trl:
            continue
        quality = {
            k: ours["heldOut"][k] / trl["heldOut"][k]
            for k in ("pairwiseAccuracy", "preferenceAccuracy", "rewardAccuracy", "meanReward")
            if k in ours["heldOut"] and trl["heldOut"].get(k)
        }
        ours["vsTrl"] = {
            "secondsPerStep": ours["secondsPerStep"] / trl["secondsPerStep"],
            "speedup": trl["secondsPerStep"] / ours["secondsPerStep"],
            "peakMemory": ours["peakMemoryBytes"] / trl["peakMemoryBytes"],
            **quality,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "models/SmolLM2-135M-Instruct")
    parser.add_argument("--quick", action="store_true", help="2 steps each: check the harness")
    parser.add_argument("--only", default="rm,dpo,simpo,grpo", help="groups, or configurations")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--steps", default="", help="optimizer steps per group: grpo=16,dpo=48")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.name = args.child
        child(args)
        return
    import torch

    out = args.out or REPO / f"benchmarks/results/alignment_{'quick' if args.quick else 'cpu'}.json"
    names = []
    for item in args.only.split(","):
        names += [item] if item in CONFIGS else [f"{item}-ours", f"{item}-trl"]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"--only: unknown {unknown}; groups rm, dpo, simpo, grpo")
    work = Path(tempfile.mkdtemp(prefix="bench-alignment-"))
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "threads": args.threads,
        "precision": "bf16" if torch.cuda.is_available() else "fp32",
        "model": str(
            args.model.relative_to(REPO) if args.model.is_relative_to(REPO) else args.model
        ),
        "torch": torch.__version__,
        "settings": settings(args.quick, args.steps),
        "lora": {**LORA, "targetModules": TARGETS},
        "base": {},
        "results": {},
    }
    try:
        import trl

        report["trl"] = trl.__version__
    except ImportError:
        report["trl"] = None

    def write() -> None:
        ratios(report["results"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")

    for name in names:
        group = CONFIGS[name][0]
        if group not in report["base"]:
            report["base"][group] = score(group, args.model, None, args)
            print(f"base {group}", json.dumps(report["base"][group]), flush=True)
        started = time.perf_counter()
        command = [sys.executable, __file__, "--child", name, "--work", str(work)]
        command += ["--model", str(args.model), "--threads", str(args.threads)]
        command += ["--quick"] if args.quick else []
        command += ["--steps", args.steps] if args.steps else []
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            report["results"][name] = {"error": proc.stderr[-3000:]}
            print(f"{name}: failed\n{proc.stderr[-3000:]}", file=sys.stderr, flush=True)
            write()
            continue
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["wallSeconds"] = time.perf_counter() - started
        result["secondsPerStep"] = result["trainSeconds"] / max(1, result["steps"])
        result["heldOut"] = score(group, args.model, work / f"adapter-{name}", args)
        report["results"][name] = result
        print(name, json.dumps(result), flush=True)
        write()  # after each configuration: a long run stopped early keeps its results
    write()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
