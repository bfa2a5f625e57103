"""The manifest: content hashes of every input of one capture image, and the rebuild decision.

Rebuilds are decided by content, not by mtimes: touching a file rebuilds
nothing, changing a byte rebuilds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kdumpd.config.kdumpconf import KdumpConfig
from kdumpd.config.sysconfig import variables_files
from kdumpd.contract.plan import CapturePlan
from kdumpd.image.agent import TARGET_PYTHON, agent_sources
from kdumpd.image.needs import image_needs
from kdumpd.image.programs import (
    collector_program,
    dracut_version,
    module_files,
    resolve_program,
    user_programs,
    vmcore_dmesg_program,
)
from kdumpd.image.render import default_template_dir, template_files
from kdumpd.paths import Paths


@dataclass(frozen=True)
class Manifest:
    """sha256 of every input of one capture image, keyed by a human name of the input."""

    kernel_release: str
    inputs: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        data = {"kernel_release": self.kernel_release, "inputs": dict(sorted(self.inputs.items()))}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        return cls(kernel_release=str(data["kernel_release"]), inputs=dict(data["inputs"]))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    return digest.hexdigest()


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogateescape")).hexdigest()


def image_path(paths: Paths, kernel_release: str) -> Path:
    return paths.state_dir / f"initramfs-{kernel_release}kdump.img"


def manifest_path(paths: Paths, kernel_release: str) -> Path:
    return paths.state_dir / f"initramfs-{kernel_release}kdump.manifest.json"


def compute_manifest(
    paths: Paths,
    config: KdumpConfig,
    plan: CapturePlan,
    *,
    kernel_image: Path,
    template_dir: Path | None = None,
    dracut_version_text: str | None = None,
    agent_package: Path | None = None,
) -> Manifest:
    """Hash every input of the image for ``plan``: files by content, the plan by its JSON.

    Inputs: kdump.conf, the variables file, the plan, the kernel image, every
    template, the agent's sources, the collector and vmcore-dmesg binaries,
    the interpreter, hooks, extra_bins, extra_modules' .ko files (with their
    dependencies) and the dracut version.
    """
    templates = template_dir if template_dir is not None else default_template_dir(paths)
    inputs: dict[str, str] = {
        "kdump.conf": _sha256_file(paths.kdump_conf),
        "capture plan": _sha256_text(plan.to_json()),
        f"kernel {kernel_image.name}": _sha256_file(kernel_image),
        "dracut version": _sha256_text(
            dracut_version_text if dracut_version_text is not None else dracut_version()
        ),
    }
    for location, shown in variables_files(paths)[:1]:
        inputs[shown] = _sha256_file(location)
    for template in template_files(templates):
        inputs[f"template {template.name}"] = _sha256_file(template)
    for name, path in agent_sources(agent_package).items():
        inputs[f"agent {name}"] = _sha256_file(path)
    programs = {
        "core_collector": collector_program(paths, plan, config),
        "vmcore-dmesg": vmcore_dmesg_program(paths),
        "python": TARGET_PYTHON,
    }
    for label, program in programs.items():
        inputs[f"{label} {program}"] = _sha256_file(resolve_program(paths, program))
    for hook in user_programs(plan, config):
        inputs[f"program {hook}"] = _sha256_file(paths.under_root(hook))
    for label, location in image_needs(paths, plan).inputs.items():
        inputs[label] = _sha256_file(location)
    found, missing = module_files(paths, plan.kernel_release, config.extra_modules)
    for name, files in found.items():
        for ko in files:
            inputs[f"module {name}: {ko.name}"] = _sha256_file(ko)
    for name in missing:
        inputs[f"module {name}"] = "missing"
    return Manifest(kernel_release=plan.kernel_release, inputs=inputs)


def _describe(name: str, old: Mapping[str, str], new: Mapping[str, str]) -> str | None:
    if name not in old:
        return f"{name} added"
    if name not in new:
        return f"{name} removed"
    if old[name] != new[name]:
        return f"{name} changed"
    return None


def changed_inputs(old: Manifest, new: Manifest) -> list[str]:
    """One phrase per input that differs ("kdump.conf changed", "hook ... added")."""
    names = sorted(set(old.inputs) | set(new.inputs))
    phrases = [_describe(n, old.inputs, new.inputs) for n in names]
    return [p for p in phrases if p]


def rebuild_reason(paths: Paths, config: KdumpConfig, new_manifest: Manifest) -> str | None:
    """Why the image for ``new_manifest.kernel_release`` must be rebuilt; None if it need not.

    Order as kdump-utils (§3.11): force_no_rebuild keeps an existing image,
    force_rebuild always rebuilds, a missing image is built, then inputs are
    compared by content hash.
    """
    image = image_path(paths, new_manifest.kernel_release)
    exists = image.is_file() and image.stat().st_size > 0
    if config.force_no_rebuild and exists:
        return None
    if config.force_rebuild:
        return f"Force rebuild {image}"
    if not exists:
        return "No kdump initial ramdisk found."
    try:
        old = Manifest.from_json(
            manifest_path(paths, new_manifest.kernel_release).read_text(encoding="utf-8")
        )
    except (OSError, ValueError, KeyError, TypeError):
        return f"No record of the inputs of {image}; rebuilding to know what it holds."
    changes = changed_inputs(old, new_manifest)
    if not changes:
        return None
    return "Detected change(s): " + ", ".join(changes)
