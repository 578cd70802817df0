"""Reads the deployment files the way Docker and Compose read them, and states their rules.

No Docker engine runs on the development machines or in CI, so the compose files and the image
are checked, not started. Each rule returns the problems it finds (an empty list when the files
keep it), so a test can show both that the real files pass and that a broken file is caught.
"""

from __future__ import annotations

import copy
import io
import json
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from docker.utils.build import exclude_paths
from dockerfile_parse import DockerfileParser
from dotenv import dotenv_values

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE_FILES = ("compose.yaml", "compose.scale.yaml")
DOCKERFILE = "docker/Dockerfile"
RUNTIME_TARGET = "runtime"

Doc = dict[str, Any]
Rule = Callable[["Compose", "Image"], list[str]]


# --- Compose: schema, interpolation -------------------------------------------------------

COMPOSE_SPEC = Path(__file__).parent / "compose-spec" / "compose-spec.json"


def compose_schema() -> dict[str, Any]:
    """The Compose Specification's JSON schema, vendored with its Apache-2.0 licence (see
    tests/deploy/compose-spec/SOURCE.md)."""
    schema: dict[str, Any] = json.loads(COMPOSE_SPEC.read_text(encoding="utf-8"))
    return schema


def schema_errors(doc: Any) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


class MissingVariable(KeyError):
    """A ``${VAR:?message}`` whose variable is unset, as ``docker compose`` would refuse it."""


# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?err}, ${NAME?err}, ${NAME:+alt}, ${NAME+alt},
# $NAME and the escape $$ (Compose Specification, "Interpolation").
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*)|(?P<invalid>))"
)


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Substitutes variables in every string value (keys stay as written, as in Compose)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["invalid"] is not None:
            raise ValueError(f"invalid interpolation in {value!r}")
        name = match["braced"] or match["named"]
        op, arg = match["op"] or "", match["arg"] or ""
        current = env.get(name)
        unset_or_empty = not current if op.startswith(":") else current is None
        if op.endswith("-"):
            return arg if unset_or_empty else str(current)
        if op.endswith("?"):
            if unset_or_empty:
                raise MissingVariable(f"{name}: {arg}")
            return str(current)
        if op.endswith("+"):
            return "" if unset_or_empty else arg
        return current or ""

    return _VARIABLE.sub(substitute, value)


def required_variables(text: str) -> set[str]:
    """Variables a compose file refuses to run without (``${NAME:?...}`` / ``${NAME?...}``)."""
    return {m["braced"] for m in _VARIABLE.finditer(text) if m["op"] and m["op"].endswith("?")}


def example_env(demo: bool = False) -> dict[str, str]:
    """docker/.env.example as an operator fills it in: every blank secret set to something.
    ``demo``: with its commented-out offline-demo lines switched on as well."""
    text = (DOCKER / ".env.example").read_text(encoding="utf-8")
    if demo:
        text = re.sub(r"(?m)^# ((?:COMPOSE_PROFILES|LONGDOC_MODEL_BASE_URL)=)", r"\1", text)
    values = dotenv_values(stream=io.StringIO(text))
    return {k: (v or f"test-{k.lower()}") for k, v in values.items()}


def parse_duration(text: object) -> float:
    """Compose durations (Go syntax: 1m30s, 300s, 2h, 500ms) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|ns|m|s)", str(text))
    if not parts or "".join(n + u for n, u in parts) != str(text):
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


@dataclass
class Compose:
    """One compose file: its raw document (as validated) and the one Compose would run."""

    name: str
    raw: Doc
    env: dict[str, str]
    doc: Doc = field(init=False)

    def __post_init__(self) -> None:
        self.doc = interpolate(self.raw, self.env)

    @classmethod
    def load(cls, name: str, text: str, env: Mapping[str, str] | None = None) -> Compose:
        """``env`` defaults to the least an operator must set: the required secrets."""
        if env is None:
            env = {var: f"test-{var.lower()}" for var in required_variables(text)}
        return cls(name, yaml.safe_load(text), dict(env))

    @property
    def services(self) -> dict[str, Doc]:
        services: dict[str, Doc] = self.doc.get("services") or {}
        return services

    def dependencies(self, service: str) -> dict[str, str]:
        """Dependency name -> condition (the short list form means ``service_started``)."""
        deps = self.services[service].get("depends_on") or {}
        if isinstance(deps, list):
            return {d: "service_started" for d in deps}
        return {d: (spec or {}).get("condition", "service_started") for d, spec in deps.items()}

    def one_shots(self) -> set[str]:
        """Services something waits for to *finish*: everything else runs for good."""
        return {d for s in self.services for d, cond in self.dependencies(s).items()
                if cond == "service_completed_successfully"}

    def long_running(self) -> list[str]:
        return [s for s in self.services if s not in self.one_shots()]

    def app_services(self) -> list[str]:
        """The longdoc processes: services built from docker/Dockerfile's production target."""
        return [s for s, spec in self.services.items() if _builds_runtime(spec)]

    def command(self, service: str) -> list[str]:
        command = self.services[service].get("command") or []
        return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]

    def environment(self, service: str) -> dict[str, str]:
        env = self.services[service].get("environment") or {}
        if isinstance(env, list):
            return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
        return {k: "" if v is None else str(v) for k, v in env.items()}

    def volume_targets(self, service: str) -> list[str]:
        targets = []
        for volume in self.services[service].get("volumes") or []:
            if isinstance(volume, dict):
                targets.append(str(volume["target"]))
            else:
                parts = str(volume).split(":")
                targets.append(parts[1] if len(parts) > 1 else parts[0])
        return targets

    def replicas(self, service: str) -> int:
        spec = self.services[service]
        replicas = (spec.get("deploy") or {}).get("replicas", spec.get("scale", 1))
        return int(replicas or 1)


def _builds_runtime(spec: Doc) -> bool:
    build = spec.get("build")
    return (isinstance(build, dict) and str(build.get("dockerfile", "")).endswith(DOCKERFILE)
            and build.get("target") == RUNTIME_TARGET)


def load_compose(name: str, env: Mapping[str, str] | None = None) -> Compose:
    return Compose.load(name, (DOCKER / name).read_text(encoding="utf-8"), env)


def merged(base: Doc, patch: Doc) -> Doc:
    """``base`` with ``patch`` laid over it; a ``None`` in the patch deletes the key."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# --- The image: docker/Dockerfile and .dockerignore ---------------------------------------

@dataclass
class Stage:
    name: str
    base: str  # an image reference or the name of an earlier stage
    instructions: list[tuple[str, str]]  # (INSTRUCTION, value)


@dataclass
class Image:
    """docker/Dockerfile as stages, with the facts the rules need about a target."""

    stages: list[Stage]
    args: dict[str, str]  # global ARG defaults (before the first FROM)

    @classmethod
    def parse(cls, text: str) -> Image:
        parser = DockerfileParser(fileobj=io.BytesIO(text.encode()))
        stages: list[Stage] = []
        args: dict[str, str] = {}
        for item in parser.structure:
            instruction, value = item["instruction"], item["value"].strip()
            if instruction == "COMMENT":
                continue
            if instruction == "FROM":
                words = value.split()
                ref = words[0]
                name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
                stages.append(Stage(name, _substitute(ref, args), []))
            elif not stages and instruction == "ARG":
                key, _, default = value.partition("=")
                args[key.strip()] = default.strip()
            elif stages:
                stages[-1].instructions.append((instruction, value))
        return cls(stages, args)

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage {name!r}")

    def chain(self, target: str) -> list[Stage]:
        """The stages a target is made of, its base image's stage first."""
        stage = self.stage(target)
        names = {s.name for s in self.stages}
        return (self.chain(stage.base) if stage.base in names else []) + [stage]

    def needed(self, target: str) -> set[str]:
        """Every stage or outside source a build of ``target`` reads (FROM and COPY --from)."""
        names = {s.name for s in self.stages}
        seen: set[str] = set()
        todo = [target]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            if current not in names:
                continue
            stage = self.stage(current)
            todo.append(stage.base)
            for instruction, value in stage.instructions:
                if instruction in ("COPY", "ADD"):
                    todo += [w.split("=", 1)[1] for w in value.split() if w.startswith("--from=")]
        return seen

    def runs(self, target: str) -> list[list[str]]:
        """Shell commands of every RUN in the target's chain, split at && and ;."""
        commands: list[list[str]] = []
        for stage in self.chain(target):
            for instruction, value in stage.instructions:
                if instruction != "RUN":
                    continue
                words = shlex.split(value, comments=False)
                words = [w for w in words if not w.startswith("--mount=")]
                current: list[str] = []
                for word in words:
                    if word in ("&&", ";", "||"):
                        commands.append(current)
                        current = []
                    else:
                        current.append(word)
                commands.append(current)
        return [c for c in commands if c]

    def last(self, target: str, instruction: str) -> str | None:
        value = None
        for stage in self.chain(target):
            for name, v in stage.instructions:
                if name == instruction:
                    value = v
        return value

    def user(self, target: str) -> str:
        """The user the target runs as, by name when a RUN created it (USER may be a uid)."""
        user = (self.last(target, "USER") or "root").split(":")[0]
        by_uid = {uid: name for name, uid in self.created_users(target).items() if uid}
        return by_uid.get(user, "root" if user == "0" else user)

    def created_users(self, target: str) -> dict[str, str | None]:
        """Users a RUN creates, with the uid it gives them (``--uid``/``-u``) if any."""
        return {c[-1]: _option(c, "--uid") or _option(c, "-u") for c in self.runs(target)
                if c[0] in ("useradd", "adduser")}

    def owned_dirs(self, target: str) -> dict[str, str]:
        """Directory -> owner, for directories a RUN creates and hands to a user."""
        created: set[str] = set()
        owners: dict[str, str] = {}
        for command in self.runs(target):
            program, rest = command[0], command[1:]
            if program == "install" and "-d" in rest:
                owner = _option(rest, "-o") or "root"
                for path in _operands(rest, with_value=("-o", "-g", "-m")):
                    created.add(path)
                    owners[path] = owner
            elif program == "mkdir":
                created.update(_operands(rest, with_value=("-m",)))
            elif program == "chown":
                operands = _operands(rest, with_value=())
                owner = operands[0].split(":")[0]
                for path in operands[1:]:
                    owners[path] = owner
        return {path: owner for path, owner in owners.items() if path in created}


def _substitute(ref: str, args: Mapping[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m[1], m[0]), ref)


def _option(words: list[str], flag: str) -> str | None:
    for i, word in enumerate(words[:-1]):
        if word == flag:
            return words[i + 1]
    return None


def _operands(words: list[str], with_value: tuple[str, ...]) -> list[str]:
    operands, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word in with_value:
            skip = True
        elif not word.startswith("-"):
            operands.append(word)
    return operands


def load_image() -> Image:
    return Image.parse((REPO / DOCKERFILE).read_text(encoding="utf-8"))


def dockerignore_patterns(text: str) -> list[str]:
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def build_context(root: Path, patterns: Iterable[str]) -> set[str]:
    """The files ``docker build`` would send from ``root`` (Docker's own matcher)."""
    paths: set[str] = exclude_paths(str(root), list(patterns), dockerfile=DOCKERFILE)
    return {p for p in paths if (root / p).is_file()}


# --- Rules ---------------------------------------------------------------------------------

def rule_restart_and_health(compose: Compose, _: Image) -> list[str]:
    """Long-running services come back by themselves and say when they are ready (or wait for
    something that does); one-shots must not be restarted after they succeed."""
    problems = []
    one_shots = compose.one_shots()
    for name, spec in compose.services.items():
        restart = str(spec.get("restart", "no"))
        if name in one_shots:
            if restart in ("always", "unless-stopped"):
                problems.append(f"{name}: a one-shot with restart: {restart} would run forever")
            continue
        if restart not in ("always", "unless-stopped"):
            problems.append(f"{name}: long-running without restart: unless-stopped")
        health = spec.get("healthcheck") or {}
        has_check = bool(health.get("test")) and not health.get("disable") and \
            health.get("test") != ["NONE"]
        waits_healthy = "service_healthy" in compose.dependencies(name).values()
        if not (has_check or waits_healthy):
            problems.append(f"{name}: neither a health check nor a healthy dependency")
    return problems


def rule_migrate_first(compose: Compose, _: Image) -> list[str]:
    """No longdoc process starts before the schema exists, and the migration waits for a
    database that accepts connections."""
    if "migrate" not in compose.services:
        return ["migrate: missing"]
    problems = []
    if compose.command("migrate")[-1:] != ["migrate"]:
        problems.append("migrate: does not run `longdoc migrate`")
    if "migrate" not in compose.app_services():
        problems.append("migrate: not built from the production image")
    if compose.dependencies("migrate").get("postgres") != "service_healthy":
        problems.append("migrate: does not wait for a healthy postgres")
    for name in compose.app_services():
        if name != "migrate" and \
                compose.dependencies(name).get("migrate") != "service_completed_successfully":
            problems.append(f"{name}: may start before migrate has completed")
    return problems


def rule_volumes_owned(compose: Compose, image: Image) -> list[str]:
    """Every mount point of a longdoc service exists in the image and belongs to its user."""
    problems = []
    user = image.user(RUNTIME_TARGET)
    owned = image.owned_dirs(RUNTIME_TARGET)
    for name in compose.app_services():
        for target in compose.volume_targets(name):
            if owned.get(target) != user:
                problems.append(f"{name}: {target} is not created and owned by {user!r} "
                                f"in {DOCKERFILE} (a new volume there would belong to root)")
    return problems


def rule_default_model(compose: Compose, _: Image) -> list[str]:
    """Without configuration every longdoc process uses the Opper preset (OpenAI shut
    gpt-4.1-nano down on 2026-10-23) and one variable picks the model."""
    problems = []
    for name in compose.app_services():
        env = compose.environment(name)
        if env.get("LONGDOC_MODEL_PRESET") != "opper":
            problems.append(f"{name}: default model preset is "
                            f"{env.get('LONGDOC_MODEL_PRESET')!r}, not 'opper'")
        if env.get("LONGDOC_MODEL") != "gpt-4.1-nano":
            problems.append(f"{name}: LONGDOC_MODEL does not default to gpt-4.1-nano")
    return problems


def rule_workers_drain(compose: Compose, _: Image) -> list[str]:
    """SIGTERM lets a worker finish what it runs: the grace period must cover it."""
    problems = []
    for name in compose.app_services():
        if "worker" in compose.command(name):
            grace = parse_duration(compose.services[name].get("stop_grace_period", "10s"))
            if grace < 60:
                problems.append(f"{name}: stop_grace_period {grace:.0f} s < 60 s")
    return problems


def rule_one_beat(compose: Compose, _: Image) -> list[str]:
    """Two schedulers would send every periodic task twice."""
    beats = [(s, compose.replicas(s)) for s in compose.app_services()
             if "beat" in compose.command(s)]
    count = sum(n for _, n in beats)
    return [] if count == 1 else [f"beat: {count} schedulers ({beats})"]


def rule_init(compose: Compose, _: Image) -> list[str]:
    """A proper PID 1 for every longdoc process (signals forwarded, children reaped)."""
    return [f"{name}: no init: true" for name in compose.app_services()
            if compose.services[name].get("init") is not True]


def rule_images_pinned(compose: Compose, _: Image) -> list[str]:
    """Pulled images are exact versions: a floating tag changes what runs without a commit."""
    problems = []
    for name, spec in compose.services.items():
        if "build" in spec or "image" not in spec:
            continue
        ref = str(spec["image"])
        if "@sha256:" in ref:
            continue
        tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else ""
        if not re.match(r"^(v?\d+\.\d+[\w.-]*|RELEASE\.[\w.-]+)$", tag):
            problems.append(f"{name}: image {ref!r} is not pinned to an exact version")
    return problems


def rule_paths_exist(compose: Compose, _: Image) -> list[str]:
    """Build contexts, Dockerfiles and bind-mounted files are where the file says."""
    problems = []
    for name, spec in compose.services.items():
        build = spec.get("build")
        if isinstance(build, dict):
            context = DOCKER / str(build.get("context", "."))
            if not (context / str(build.get("dockerfile", "Dockerfile"))).is_file():
                problems.append(f"{name}: no Dockerfile at {build.get('dockerfile')}")
            for extra, path in (build.get("additional_contexts") or {}).items():
                if not (DOCKER / str(path)).is_dir():
                    problems.append(f"{name}: build context {extra} ({path}) does not exist")
        for volume in spec.get("volumes") or []:
            source = str(volume["source"] if isinstance(volume, dict) else volume.split(":")[0])
            if source.startswith((".", "/")) and not (DOCKER / source).exists():
                problems.append(f"{name}: bind mount source {source} does not exist")
    return problems


COMPOSE_RULES: dict[str, Rule] = {
    "restart and health": rule_restart_and_health,
    "migrate first": rule_migrate_first,
    "volumes owned by the image's user": rule_volumes_owned,
    "default model preset": rule_default_model,
    "workers drain": rule_workers_drain,
    "one beat": rule_one_beat,
    "init process": rule_init,
    "images pinned": rule_images_pinned,
    "paths exist": rule_paths_exist,
}


def image_problems(image: Image) -> list[str]:
    """The production target: pinned base, a non-root user that exists, an init process, and
    nothing from the sandbox."""
    problems = []
    for stage in image.stages:
        if stage.base in {s.name for s in image.stages}:
            continue
        if not re.match(r"^[\w./-]+(:\d+\.\d+\.\d+[\w.-]*|@sha256:[0-9a-f]{64})$", stage.base):
            problems.append(f"stage {stage.name}: base image {stage.base!r} is not pinned")
    user = image.user(RUNTIME_TARGET)
    if user == "root":
        problems.append("runtime: runs as root")
    elif user not in image.created_users(RUNTIME_TARGET):
        problems.append(f"runtime: USER {user} is never created")
    entrypoint = image.last(RUNTIME_TARGET, "ENTRYPOINT") or ""
    if "tini" not in entrypoint:
        problems.append("runtime: no init process as ENTRYPOINT")
    if "sandbox_src" in image.needed(RUNTIME_TARGET):
        problems.append("runtime: built from the sandbox's sources")
    if image.stages[-1].name != RUNTIME_TARGET:
        problems.append(f"the last stage (what a plain docker build makes) is "
                        f"{image.stages[-1].name}, not {RUNTIME_TARGET}")
    return problems


# Paths the production build context must leave out, and ones it must carry.
CONTEXT_EXCLUDED = ("service/sandbox/", "tests/", ".venv/", ".git/", "docs/", "bench/",
                    ".longdoc/", "docker/.env", ".env")
CONTEXT_INCLUDED = ("pyproject.toml", "README.md", "service/cli.py", "service/api/app.py",
                    "schemas/errors.py", "workers/tasks.py")


def context_problems(context: set[str]) -> list[str]:
    problems = [f"build context carries {path}" for path in sorted(context)
                if any(path == p or path.startswith(p) for p in CONTEXT_EXCLUDED if p.endswith("/"))
                or path in CONTEXT_EXCLUDED]
    problems += [f"build context lacks {path}" for path in CONTEXT_INCLUDED if path not in context]
    return problems
