"""The two images, checked without a Docker engine.

There is no Docker here, so these tests read the Dockerfiles instead of building
them. They parse with BuildKit's own parser (the ``dockerfile`` package wraps the Go
parser ``docker build`` uses: what it refuses, a build refuses) and hold each file to
what the cluster relies on: pinned bases, a numeric non-root user equal to the pods'
``runAsUser``, exec-form entrypoints, each image installing only its own extra, torch
pinned as in pyproject.toml, no pip or apt caches, and no build tools in the trainer's
final stage. The build commands are in docs/operations/images.md.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import dockerfile
import pytest

from finetune_api.config.training import TrainingSpec
from finetune_operator import names
from finetune_operator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
TRAINER = ROOT / "trainer_image" / "Dockerfile"
OPERATOR = ROOT / "operator" / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# name[:tag]@sha256:<64 hex>, where the tag carries a full X.Y.Z version.
PINNED = re.compile(r"^[a-z0-9./_-]+:(?P<tag>[A-Za-z0-9._-]+)@sha256:[0-9a-f]{64}$")
BUILD_TOOLS = {
    "build-essential",
    "gcc",
    "g++",
    "clang",
    "make",
    "cmake",
    "ninja-build",
    "cuda-toolkit",
    "python3-pip",
    "python3.12-venv",
    "python3-venv",
    "git",
}


@dataclass
class Stage:
    name: str | None
    base: str
    commands: list[dockerfile.Command]

    def all(self, cmd: str) -> list[dockerfile.Command]:
        return [c for c in self.commands if c.cmd == cmd]

    def runs(self) -> list[str]:
        return [c.value[0] for c in self.all("RUN")]


def stages(path: Path) -> list[Stage]:
    out: list[Stage] = []
    for command in dockerfile.parse_file(str(path)):
        if command.cmd == "FROM":
            value = command.value
            name = value[2] if len(value) == 3 and value[1].upper() == "AS" else None
            out.append(Stage(name=name, base=value[0], commands=[]))
        elif out:
            out[-1].commands.append(command)
    return out


def shell_commands(run: str) -> list[list[str]]:
    """A RUN line's simple commands (split at ``&&``, ``||``, ``;``), as argv lists."""
    lexer = shlex.shlex(run, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in {"&&", "||", ";", "|"}:
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def pip_installs(stage_list: list[Stage]) -> list[list[str]]:
    found = []
    for stage in stage_list:
        for run in stage.runs():
            for argv in shell_commands(run):
                if "pip" in Path(argv[0]).name and argv[1:2] == ["install"]:
                    found.append(argv)
    return found


def apt_packages(stage: Stage) -> set[str]:
    packages: set[str] = set()
    for run in stage.runs():
        for argv in shell_commands(run):
            if argv[:2] == ["apt-get", "install"]:
                packages |= {a.split("=")[0] for a in argv[2:] if not a.startswith("-")}
    return packages


def install_targets(argv: list[str]) -> list[str]:
    """pip install's requirement arguments: neither options nor their values."""
    targets, skip = [], False
    for arg in argv[2:]:
        if skip:
            skip = False
        elif arg in {"--index-url", "-i", "--extra-index-url", "-c", "-r", "--constraint"}:
            skip = True
        elif not arg.startswith("-"):
            targets.append(arg)
    return targets


def pyproject_pin(extra: str, package: str) -> str:
    for requirement in PYPROJECT["project"]["optional-dependencies"][extra]:
        name, sep, version = requirement.partition("==")
        if name.strip() == package and sep:
            return version.strip()
    raise AssertionError(f"pyproject.toml pins no {package} in [{extra}]")


@pytest.fixture(scope="module", params=[TRAINER, OPERATOR], ids=["trainer", "operator"])
def image(request: pytest.FixtureRequest) -> list[Stage]:
    return stages(request.param)


@pytest.fixture(scope="module")
def trainer() -> list[Stage]:
    return stages(TRAINER)


@pytest.fixture(scope="module")
def operator_image() -> list[Stage]:
    return stages(OPERATOR)


def test_every_base_is_an_exact_tag_with_a_digest_or_an_earlier_stage(image: list[Stage]):
    seen: set[str] = set()
    external = 0
    for stage in image:
        if stage.base not in seen:
            match = PINNED.match(stage.base)
            assert match, f"FROM {stage.base}: pin name:tag@sha256:<digest>"
            tag = match["tag"]
            assert "latest" not in tag, stage.base
            assert re.search(r"\d+\.\d+\.\d+", tag), f"{stage.base}: tag is not an exact version"
            external += 1
        if stage.name:
            seen.add(stage.name)
    # One pinned base per image, shared by its stages, so a bump changes one line.
    assert external == 1


def test_final_stage_runs_as_the_pods_numeric_non_root_user(image: list[Stage]):
    users = image[-1].all("USER")
    assert users, "the final stage sets no USER: the image would run as root"
    user = users[-1].value[0]
    assert re.fullmatch(r"\d+:\d+", user), f"USER {user}: runAsNonRoot needs numeric uid:gid"
    uid, gid = (int(part) for part in user.split(":"))
    assert uid != 0 and gid != 0
    run_as = Settings().run_as_user  # the pods' runAsUser and runAsGroup
    assert (uid, gid) == (run_as, run_as)


def test_entrypoints_are_exec_form_finetune_commands(
    trainer: list[Stage], operator_image: list[Stage]
):
    for stage_list, expected in (
        (trainer, ("finetune", "train")),
        (operator_image, ("finetune", "operator")),
    ):
        entrypoints = stage_list[-1].all("ENTRYPOINT")
        assert entrypoints, f"no ENTRYPOINT, expected {expected}"
        assert entrypoints[-1].json, "ENTRYPOINT in shell form: signals would go to /bin/sh"
        assert entrypoints[-1].value == expected


def test_trainer_default_arguments_are_the_config_the_operator_mounts(trainer: list[Stage]):
    cmd = trainer[-1].all("CMD")[-1]
    assert cmd.json
    assert cmd.value == ("--config", f"{names.CONFIG_DIR}/{names.CONFIG_KEY}")


def test_exposed_ports_are_the_default_ports(trainer: list[Stage], operator_image: list[Stage]):
    def exposed(stage_list: list[Stage]) -> set[int]:
        return {int(p.split("/")[0]) for c in stage_list[-1].all("EXPOSE") for p in c.value}

    assert exposed(trainer) == {TrainingSpec().metrics_port}
    settings = Settings()
    assert exposed(operator_image) == {settings.metrics_port, settings.health_port}


def test_trainer_cache_environment_matches_the_pods(trainer: list[Stage]):
    env = {}
    for command in trainer[-1].all("ENV"):  # value: (key1, value1, key2, value2, ...)
        env.update(zip(command.value[::2], command.value[1::2], strict=True))
    assert env["XDG_CACHE_HOME"] == names.CACHE_DIR
    assert env["FINETUNE_CACHE_DIR"] == names.CACHE_DIR
    assert env["HF_HOME"] == f"{names.CACHE_DIR}/huggingface"
    assert env["PATH"].split(":")[0] == "/opt/venv/bin"


def test_every_pip_install_leaves_no_cache(image: list[Stage]):
    installs = pip_installs(image)
    assert installs
    for argv in installs:
        assert "--no-cache-dir" in argv, " ".join(argv)


def test_apt_installs_clean_their_lists_in_the_same_run(image: list[Stage]):
    for stage in image:
        for run in stage.runs():
            if "apt-get install" not in run:
                continue
            assert "--no-install-recommends" in run, run
            update = run.index("apt-get update")
            install = run.index("apt-get install")
            clean = run.index("rm -rf /var/lib/apt/lists/*")
            assert update < install < clean, run


def test_trainer_pins_torch_like_pyproject_from_the_matching_cuda_index(trainer: list[Stage]):
    pinned = pyproject_pin("trainer", "torch")
    installs = pip_installs(trainer)
    torch = [argv for argv in installs if any(t.startswith("torch") for t in install_targets(argv))]
    assert len(torch) == 1, torch
    assert install_targets(torch[0]) == [f"torch=={pinned}"]
    index = torch[0][torch[0].index("--index-url") + 1]
    cuda = re.search(r"/cu(\d+)$", index)
    assert cuda, f"torch from {index}: not a CUDA wheel index"
    # cu130 pairs with a CUDA 13.0.x base image.
    major, minor = re.search(r":(\d+)\.(\d+)\.\d+", trainer[0].base).groups()
    assert cuda[1] == f"{major}{minor}", (index, trainer[0].base)
    # torch comes before the project, so the project's own pin finds the CUDA build.
    project = [i for i, argv in enumerate(installs) if ".[trainer]" in install_targets(argv)]
    assert project and installs.index(torch[0]) < project[0]


def test_each_image_installs_only_its_own_extra(trainer: list[Stage], operator_image: list[Stage]):
    def projects(stage_list: list[Stage]) -> list[str]:
        return [
            t
            for argv in pip_installs(stage_list)
            for t in install_targets(argv)
            if t.startswith(".")
        ]

    assert projects(trainer) == [".[trainer]"]
    assert projects(operator_image) == [".[operator]"]


def test_the_operator_image_has_nothing_of_the_training_stack():
    text = OPERATOR.read_text().lower()
    for word in ("torch", "cuda", "nvidia", "transformers", "peft", "[trainer]"):
        assert word not in text, word
    # ... and neither does what it installs: the core and the operator extra.
    requirements = (
        PYPROJECT["project"]["dependencies"]
        + PYPROJECT["project"]["optional-dependencies"]["operator"]
    )
    heavy = {"torch", "transformers", "peft", "accelerate", "bitsandbytes"}
    assert not [r for r in requirements if re.split(r"[=<>\[ ;]", r)[0].lower() in heavy]


def test_trainer_builds_in_a_builder_and_ships_only_the_venv(trainer: list[Stage]):
    assert len(trainer) >= 3, "expected a pinned base, a builder and a runtime stage"
    final = trainer[-1]
    builders = [s for s in trainer[:-1] if s.name and pip_installs([s])]
    assert builders, "no builder stage installs the project"
    assert not pip_installs([final]), "pip install in the final stage"
    copies = [c for c in final.all("COPY") if any(f.startswith("--from=") for f in c.flags)]
    assert [(c.flags, c.value) for c in copies] == [
        ((f"--from={builders[0].name}",), ("/opt/venv", "/opt/venv"))
    ]


def test_final_stages_install_no_build_tools(image: list[Stage]):
    packages = apt_packages(image[-1])
    assert not packages & BUILD_TOOLS, packages & BUILD_TOOLS
    assert not [p for p in packages if p.endswith("-dev")], packages


def test_copied_sources_exist_and_pass_the_dockerignore(image: list[Stage]):
    patterns = dockerignore()
    sources = [
        src
        for stage in image
        for c in stage.all("COPY")
        if not any(f.startswith("--from=") for f in c.flags)
        for src in c.value[:-1]
    ]
    assert sources
    for src in sources:
        path = ROOT / src
        assert path.exists(), src
        files = [path] if path.is_file() else [p for p in path.rglob("*.py") if p.is_file()]
        assert files, src
        for file in files:
            rel = file.relative_to(ROOT).as_posix()
            if "__pycache__" not in rel:
                assert not ignored(rel, patterns), f"{rel} is needed but .dockerignore drops it"


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        "models/SmolLM2-135M-Instruct/model.safetensors",
        "artifacts/quickstart/manifest.json",
        ".git/HEAD",
        "tests/unit/test_dockerfiles.py",
        "operator/finetune_operator/__pycache__/cli.cpython-312.pyc",
        ".mypy_cache/3.11/cache.db",
    ],
)
def test_dockerignore_keeps_heavy_and_local_files_out_of_the_context(path: str):
    patterns = dockerignore()
    assert ignored(path, patterns)


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def glob_regex(glob: str) -> re.Pattern[str]:
    """Go's filepath.Match plus ``**``, as Docker reads .dockerignore patterns."""
    out, i = "", 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif glob.startswith("**", i):
            out, i = out + ".*", i + 2
        elif glob[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif glob[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(glob[i]), i + 1
    return re.compile(out)


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = glob_regex(pattern.removeprefix("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            result = not negate
    return result
