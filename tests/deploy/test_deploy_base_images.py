"""Base images pinned by digest (issue 22, Builds): the Dockerfile's FROM images, the Compose
databases, the Kustomize and Helm workloads and CloudNativePG's database image — everything not
built from this repository. A tag (``postgres:16``) can be moved to other content; a digest
cannot. Each check is shown failing on a tag."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_files import (
    COMPOSE,
    DOCKERFILE,
    helm_render,
    k8s_copy_with_secrets,
    kustomize,
)
from hardening_rules import manifest_images, unpinned_images


def dockerfile_images(text: str) -> list[tuple[str, str]]:
    """FROM images with their ARG defaults substituted; build stages and scratch left out."""
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.MULTILINE))
    stages: set[str] = set()
    out = []
    for image, stage in re.findall(r"^FROM (\S+)(?: AS (\S+))?", text, re.MULTILINE):
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), image)
        if resolved != "scratch" and resolved not in stages:
            out.append((f"FROM {image}", resolved))
        if stage:
            stages.add(stage)
    return out


def compose_images(compose: dict[str, Any]) -> list[tuple[str, str]]:
    return [(name, svc["image"]) for name, svc in compose["services"].items() if "image" in svc]


def test_dockerfile_base_image_is_pinned_by_digest() -> None:
    text = DOCKERFILE.read_text()
    images = dockerfile_images(text)
    assert [i for _w, i in images] == [images[0][1]] * 2  # builder and runtime: one base image
    assert unpinned_images(images) == []
    tagged = text.replace(images[0][1], "python:3.11-slim")
    assert (
        unpinned_images(dockerfile_images(tagged))
        == ["FROM ${PYTHON_IMAGE}: python:3.11-slim is not pinned by digest"] * 2
    )


def test_compose_images_are_pinned_by_digest() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    images = compose_images(compose)
    assert {i for _w, i in images if i.startswith("postgres:")}  # the databases are checked
    assert unpinned_images(images) == []
    compose["services"]["consent-db"]["image"] = "postgres:16"
    assert unpinned_images(compose_images(compose)) == [
        "consent-db: postgres:16 is not pinned by digest"
    ]


@pytest.fixture(scope="module")
def k8s_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return k8s_copy_with_secrets(tmp_path_factory.mktemp("k8s"))


@pytest.mark.parametrize("variant", ["kustomize", "helm", "helm-local"])
def test_manifest_images_are_pinned_by_digest(variant: str, k8s_dir: Path) -> None:
    docs = {
        "kustomize": lambda: kustomize(k8s_dir / "base"),
        "helm": helm_render,
        "helm-local": lambda: helm_render({"postgres": {"mode": "statefulset"}}),
    }[variant]()
    images = manifest_images(docs)
    third_party = [i for _w, i in images if "postgres" in i]
    assert third_party, "the database images are checked"
    assert unpinned_images(images) == []


def test_the_check_fails_on_a_tagged_database_image() -> None:
    docs = helm_render()
    cluster = next(d for d in docs if d["kind"] == "Cluster")
    tagged = "ghcr.io/cloudnative-pg/postgresql:16.6"
    cluster["spec"]["imageName"] = tagged
    assert unpinned_images(manifest_images(docs)) == [
        f"{cluster['metadata']['name']}: {tagged} is not pinned by digest"
    ]


@pytest.mark.parametrize("key", ["imageName", "image"])
def test_the_chart_refuses_a_database_image_by_tag(key: str) -> None:
    import helm_python

    with pytest.raises(helm_python.HelmError):
        helm_render({"postgres": {key: "postgres:16"}})
