"""Our trainer against TRL's SFTTrainer, side by side in one run.

    python benchmarks/trainer_vs_trl.py [--model models/SmolLM2-135M-Instruct]
        [--examples 1000] [--epochs 1] [--out benchmarks/results/trainer_vs_trl.json]

Same base model, same generated chat data (lengths from a few tokens to ~512), same LoRA
(r 16, alpha 32, dropout 0.05, every linear projection), same maximum length, the same
number of examples per optimizer step (8), same epochs, learning rate, schedule,
precision and threads. Each configuration trains in its own subprocess (so its peak
memory is its own): ours as ``finetune`` trains (length-grouped padded batches; and with
``training.packing``), TRL's ``SFTTrainer`` with its defaults (padded batches) and with
without gradient checkpointing, and with its packing (``packing=True``, best-fit-decreasing,
padding-free). Then every adapter is
scored by the same code on the same held-out set: token-weighted loss on the completions.

Reported per configuration: training-loop wall time, non-padding tokens per second
(the training set's tokens x epochs / loop time, the same numerator for all), peak
memory (GPU allocator peak on CUDA, process peak RSS on CPU), held-out loss, the ratios
against TRL's best configuration, and model FLOPs utilisation: tokens/s x 4N (LoRA: the
frozen base still runs forward and backward through activations, ~4N FLOPs per token)
over this machine's measured matmul throughput.

``--random-init`` trains a randomly initialised model of the same architecture (for a
machine without the weights, e.g. a GPU box without network): throughput and memory are
those of the real model; losses only compare the two trainers with each other.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "operator"), str(REPO / "trainer_image")]

BATCH = 8
LR = 2e-4
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
WORDS = [
    *["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"],
    *["juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo"],
    *["sierra", "tango", "uniform", "victor", "whiskey", "xray", "yankee", "zulu"],
    *["red", "green", "blue", "yellow", "cyan", "magenta", "black", "white", "amber"],
]


# --------------------------------------------------------------------------- data


def chat_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Reverse a list of words: lengths log-uniform from 1 to ~110 words, so examples
    run from a handful of tokens to ~512 with the chat template."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = int(math.exp(rng.uniform(0, math.log(110))))
        words = [rng.choice(WORDS) for _ in range(k)]
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": "Reverse these words: " + " ".join(words)},
                    {"role": "assistant", "content": " ".join(reversed(words))},
                ]
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------- runs


def precision() -> str:
    import torch

    return "bf16" if torch.cuda.is_available() else "fp32"


def packed_batch(args: argparse.Namespace) -> int:
    """Packed rows per step carrying about as many tokens as 8 unpacked examples, so every
    configuration takes the same number of tokens per optimizer step."""
    steps_per_epoch = math.ceil(args.train_examples / BATCH)
    return max(1, round(args.train_tokens / (args.max_length * steps_per_epoch)))


def run_ours(args: argparse.Namespace, packing: bool) -> dict[str, Any]:
    from finetune_api.config import TrainerConfig
    from finetune_trainer.publish import stage_artifacts
    from finetune_trainer.runner import fine_tune

    work = Path(args.work)
    batch = packed_batch(args) if packing else BATCH
    config = TrainerConfig.model_validate(
        {
            "jobName": "bench",
            "model": {"uri": f"file://{args.model}"},
            "dataset": {
                "train": f"file://{work / 'train.jsonl'}",
                "validation": f"file://{work / 'validation.jsonl'}",
                "deduplicate": False,
            },
            "method": {"type": "lora", "lora": {**LORA, "targetModules": TARGETS}},
            "training": {
                "epochs": args.epochs,
                "learningRate": LR,
                "scheduler": "linear",
                "warmupRatio": 0.03,
                "batchSize": batch,
                "maxSeqLength": args.max_length,
                "precision": precision(),
                "packing": packing,
                "metricsPort": 0,
            },
            "evaluation": {"exactMatchSamples": 0},
            "output": {"uri": f"file://{work / 'out-ours'}"},
        }
    )
    run = fine_tune(config)
    adapter = work / f"adapter-{args.name}"
    stage_artifacts(adapter, run.model, run.tokenizer, config, run.metrics, str(args.model))
    metrics = run.metrics
    return {"trainSeconds": metrics["trainSeconds"], "steps": metrics["steps"], "batch": batch}


def peft_lora() -> Any:
    """The benchmark's LoRA as a peft config (TRL's run and the step profile)."""
    from peft import LoraConfig

    return LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=TARGETS,
        task_type="CAUSAL_LM",
    )


def run_trl(args: argparse.Namespace, packing: bool, checkpointing: bool) -> dict[str, Any]:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    work = Path(args.work)
    rows = load_dataset("json", data_files=str(work / "train-pc.jsonl"), split="train")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    dtype = torch.bfloat16 if precision() == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    batch = packed_batch(args) if packing else BATCH
    config = SFTConfig(
        output_dir=str(work / f"trl-{args.name}"),
        max_length=args.max_length,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        num_train_epochs=args.epochs,
        learning_rate=LR,
        lr_scheduler_type="linear",
        warmup_steps=0.03,  # a float below 1 is a ratio of the steps
        bf16=dtype == torch.bfloat16,
        gradient_checkpointing=checkpointing,
        packing=packing,
        padding_free=packing,
        completion_only_loss=True,
        save_strategy="no",
        report_to="none",
        logging_steps=10,
        dataloader_num_workers=0,
        seed=42,
    )
    lora = peft_lora()
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=rows,
        processing_class=tokenizer,
        peft_config=lora,
    )
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    trainer.model.save_pretrained(work / f"adapter-{args.name}")
    return {"trainSeconds": seconds, "steps": output.global_step, "batch": batch}


RUNS = {
    "ours": lambda a: run_ours(a, packing=False),
    "ours-packing": lambda a: run_ours(a, packing=True),
    # TRL's defaults (gradient checkpointing on since TRL 1.x, padded batches)...
    "trl-default": lambda a: run_trl(a, packing=False, checkpointing=True),
    # ...without checkpointing (ours does not checkpoint unless asked)...
    "trl-no-checkpointing": lambda a: run_trl(a, packing=False, checkpointing=False),
    # ...and its fastest: packing best-fit-decreasing, padding-free, no checkpointing.
    "trl-packing": lambda a: run_trl(a, packing=True, checkpointing=False),
}


def child(args: argparse.Namespace) -> None:
    """One configuration, in this process; prints its result as the last line."""
    import torch

    torch.manual_seed(42)
    torch.set_num_threads(args.threads)
    if os.environ.get("BENCH_PROFILE"):  # where does the time go? (stats on stderr)
        import cProfile
        import pstats

        profile = cProfile.Profile()
        result = profile.runcall(RUNS[args.name], args)
        pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(30)
    else:
        result = RUNS[args.name](args)
    if torch.cuda.is_available():
        result["peakMemoryBytes"] = torch.cuda.max_memory_allocated()
    else:
        result["peakMemoryBytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(result))


# --------------------------------------------------------------------------- scoring


def held_out_loss(model_dir: Path, adapter: Path, validation: Path, max_length: int) -> float:
    """The same scoring for every adapter: token-weighted loss on the completions."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from finetune_api.config import DatasetSpec
    from finetune_trainer.data.prepare import prepare_data
    from finetune_trainer.evaluation import token_scores
    from finetune_trainer.modeling import load_tokenizer

    tokenizer = load_tokenizer(model_dir, False)
    spec = DatasetSpec.model_validate(
        {"train": f"file://{validation}", "validation": f"file://{validation}"}
    )
    data = prepare_data(
        tokenizer, spec, max_length=max_length, seed=0, eval_samples=0, use_cache=False
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    model = PeftModel.from_pretrained(base, adapter)
    scores = token_scores(model, data.validation, 8, tokenizer.pad_token_id)
    assert scores is not None
    return float(scores.loss)


def train_tokens(model_dir: Path, train: Path, max_length: int) -> tuple[int, int]:
    """Examples and non-padding tokens of the training set (our tokenization, the same
    chat template TRL applies)."""
    from finetune_api.config import DatasetSpec
    from finetune_trainer.data.prepare import prepare_data
    from finetune_trainer.modeling import load_tokenizer

    tokenizer = load_tokenizer(model_dir, False)
    spec = DatasetSpec.model_validate({"train": f"file://{train}", "validationSplit": 0.01})
    data = prepare_data(
        tokenizer, spec, max_length=max_length, seed=0, eval_samples=0, use_cache=False
    )
    examples = data.train + data.validation
    return len(examples), sum(len(e.input_ids) for e in examples)


def matmul_flops(seconds: float = 3.0) -> float:
    """This machine's dense matmul throughput in the training precision (FLOP/s)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    n = 8192 if device == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        count += 1
        if device == "cuda":
            torch.cuda.synchronize()
    return 2 * n**3 * count / (time.perf_counter() - started)


def random_model(source: Path, target: Path) -> Path:
    """The architecture of ``source`` with random weights (seeded), and its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(source)
    AutoModelForCausalLM.from_config(config).save_pretrained(target)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)
    return target


def profile_step(model_dir: Path, threads: int, max_length: int) -> None:
    """Where a step's time goes: one LoRA step (8 examples of the benchmark's data, padded)
    under torch.profiler, with the model's own loss over full logits (what TRL's
    SFTTrainer computes, before its entropy and accuracy metrics) and with ours (logits at
    label positions, 16-bit CPU dropout). Prints the top operators of each, and the step
    time of a few repeats."""
    import torch
    from peft import get_peft_model
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForCausalLM

    from finetune_trainer.data.batching import collate, count_label_tokens
    from finetune_trainer.data.formats import Example
    from finetune_trainer.data.tokenize import tokenize_example
    from finetune_trainer.dropout import use_cpu_dropout
    from finetune_trainer.losses import causal_lm_loss
    from finetune_trainer.modeling import load_tokenizer

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(model_dir, False)
    rows = sorted(chat_rows(64, seed=3), key=lambda r: len(r["messages"][0]["content"]))[-8:]
    examples = [
        tokenize_example(tokenizer, Example(messages=tuple(r["messages"])), max_length)
        for r in rows
    ]
    batch = {k: v.to(device) for k, v in collate(examples, tokenizer.pad_token_id).items()}
    weight = count_label_tokens(examples)
    lora = peft_lora()
    base = AutoModelForCausalLM.from_pretrained(model_dir).to(device)
    model = get_peft_model(base, lora).train()
    tokens = int(batch["attention_mask"].sum())

    def models_own(m: Any, b: dict[str, Any], w: int) -> Any:
        return m(**b, num_items_in_batch=w).loss

    for name, loss_fn, cheaper_dropout in (
        ("model's own loss, torch dropout", models_own, False),
        ("ours", causal_lm_loss, True),
    ):
        if cheaper_dropout:
            use_cpu_dropout(model)
        times = []
        for _ in range(3):
            started = time.perf_counter()
            loss_fn(model, batch, weight).backward()
            model.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - started)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            loss_fn(model, batch, weight).backward()
            model.zero_grad(set_to_none=True)
        print(f"\n== {name}: {tokens} tokens, step {min(times[1:]):.2f} s (best of 2 after one)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def parameters(model_dir: Path) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    import torch

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "models/SmolLM2-135M-Instruct")
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", default=",".join(RUNS))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/trainer_vs_trl.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--train-examples", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--train-tokens", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--profile-step", action="store_true", help="profile one step of each loss and exit"
    )
    parser.add_argument(
        "--merge", action="store_true", help="add to the results already in --out (same data)"
    )
    args = parser.parse_args()
    if args.profile_step:
        profile_step(args.model, args.threads, args.max_length)
        return
    if args.child:
        args.name = args.child
        child(args)
        return

    import torch

    work = Path(tempfile.mkdtemp(prefix="bench-"))
    model = random_model(args.model, work / "model") if args.random_init else args.model
    train_rows = chat_rows(args.examples, seed=1)
    write_jsonl(work / "train.jsonl", train_rows)
    write_jsonl(work / "validation.jsonl", chat_rows(max(50, args.examples // 10), seed=2))
    # TRL's conversational prompt-completion form of the same rows: loss on the answer.
    write_jsonl(
        work / "train-pc.jsonl",
        [{"prompt": r["messages"][:1], "completion": r["messages"][1:]} for r in train_rows],
    )
    n_examples, n_tokens = train_tokens(model, work / "train.jsonl", args.max_length)
    peak = matmul_flops()
    n_params = parameters(model)
    results: dict[str, Any] = {}
    if args.merge and args.out.exists():  # configurations run earlier on the same data
        results = json.loads(args.out.read_text())["results"]

    def write_report() -> dict[str, Any]:
        trl = [r for k, r in results.items() if k.startswith("trl") and "error" not in r]
        best = max(trl, key=lambda r: r["tokensPerSecond"]) if trl else None
        for name, result in results.items():
            if best is not None and "error" not in result and name.startswith("ours"):
                result["vsTrlBest"] = {
                    "tokensPerSecond": result["tokensPerSecond"] / best["tokensPerSecond"],
                    "peakMemory": result["peakMemoryBytes"] / best["peakMemoryBytes"],
                    "heldOutLoss": result["heldOutLoss"] / best["heldOutLoss"],
                }
        report = {
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "threads": args.threads,
            "precision": precision(),
            "model": str(args.model) + (" (random init)" if args.random_init else ""),
            "parameters": n_params,
            "trainExamples": n_examples,
            "trainTokens": n_tokens,
            "epochs": args.epochs,
            "maxLength": args.max_length,
            "matmulFlops": peak,
            "torch": torch.__version__,
            "results": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        return report

    for name in args.only.split(","):
        started = time.perf_counter()
        command = [sys.executable, __file__, "--child", name, "--work", str(work)]
        command += ["--model", str(model), "--epochs", str(args.epochs)]
        command += ["--max-length", str(args.max_length), "--threads", str(args.threads)]
        command += ["--train-examples", str(n_examples), "--train-tokens", str(n_tokens)]
        proc = subprocess.run(command, capture_output=True, text=True)
        if os.environ.get("BENCH_PROFILE"):
            print(proc.stderr[-12000:], file=sys.stderr)
        if proc.returncode != 0:
            results[name] = {"error": proc.stderr[-2000:]}
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["wallSeconds"] = time.perf_counter() - started
        result["tokensPerSecond"] = n_tokens * args.epochs / result["trainSeconds"]
        result["mfu"] = result["tokensPerSecond"] * 4 * n_params / peak
        result["heldOutLoss"] = held_out_loss(
            model, work / f"adapter-{name}", work / "validation.jsonl", args.max_length
        )
        results[name] = result
        print(name, json.dumps(result), flush=True)
        write_report()  # after each configuration: a long run stopped early keeps its results
    print(json.dumps(write_report(), indent=2))


if __name__ == "__main__":
    main()
