"""The actions kdump.conf names and the capture agent carries out."""

from __future__ import annotations

#: What the capture ends with (kdump.conf ``final_action``).
FINAL_ACTIONS: tuple[str, ...] = ("reboot", "halt", "poweroff")
#: What a failed capture does (kdump.conf ``failure_action``); shell and dump_to_rootfs
#: are followed by the final action.
FAILURE_ACTIONS: tuple[str, ...] = (*FINAL_ACTIONS, "shell", "dump_to_rootfs")
#: The action a plan gets when kdump.conf names none, and the one taken when in doubt.
DEFAULT_ACTION = "reboot"
