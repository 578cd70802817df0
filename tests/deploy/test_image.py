"""docker/Dockerfile and .dockerignore: the production image is pinned, runs as a user that
owns its data directory, has an init process, and carries neither the sandbox nor anything but
the packages. Read, not built (no Docker engine here); each rule is shown to catch a break."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.checks import (
    CONTEXT_EXCLUDED,
    CONTEXT_INCLUDED,
    DOCKERFILE,
    REPO,
    RUNTIME_TARGET,
    Image,
    build_context,
    context_problems,
    dockerignore_patterns,
    image_problems,
    load_image,
)


def _dockerfile() -> str:
    return (REPO / DOCKERFILE).read_text(encoding="utf-8")


def _dockerignore() -> list[str]:
    return dockerignore_patterns((REPO / ".dockerignore").read_text(encoding="utf-8"))


def test_production_image_keeps_every_rule() -> None:
    assert image_problems(load_image()) == []


def test_data_directory_exists_and_belongs_to_the_runtime_user() -> None:
    image = load_image()
    user = image.user(RUNTIME_TARGET)
    assert user == "longdoc"
    assert image.owned_dirs(RUNTIME_TARGET)["/data"] == user
    # The process looks for its data where the volume is mounted.
    env = image.last(RUNTIME_TARGET, "ENV") or ""
    assert "LONGDOC_DATA_DIR=/data" in env


def test_sandbox_target_adds_the_sandbox_and_production_does_not() -> None:
    image = load_image()
    assert "sandbox_src" in image.needed("sandbox")
    assert "sandbox_src" not in image.needed(RUNTIME_TARGET)


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("ARG PYTHON_IMAGE=python:3.11.16-slim-bookworm", "ARG PYTHON_IMAGE=python:3.11-slim",
     "stage build: base image 'python:3.11-slim' is not pinned"),
    ("USER 10001:10001", "USER root", "runtime: runs as root"),
    ("USER 10001:10001", "USER 0", "runtime: runs as root"),
    ("USER 10001:10001", "USER 10002", "runtime: USER 10002 is never created"),
    ('ENTRYPOINT ["/usr/bin/tini", "-s", "--"]', "", "runtime: no init process"),
    ("COPY --from=build /opt/longdoc /opt/longdoc\n", "COPY --from=build-sandbox /opt/longdoc /opt/longdoc\n",
     "runtime: built from the sandbox's sources"),
], ids=["floating base", "root", "uid 0", "user never created", "no init", "sandbox in production"])
def test_image_rule_catches_broken_dockerfile(old: str, new: str, expected: str) -> None:
    text = _dockerfile()
    assert old in text
    problems = image_problems(Image.parse(text.replace(old, new)))
    assert any(p.startswith(expected) for p in problems), problems


def test_image_rule_catches_a_stage_after_runtime() -> None:
    # `docker build` without --target makes the last stage: it must be the production one.
    problems = image_problems(Image.parse(_dockerfile() + "FROM sandbox AS debug\n"))
    assert "the last stage (what a plain docker build makes) is debug, not runtime" in problems


@pytest.mark.parametrize(("old", "new"), [
    ("install -d -o longdoc -g longdoc -m 0750 /data", "true"),
    ("install -d -o longdoc -g longdoc -m 0750 /data", "install -d /data"),
], ids=["never created", "created by root"])
def test_ownership_rule_catches_data_dir_not_owned(old: str, new: str) -> None:
    image = Image.parse(_dockerfile().replace(old, new))
    assert image.owned_dirs(RUNTIME_TARGET).get("/data") != image.user(RUNTIME_TARGET)


def test_ownership_reads_mkdir_and_chown_too() -> None:
    text = _dockerfile().replace("install -d -o longdoc -g longdoc -m 0750 /data",
                                 "mkdir -p /data /cache && chown -R longdoc:longdoc /data")
    assert Image.parse(text).owned_dirs(RUNTIME_TARGET) == {"/data": "longdoc"}


def test_build_context_of_this_repository_is_the_packages_only() -> None:
    context = build_context(REPO, _dockerignore())
    assert context_problems(context) == []
    assert not [p for p in context if p.startswith("service/sandbox")]


def _tree(root: Path) -> Path:
    """A checkout with everything the context must leave out, secrets and data included."""
    for path in [*CONTEXT_EXCLUDED, *CONTEXT_INCLUDED, "service/sandbox/app.py", "longdoc/client.py"]:
        file = root / (path + "x.py" if path.endswith("/") else path)
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text("x")
    return root


def test_build_context_leaves_out_secrets_data_tests_and_the_sandbox(tmp_path: Path) -> None:
    context = build_context(_tree(tmp_path), _dockerignore())
    assert context_problems(context) == []
    assert "longdoc/client.py" in context


@pytest.mark.parametrize(("drop", "carried"), [
    ("service/sandbox", "service/sandbox/app.py"),
    ("*", ".env"),
])
def test_context_rule_catches_broken_dockerignore(tmp_path: Path, drop: str, carried: str) -> None:
    patterns = [p for p in _dockerignore() if p != drop]
    problems = context_problems(build_context(_tree(tmp_path), patterns))
    assert f"build context carries {carried}" in problems
