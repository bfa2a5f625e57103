"""The capture initramfs build: stage the agent, the plan and the rendered module, run dracut.

How the module reaches dracut: the package installs the static shim
``dracut-module/99kdumpd/module-setup.sh`` into dracut's modules.d; before each
build :func:`build` renders ``dracut-module/templates/*.j2`` into a fresh build
directory together with the plan JSON and a copy of the capture agent, and
runs dracut with ``KDUMPD_BUILD_DIR`` naming that directory.

What the image holds (memory is a feature: all of it lives in the crash
reservation): an init (kdumpd's small one, or dracut's systemd initrd when the
plan needs it: :mod:`kdumpd.image.init`), the drivers of the target device
(``--add-device``, strict host-only) and filesystem (``--add-drivers``),
python3 with exactly the stdlib files the agent imports (computed by running
the target python), makedumpfile, vmcore-dmesg, hooks and extra_bins, and
what the target kind needs (:meth:`kdumpd.targets.base.TargetKind.image_needs`).
When the target is the root filesystem (the default), python3 and its stdlib
stay out: the init (or the capture unit) starts ``kdumpd-agent.sh``, which
mounts the target and runs the root's python from it (:func:`kdumpd.image.agent.agent_root_mount`;
measured with tests/vm/bench_capture.py). The agent mounts the target itself
from the plan: no fstab entry, no ``--mount``, because a mount unit failing
would send the boot to emergency mode before the agent could choose
failure_action (dump_to_rootfs needs the agent in control), and the agent can
wait for the device with its own, reported, timeout.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdumpd import proc
from kdumpd.config.kdumpconf import KdumpConfig
from kdumpd.contract.plan import CapturePlan
from kdumpd.durable import rename_into_place, write_atomic
from kdumpd.errors import BuildError, Problem
from kdumpd.image.agent import (
    AGENT_STARTER,
    INIT_SCRIPT,
    PythonFiles,
    agent_from_fields,
    agent_import_names,
    agent_sources,
    list_python_files,
    module_names,
)
from kdumpd.image.dracut import DRACUT_TIMEOUT, dracut_argv
from kdumpd.image.init import (
    KDUMPD_INIT,
    SYSTEMD_CHOICE,
    InitChoice,
    choose_init,
    image_dracut_modules,
)
from kdumpd.image.manifest import Manifest, image_path, manifest_path
from kdumpd.image.needs import image_needs
from kdumpd.image.programs import (
    collector_program,
    find_program,
    module_files,
    user_programs,
    vmcore_dmesg_program,
)
from kdumpd.image.render import ModuleContext, default_template_dir, render_module
from kdumpd.paths import KDUMP_CONF, Paths
from kdumpd.targets.base import ImageNeeds


@dataclass(frozen=True)
class BuildResult:
    image: Path
    manifest: Manifest
    warnings: tuple[Problem, ...] = ()
    init: InitChoice = SYSTEMD_CHOICE

    def init_line(self) -> str:
        """Which init the image got, and why (a line for the build's output)."""
        if self.init.init == KDUMPD_INIT:
            return "The capture image runs kdumpd's small init (no systemd, no udev)"
        return "The capture image runs dracut's systemd initrd: " + "; ".join(self.init.reasons)


def _network_fields(init: InitChoice, needs: ImageNeeds) -> dict[str, Any]:
    """The render context's network values: only the small init brings the NIC up itself."""
    if init.init != KDUMPD_INIT:
        return {}
    fields: dict[str, Any] = {"nics": needs.nics}
    if init.network is not None:
        fields.update(
            network_mac=init.network.mac,
            network_address=init.network.address,
            network_netmask=init.network.netmask,
            network_gateway=init.network.gateway,
            network_wait_seconds=init.network.wait_seconds,
        )
    return fields


def stage(
    paths: Paths,
    config: KdumpConfig,
    plan: CapturePlan,
    *,
    needs: ImageNeeds,
    build_dir: Path,
    template_dir: Path,
    python_files: PythonFiles,
    agent_package: Path | None = None,
    init: InitChoice = SYSTEMD_CHOICE,
) -> ModuleContext:
    """Fill ``build_dir``: agent copy, plan.json, the kind's files, rendered module.

    Returns the render context.
    """
    agent_dir = build_dir / "agent"
    sources = agent_sources(agent_package)
    for relative, source in sources.items():
        target = agent_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    (build_dir / "plan.json").write_text(plan.to_json(), encoding="utf-8")
    image_files: list[str] = []
    for file in needs.files:
        if file.systemd_only and init.init == KDUMPD_INIT:
            continue
        staged = build_dir / file.name
        staged.write_bytes(file.content)
        staged.chmod(int(file.mode, 8))
        image_files += [file.name, file.image_path, file.mode]
    context = ModuleContext(
        kernel_release=plan.kernel_release,
        build_dir=str(build_dir),
        agent_files=tuple(sources),
        python_files=python_files.sources,
        python_extensions=python_files.extensions,
        collector=collector_program(paths, plan, config),
        vmcore_dmesg=vmcore_dmesg_program(paths),
        user_programs=user_programs(plan, config),
        failure_action=plan.failure_action,
        self_check_modules=("kdumpd.capture", *module_names(sources)),
        target_programs=needs.programs,
        image_files=tuple(image_files),
        start_units=needs.start_units,
        init=init.init,
        wait_devices=tuple(word for d in init.devices for word in (d.path, d.tag, d.value)),
        **_network_fields(init, needs),
        **agent_from_fields(paths, plan),
    )
    render_module(context, template_dir=template_dir, out_dir=build_dir)
    (build_dir / AGENT_STARTER).chmod(0o755)
    (build_dir / INIT_SCRIPT).chmod(0o755)
    return context


def build(
    paths: Paths,
    config: KdumpConfig,
    plan: CapturePlan,
    *,
    kernel_release: str,
    manifest: Manifest,
    extra_dracut_modules: Sequence[str] = (),
    on_line: Callable[[str], None] | None = None,
    template_dir: Path | None = None,
    agent_package: Path | None = None,
    extra_dracut_args: Sequence[str] = (),
) -> BuildResult:
    """Build the capture image for ``plan``; replace the old one only when dracut succeeded.

    ``manifest`` (from :func:`compute_manifest`) is written next to the image
    on success. Raises BuildError with dracut's last lines on failure.
    ``agent_package`` (tests) replaces the installed kdumpd package as the
    agent's source; ``extra_dracut_args`` go before the image path (tests use
    ``--no-kernel``).
    """
    templates = template_dir if template_dir is not None else default_template_dir(paths)
    image = image_path(paths, kernel_release)
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    _, missing = module_files(paths, kernel_release, config.extra_modules)
    warnings = tuple(
        Problem(KDUMP_CONF, config.lines.get("extra_modules", 0), f"Module {name} not found")
        for name in missing
    )
    needs = image_needs(paths, plan)
    init = choose_init(plan, config, dracut_modules=tuple(extra_dracut_modules))
    build_dir = Path(tempfile.mkdtemp(prefix=f"build-{kernel_release}-", dir=paths.state_dir))
    temp_image = image.with_name(image.name + ".new")
    try:
        sources = {
            k: v.read_text(encoding="utf-8") for k, v in agent_sources(agent_package).items()
        }
        python_files = list_python_files(agent_import_names(sources))
        stage(
            paths,
            config,
            plan,
            needs=needs,
            build_dir=build_dir,
            template_dir=templates,
            python_files=python_files,
            agent_package=agent_package,
            init=init,
        )
        argv = dracut_argv(
            plan,
            config,
            needs=needs,
            image=temp_image,
            kernel_release=kernel_release,
            build_dir=build_dir,
            extra_dracut_modules=image_dracut_modules(init, extra_dracut_modules),
            zstd=find_program(paths, "zstd") is not None,
            init=init.init,
        )
        if extra_dracut_args:
            argv[-2:-2] = list(extra_dracut_args)
        try:
            proc.run(
                argv,
                timeout=DRACUT_TIMEOUT,
                env={"KDUMPD_BUILD_DIR": str(build_dir)},
                on_line=on_line,
            )
        except proc.ProgramError as exc:
            raise BuildError(
                f"building the capture initramfs {image} failed; "
                "the previous image (if any) is kept"
            ) from exc
        if not temp_image.is_file() or temp_image.stat().st_size == 0:
            raise BuildError(f"dracut reported success but wrote no image at {temp_image}")
        rename_into_place(temp_image, image)
        write_atomic(manifest_path(paths, kernel_release), manifest.to_json().encode())
    finally:
        temp_image.unlink(missing_ok=True)
        shutil.rmtree(build_dir, ignore_errors=True)
    return BuildResult(image=image, manifest=manifest, warnings=warnings, init=init)
