"""The operator's planning: where an hf:// model's config.json is read (config_url), the
cache of answers and failures, the Hub client (against a stand-in on 127.0.0.1), the
planner's verdict as the Planned condition, and the hub endpoint setting."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from finetune_api.plan import ModelShape
from finetune_api.resource import FineTuneJob
from finetune_operator import hub as hub_module
from finetune_operator.hub import ExpiringCache, HubConfigs, config_url, shape_of
from finetune_operator.planning import ModelFacts, planned
from finetune_operator.settings import DEFAULT_HUB_ENDPOINT, Settings
from finetune_operator.status import Planned
from hub_server import SMOLLM2, SMOLLM2_CONFIG, SMOLLM2_CONFIG_PATH, HubStandIn
from kube_api import free_port

HUB = "https://huggingface.co"

# --------------------------------------------------------------------------- config_url


@pytest.mark.parametrize(
    ("uri", "revision", "endpoint", "url"),
    [
        (
            f"hf://{SMOLLM2}",
            None,
            HUB,
            f"{HUB}/{SMOLLM2}/resolve/main/config.json",
        ),
        ("hf://gpt2", "v1.0", HUB + "/", f"{HUB}/gpt2/resolve/v1.0/config.json"),
        # A ref with slashes is one path segment, as huggingface_hub quotes it.
        (
            "hf://org/m",
            "refs/pr/1",
            "http://mirror:8080",
            "http://mirror:8080/org/m/resolve/refs%2Fpr%2F1/config.json",
        ),
    ],
)
def test_an_hf_model_has_its_config_url(
    uri: str, revision: str | None, endpoint: str, url: str
) -> None:
    assert config_url(uri, revision, endpoint) == url


@pytest.mark.parametrize(
    ("uri", "endpoint"),
    [
        ("s3://models-bucket/llama", HUB),
        ("pvc://models/llama", HUB),
        ("file:///models/llama", HUB),
        ("hf://datasets/org/set", HUB),  # not a model repository
        ("hf://org/../m", HUB),
        ("llama", HUB),
        (f"hf://{SMOLLM2}", ""),  # planning off
    ],
)
def test_only_hf_models_are_read_and_only_with_an_endpoint(uri: str, endpoint: str) -> None:
    assert config_url(uri, None, endpoint) is None


# --------------------------------------------------------------------------- the cache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_cache_entries_expire_at_their_own_deadline() -> None:
    clock = Clock()
    cache: ExpiringCache[str, int] = ExpiringCache(clock=clock)
    cache.put("found", 1, ttl=3600)
    cache.put("missing", 2, ttl=300)
    clock.now = 299
    assert (cache.get("found"), cache.get("missing")) == (1, 2)
    clock.now = 300
    assert (cache.get("found"), cache.get("missing")) == (1, None)
    assert len(cache) == 1


def test_a_full_cache_drops_the_oldest_entry() -> None:
    cache: ExpiringCache[int, int] = ExpiringCache(size=2, clock=Clock())
    cache.put(1, 1, ttl=10)
    cache.put(2, 2, ttl=10)
    cache.put(1, 11, ttl=10)  # written again: now the newest
    cache.put(3, 3, ttl=10)
    assert (cache.get(1), cache.get(2), cache.get(3)) == (11, None, 3)


# --------------------------------------------------------------------------- config.json


def test_a_config_json_gives_the_models_shape() -> None:
    facts = shape_of(json.dumps(SMOLLM2_CONFIG).encode(), "the Hub")
    assert facts.shape == ModelShape.from_config(SMOLLM2_CONFIG)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"<html>", "is not JSON"),
        (b"[1, 2]", "is not a JSON object"),
        (b'{"model_type": "llama"}', "hidden_size"),  # the planner's ShapeError
        (b" " * (hub_module.MAX_CONFIG_BYTES + 1), "larger than"),
    ],
)
def test_an_unreadable_config_json_says_why(body: bytes, says: str) -> None:
    facts = shape_of(body, "http://hub/o/m/resolve/main/config.json")
    assert facts.shape is None and facts.reason == "ModelConfigUnreadable"
    assert says in facts.message and "http://hub/o/m" in facts.message


# --------------------------------------------------------------------------- the client


def ask(hub: HubConfigs, *models: tuple[str, str | None]) -> list[ModelFacts]:
    """The answers to ``models``, asked at once on one event loop, then the session closed."""

    async def main() -> list[ModelFacts]:
        try:
            return list(await asyncio.gather(*(hub.model(u, r) for u, r in models)))
        finally:
            await hub.close()

    return asyncio.run(main())


def test_jobs_of_one_model_share_one_request_and_its_answer() -> None:
    with HubStandIn() as stand_in:
        client = HubConfigs(stand_in.url)
        facts = ask(client, *[(f"hf://{SMOLLM2}", None)] * 5, (f"hf://{SMOLLM2}", "main"))
        again = ask(client, (f"hf://{SMOLLM2}", None))
    assert all(f.shape == ModelShape.from_config(SMOLLM2_CONFIG) for f in facts + again)
    # (uri, None) and (uri, "main") are two keys: the same file, asked twice.
    assert stand_in.asked == [SMOLLM2_CONFIG_PATH] * 2


def test_a_failure_is_cached_for_minutes_then_asked_again() -> None:
    clock = Clock()
    with HubStandIn() as stand_in:
        client = HubConfigs(stand_in.url, clock=clock)
        (first,) = ask(client, ("hf://acme/gone", None))
        clock.now = hub_module.MISSING_TTL - 1
        (cached,) = ask(client, ("hf://acme/gone", None))
        clock.now = hub_module.MISSING_TTL
        ask(client, ("hf://acme/gone", None))
    assert first.shape is None and first.reason == "ModelConfigUnavailable"
    assert "acme/gone/resolve/main/config.json answered HTTP 404" in first.message
    assert cached == first
    assert len(stand_in.asked) == 2


def test_a_hub_that_does_not_answer_in_time_is_given_up_and_remembered() -> None:
    with HubStandIn(delay=2.0) as stand_in:
        client = HubConfigs(stand_in.url, timeout=0.2)
        facts = ask(client, *[(f"hf://{SMOLLM2}", None)] * 3)
        again = ask(client, (f"hf://{SMOLLM2}", None))
    assert {f.message for f in facts + again} == {
        f"no plan: {stand_in.url}{SMOLLM2_CONFIG_PATH} did not answer within 0.2 s"
    }
    assert len(stand_in.asked) == 1


def test_a_config_json_arriving_in_many_packets_is_read_whole_and_a_huge_one_refused() -> None:
    with HubStandIn() as stand_in:
        # A config.json as large as some carry (e.g. a long id2label table): ~300 KB.
        large = {**SMOLLM2_CONFIG, "id2label": {str(i): f"label-{i}" for i in range(20000)}}
        stand_in.files["/org/large/resolve/main/config.json"] = json.dumps(large)
        stand_in.files["/org/huge/resolve/main/config.json"] = json.dumps(
            {**SMOLLM2_CONFIG, "padding": "x" * hub_module.MAX_CONFIG_BYTES}
        )
        read, huge = ask(
            HubConfigs(stand_in.url), ("hf://org/large", None), ("hf://org/huge", None)
        )
    assert read.shape == ModelShape.from_config(SMOLLM2_CONFIG)
    assert huge.reason == "ModelConfigUnreadable" and "is larger than" in huge.message


def test_a_refused_connection_says_where() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    (facts,) = ask(HubConfigs(endpoint), (f"hf://{SMOLLM2}", None))
    assert facts.reason == "ModelConfigUnavailable"
    assert facts.message.startswith(f"no plan: cannot read {endpoint}{SMOLLM2_CONFIG_PATH}: ")


def test_other_schemes_and_no_endpoint_make_no_request() -> None:
    (s3,) = ask(HubConfigs(HUB), ("s3://models-bucket/llama", None))
    (off,) = ask(HubConfigs(""), (f"hf://{SMOLLM2}", None))
    assert s3.reason == off.reason == "ModelConfigUnavailable"
    assert "hf:// models only, not of s3:// ones" in s3.message
    assert "hub endpoint is empty" in off.message


# --------------------------------------------------------------------------- the verdict

SHAPE = ModelFacts(ModelShape.from_config(SMOLLM2_CONFIG))


def job(**spec: Any) -> FineTuneJob:
    return FineTuneJob.model_validate(
        {
            "apiVersion": "finetune-operator.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "sft", "namespace": "ml"},
            "spec": {
                "model": {"uri": f"hf://{SMOLLM2}"},
                "dataset": {"train": "s3://data-bucket/train.jsonl"},
                "output": {"uri": "s3://artifacts-bucket/sft"},
                **spec,
            },
        }
    )


def test_a_job_that_fits_is_planned_with_its_summary() -> None:
    verdict = planned(
        job(training={"maxSteps": 10}, resources={"gpus": 1, "gpuType": "H100"}), SHAPE
    )
    assert (verdict.status, verdict.reason) == (True, "Fits")
    assert verdict.message.startswith("fits: ")
    assert verdict.plan is not None
    assert verdict.plan["fits"] is True and verdict.plan["steps"] == 10
    assert verdict.plan["estimatedDuration"]


def test_gpus_that_cannot_hold_the_job_refuse_it_with_a_change_that_fits() -> None:
    verdict = planned(
        job(
            method={"type": "full"},
            training={"batchSize": 64, "maxSeqLength": 4096},
            resources={"gpus": 1, "gpuType": "L4"},
        ),
        SHAPE,
    )
    assert (verdict.status, verdict.reason, verdict.refuses) == (False, "WontFit", True)
    assert verdict.message.startswith("does not fit:") and " needs " in verdict.message
    assert verdict.plan is not None and verdict.plan["fits"] is False


def test_gpu_memory_overrides_the_type_and_an_unknown_memory_is_said() -> None:
    small = planned(job(resources={"gpus": 1, "gpuType": "H200", "gpuMemory": "1Gi"}), SHAPE)
    assert small.reason == "WontFit"
    unknown = planned(job(resources={"gpus": 2}), SHAPE)
    assert (unknown.status, unknown.reason) == (True, "MemoryUnknown")
    assert unknown.plan is not None and "fits" not in unknown.plan


def test_a_cpu_job_over_its_memory_is_planned_not_refused() -> None:
    verdict = planned(job(resources={"memory": "1Gi"}), SHAPE)
    assert (verdict.status, verdict.reason) == (True, "MayNotFit")
    assert "not refused" in verdict.message


def test_no_shape_is_unknown_and_a_planner_error_never_blocks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    why = ModelFacts(None, "ModelConfigUnavailable", "no plan: HTTP 401")
    assert planned(job(), why) == Planned(None, why.reason, why.message)

    def broken(*_: Any, **__: Any) -> Any:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr("finetune_operator.planning.plan_job", broken)
    verdict = planned(job(resources={"gpus": 1, "gpuType": "L4"}), SHAPE)
    assert (verdict.status, verdict.reason) == (None, "ModelConfigUnreadable")
    assert "division by zero" in verdict.message


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("env", "endpoint"),
    [
        ({}, DEFAULT_HUB_ENDPOINT),
        ({"HF_ENDPOINT": "https://hf-mirror.example/"}, "https://hf-mirror.example"),
        (
            {"HF_ENDPOINT": "https://a.example", "FINETUNE_HUB_ENDPOINT": "http://b.example:80"},
            "http://b.example:80",
        ),
        ({"FINETUNE_HUB_ENDPOINT": ""}, ""),  # planning off
    ],
)
def test_the_hub_endpoint_setting(env: dict[str, str], endpoint: str) -> None:
    assert Settings.from_env(env).hub_endpoint == endpoint


def test_a_hub_endpoint_that_is_no_url_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="FINETUNE_HUB_ENDPOINT must be an http"):
        Settings.from_env({"FINETUNE_HUB_ENDPOINT": "huggingface.co"})


def test_the_plan_is_of_the_spec_with_its_preset_filled_in() -> None:
    """The trainer runs the spec with the preset's gaps filled (render's with_preset), so
    the operator plans that spec: the Llama 3.1 preset's maxSeqLength 2048, not 1024."""
    gpu = {"gpus": 1, "gpuType": "H100"}
    plain = planned(job(training={"maxSteps": 10}, resources=gpu), SHAPE)
    preset = planned(
        job(
            model={"uri": f"hf://{SMOLLM2}", "preset": "llama-3.1-8b-instruct"},
            training={"maxSteps": 10},
            resources=gpu,
        ),
        SHAPE,
    )
    longer = planned(job(training={"maxSteps": 10, "maxSeqLength": 2048}, resources=gpu), SHAPE)
    assert preset.plan is not None and plain.plan is not None
    assert preset.plan == longer.plan != plain.plan
