"""The D-Bus adapter: org.kdumpd1 on the system bus; the only module that imports dasbus.

Bus name ``org.kdumpd1``, object ``/org/kdumpd1``, interface
``org.kdumpd1.Manager`` (checked in as ``dbus/org.kdumpd1.Manager.xml``;
a test compares it with what the daemon exports). Methods call the core;
errors leave as ``org.kdumpd1.Error.<Name>`` with kdumpctl's lines as message.
Who may call what is the bus policy's job (``dbus/org.kdumpd1.conf``).
Also the client side that kdumpctl uses to reach a running daemon.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dasbus.connection import SystemMessageBus
from dasbus.error import AbstractErrorRule, DBusError, ErrorMapper
from dasbus.server.handler import ServerObjectHandler
from dasbus.server.interface import accepts_additional_arguments, dbus_interface, dbus_signal
from dasbus.server.property import PropertiesInterface
from dasbus.typing import Int, List, Str, Tuple, UInt64

from kdumpd.daemon.core import CallFailed, Core
from kdumpd.daemon.worker import Worker, on_main_loop
from kdumpd.errors import KdumpError, Problem

BUS_NAME = "org.kdumpd1"
OBJECT_PATH = "/org/kdumpd1"
INTERFACE = "org.kdumpd1.Manager"
ERROR_PREFIX = "org.kdumpd1.Error."
#: A rebuild runs dracut for minutes; the client waits (clients.md R2: about 120 s).
CALL_TIMEOUT_MS = 30 * 60 * 1000


def error_name(internal: str) -> str:
    """``org.kdumpd.Error.X`` (kdumpd.errors) as the versioned bus name ``org.kdumpd1.Error.X``."""
    return ERROR_PREFIX + internal.rsplit(".", 1)[-1]


class NamedError(DBusError):  # type: ignore[misc]
    """An error with its D-Bus name as a class attribute (dasbus maps by type)."""

    dbus_name = ERROR_PREFIX + "Failed"


_classes: "dict[str, type[NamedError]]" = {}


def _named(name: str) -> type[NamedError]:
    if name not in _classes:
        _classes[name] = type(name.rsplit(".", 1)[-1], (NamedError,), {"dbus_name": name})
    return _classes[name]


class _NamedRule(AbstractErrorRule):  # type: ignore[misc]
    """Server: NamedError subclasses by their name. Client: any kdumpd1 name to a class."""

    def match_type(self, exception_type: type) -> bool:
        return issubclass(exception_type, NamedError)

    def get_name(self, exception_type: type) -> str:
        return str(getattr(exception_type, "dbus_name"))  # noqa: B009

    def match_name(self, error_name: str) -> bool:
        return error_name.startswith(ERROR_PREFIX)

    def get_type(self, error_name: str) -> type:
        return _named(error_name)


def error_mapper() -> ErrorMapper:
    mapper = ErrorMapper()
    mapper.add_rule(_NamedRule())
    return mapper


def _bus_error(exc: KdumpError) -> NamedError:
    lines = exc.lines if isinstance(exc, CallFailed) else [str(exc)]
    return _named(error_name(exc.dbus_name))("\n".join(lines))


class Deferred:
    """A method result that the worker thread delivers later (see DeferringHandler)."""

    def __init__(self) -> None:
        self._reply: Callable[[Any, BaseException | None], None] | None = None

    def attach(self, reply: "Callable[[Any, BaseException | None], None]") -> None:
        self._reply = reply

    def resolve(self, result: Any, error: "BaseException | None") -> None:
        if self._reply is not None:
            self._reply(result, error)


class DeferringHandler(ServerObjectHandler):  # type: ignore[misc]
    """dasbus' object handler, plus replies that come after the method returned.

    A method that returns a :class:`Deferred` gets its D-Bus reply (or named
    error) when the worker finished, so the main loop serves other calls meanwhile.
    """

    def _handle_method_result(self, invocation: Any, method_spec: Any, method_reply: Any) -> None:
        if not isinstance(method_reply, Deferred):
            super()._handle_method_result(invocation, method_spec, method_reply)
            return

        def reply(result: Any, error: "BaseException | None") -> None:
            if error is None:
                self._server.set_call_reply(invocation, method_spec.out_type, result)
                return
            if isinstance(error, KdumpError):
                error = _bus_error(error)
            name = self._error_mapper.get_error_name(type(error))
            self._server.set_call_error(invocation, name, str(error))

        method_reply.attach(reply)


@dbus_interface(INTERFACE)
class ManagerInterface(PropertiesInterface):  # type: ignore[misc]
    """org.kdumpd1.Manager: the daemon's state as properties, the use cases as methods."""

    def __init__(
        self,
        core: Core,
        worker: "Worker | None" = None,
        uid_of: "Callable[[str], int] | None" = None,
    ) -> None:
        super().__init__()
        self._core = core
        self._worker = worker
        self._uid_of = uid_of
        self._last: dict[str, object] = {}
        # the core changes state on the worker thread; signals leave from the main loop
        core.on_change = on_main_loop(self.publish_changes)

        def dump_found(path: str, panic: str) -> None:
            on_main_loop(lambda: self.DumpFound.emit(path, panic))()

        core.on_dump_found = dump_found
        self._last = self._snapshot()

    # -- properties ----------------------------------------------------------

    def _snapshot(self) -> dict[str, object]:
        view = self._core.overview()
        return {
            "State": self._core.state,
            "Reason": self._core.reason,
            "LastError": self._core.last_error,
            "Target": view.target,
            "ReservedBytes": view.reserved_bytes,
            "ImagePath": self._shown(view.image),
            "ImageTime": int(view.image_mtime),
            "LastDump": self._core.last_dump,
            "StatusText": self._core.status_text(),
        }

    def _shown(self, path: Path | None) -> str:
        return "" if path is None else self._core.paths.shown(path)

    def publish_changes(self) -> None:
        current = self._snapshot()
        for name, value in current.items():
            if self._last.get(name) != value:
                self.report_changed_property(name)
        self._last = current
        self.flush_changes()

    @property
    def State(self) -> Str:
        """armed, not-armed, building, failed or unsupported."""
        return self._core.state

    @property
    def Reason(self) -> Str:
        return self._core.reason

    @property
    def LastError(self) -> Str:
        """Empty, or the latest problem as ``file:line: message`` lines."""
        return self._core.last_error

    @property
    def Target(self) -> Str:
        return self._core.overview().target

    @property
    def ReservedBytes(self) -> UInt64:
        return self._core.overview().reserved_bytes

    @property
    def ImagePath(self) -> Str:
        return self._shown(self._core.overview().image)

    @property
    def ImageTime(self) -> UInt64:
        """When the capture image was built (seconds since the epoch); 0 if none."""
        return int(self._core.overview().image_mtime)

    @property
    def LastDump(self) -> Str:
        return self._core.last_dump

    @property
    def StatusText(self) -> Str:
        return self._core.status_text()

    # -- signals ------------------------------------------------------------

    @dbus_signal  # type: ignore[misc]
    def DumpFound(self, path: Str, panic: Str) -> None:
        """A dump saved by the capture kernel was found: its directory and panic line."""

    # -- methods ------------------------------------------------------------

    def _call(self, command: str, call_info: "dict[str, Any] | None" = None) -> Any:
        # Defence in depth: the bus policy already refuses these calls from
        # non-root users, but a missing or edited policy file must not open them.
        sender = (call_info or {}).get("sender")
        if self._uid_of is not None and sender and self._uid_of(sender) != 0:
            raise _named(ERROR_PREFIX + "AccessDenied")(
                f"kdumpctl {command} needs root (sender {sender} is not)"
            )
        if self._worker is not None:
            deferred = Deferred()
            self._worker.submit(lambda: self._core.call(command), deferred.resolve)
            return deferred
        try:
            return self._core.call(command)
        except KdumpError as exc:
            raise _bus_error(exc) from None

    @accepts_additional_arguments  # type: ignore[misc]
    def Start(self, *, call_info: "dict[str, Any]") -> List[Str]:
        return self._call("start", call_info)

    @accepts_additional_arguments  # type: ignore[misc]
    def Stop(self, *, call_info: "dict[str, Any]") -> List[Str]:
        return self._call("stop", call_info)

    @accepts_additional_arguments  # type: ignore[misc]
    def Restart(self, *, call_info: "dict[str, Any]") -> List[Str]:
        return self._call("restart", call_info)

    @accepts_additional_arguments  # type: ignore[misc]
    def Reload(self, *, call_info: "dict[str, Any]") -> List[Str]:
        return self._call("reload", call_info)

    @accepts_additional_arguments  # type: ignore[misc]
    def Rebuild(self, *, call_info: "dict[str, Any]") -> List[Str]:
        return self._call("rebuild", call_info)

    def CheckConfig(self) -> List[Tuple[Str, Str, Int, Str]]:
        """Every problem: (error|warning, file, line, message); empty when valid."""
        errors, warnings = self._core.check_config()

        def rows(level: str, problems: list[Problem]) -> list[tuple[str, str, int, str]]:
            return [(level, p.file, p.line, p.message) for p in problems]

        return rows("error", errors) + rows("warning", warnings)

    def ListDumps(self) -> List[Tuple[Str, UInt64, UInt64]]:
        """Saved dumps, oldest first: (directory, time saved, bytes on disk)."""
        return [
            (self._shown(d.directory), int(d.mtime), d.size_bytes) for d in self._core.list_dumps()
        ]


def interface_xml() -> str:
    """The introspection XML of org.kdumpd1.Manager as dasbus generates it."""
    return str(ManagerInterface.__dbus_xml__)


class Service:
    """The published object and the owned name on the system bus."""

    def __init__(self, core: Core, worker: Worker) -> None:
        # DBUS_SYSTEM_BUS_ADDRESS (tests) is honoured by GIO's system bus lookup.
        self.bus = SystemMessageBus(error_mapper=error_mapper())
        self.interface = ManagerInterface(core, worker, uid_of=self._uid_of)
        self.bus.publish_object(OBJECT_PATH, self.interface, server_factory=DeferringHandler)
        self.bus.register_service(BUS_NAME)

    def _uid_of(self, sender: str) -> int:
        return int(self.bus.proxy.GetConnectionUnixUser(sender))

    def close(self) -> None:
        self.bus.disconnect()


# -- the client side (kdumpctl) ---------------------------------------------------


class Client:
    """kdumpctl's way to the running daemon."""

    def __init__(self) -> None:
        self.bus = SystemMessageBus(error_mapper=error_mapper())
        self.proxy = self.bus.get_proxy(BUS_NAME, OBJECT_PATH, INTERFACE)

    @staticmethod
    def daemon_running() -> bool:
        """True when org.kdumpd1 has an owner on the system bus; False without a bus."""
        try:
            bus = SystemMessageBus()
            owner = bus.proxy.NameHasOwner(BUS_NAME)
            bus.disconnect()
        except Exception:
            return False
        return bool(owner)

    def last_error(self) -> str:
        """The daemon's LastError: empty, or a rejected edit's problems."""
        return str(self.proxy.LastError)

    def call(self, command: str) -> tuple[list[str], str | None]:
        """Run a use case in the daemon: (lines, None) or (lines, error name)."""
        method = getattr(self.proxy, command.capitalize())
        try:
            return list(method(timeout=CALL_TIMEOUT_MS)), None
        except NamedError as exc:
            return str(exc).splitlines(), type(exc).dbus_name
