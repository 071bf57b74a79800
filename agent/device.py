"""What this device is (Describe) and what state it is in (Environment)."""
from __future__ import annotations

import hashlib
import os
import platform
import re
import socket
import time
import uuid
from pathlib import Path

import psutil

from . import __version__
from .proto import agent_pb2 as pb

# A CPU sensor at or above this temperature counts as throttling when the sensor declares no limit.
DEFAULT_HOT_C = 85.0
# Raspberry Pi firmware's get_throttled bits that mean "slowed down right now".
RPI_THROTTLE_FILE = Path("/sys/devices/platform/soc/soc:firmware/get_throttled")
RPI_NOW_BITS = {0x1: "under-voltage", 0x2: "arm frequency capped", 0x4: "throttled", 0x8: "soft temperature limit"}
CPU_SENSOR_HINTS = ("cpu", "coretemp", "k10temp", "zenpower", "soc", "thermal_zone", "acpitz", "tsens")


def device_id(state_dir: Path | None = None) -> str:
    """A stable id: a hash of the OS machine id, or a random id kept in state_dir when there is none."""
    for candidate in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            text = Path(candidate).read_text().strip()
        except OSError:
            continue
        if text:
            return "dev-" + hashlib.sha256(text.encode()).hexdigest()[:16]
    if state_dir is not None:
        return _kept_id(Path(state_dir) / "device-id")
    return "dev-" + hashlib.sha256(socket.gethostname().encode()).hexdigest()[:16]


def _kept_id(path: Path) -> str:
    """The random id kept in `path`, made there on first use. Written whole or not at all (a temporary file,
    synced, then renamed): a write cut short by a full disk or a power cut left an empty file, read back as the
    id "" for good, which every such device then shared in the host's store."""
    try:  # any other failure to read it stops the agent: a new id would cut the device's history off
        kept = path.read_text(errors="replace").strip()
    except FileNotFoundError:
        kept = ""
    if re.fullmatch(r"dev-[0-9a-f]{16}", kept):
        return kept
    new = "dev-" + uuid.uuid4().hex[:16]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(new + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:  # the rename itself survives a power cut
            os.fsync(folder)
        finally:
            os.close(folder)
    finally:
        tmp.unlink(missing_ok=True)
    return new


def cpu_model() -> str:
    """The CPU's marketing name, or the board model on ARM boards that only report that."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    for key in ("model name", "hardware", "model", "cpu model", "processor"):
        if fields.get(key) and not fields[key].isdigit():
            return fields[key]
    return platform.processor() or platform.machine()


def accelerators() -> list[str]:
    """Accelerators whose presence can be read without importing a vendor library."""
    found = []
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir():
        for gpu in sorted(gpus.iterdir()):
            info = (gpu / "information")
            model = next((line.split(":", 1)[1].strip() for line in _lines(info) if line.startswith("Model")), "gpu")
            found.append(f"nvidia:{model}")
    board = _read(Path("/proc/device-tree/model")).rstrip("\x00")
    if "jetson" in board.lower():
        found.append(f"nvidia-jetson:{board}")
    if Path("/dev/apex_0").exists():
        found.append("google-edgetpu:pcie")
    if Path("/sys/class/kgsl/kgsl-3d0").exists():
        found.append("qualcomm-adreno:" + _read(Path("/sys/class/kgsl/kgsl-3d0/gpu_model")).strip())
    return found


def describe(label: str, limits: pb.Limits, runtimes: list[pb.RuntimeInfo], device_id: str) -> pb.DeviceDescription:
    """`device_id` is the one the agent found when it started: its measurements are reported under it, and a
    cache folder removed while it runs must not give it another."""
    uname = platform.uname()
    return pb.DeviceDescription(
        device_id=device_id,
        label=label,
        os=f"{uname.system} {uname.release}",
        machine=uname.machine,
        cpu_model=cpu_model(),
        cpu_cores_logical=psutil.cpu_count(logical=True) or 0,
        cpu_cores_physical=psutil.cpu_count(logical=False) or 0,
        ram_bytes=psutil.virtual_memory().total,
        accelerators=accelerators(),
        runtimes=runtimes,
        agent_version=__version__,
        limits=limits,
        python_version=platform.python_version(),
        hostname=socket.gethostname(),
    )


def environment() -> pb.EnvironmentSnapshot:
    """Temperatures, clocks, load and whether the device is slowed down right now."""
    temps = _temperatures()
    # Only CPU sensors: a hot disk or battery neither is the CPU's temperature nor slows the model down.
    cpu = [t for t in temps if any(h in t.sensor.lower() for h in CPU_SENSOR_HINTS)]
    freq_now, freq_max = _frequencies()
    reasons = _throttle_reasons(cpu)
    return pb.EnvironmentSnapshot(
        unix_s=time.time(),
        temperatures=temps,
        cpu_temp_max_c=max((t.current_c for t in cpu), default=None),
        cpu_freq_current_mhz=freq_now,
        cpu_freq_max_mhz=freq_max,
        load_1m=os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0,
        cpu_percent=psutil.cpu_percent(interval=None),
        memory_available_bytes=psutil.virtual_memory().available,
        throttled=bool(reasons),
        throttle_reason="; ".join(reasons),
        governor=_read(Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")).strip(),
    )


def _temperatures() -> list[pb.TemperatureReading]:
    read = getattr(psutil, "sensors_temperatures", None)
    try:
        groups = read() if read else {}
    except (OSError, RuntimeError):
        groups = {}
    readings = []
    for chip, entries in sorted(groups.items()):
        for entry in entries:
            if entry.current is None:
                continue
            name = f"{chip}/{entry.label}" if entry.label else chip
            readings.append(pb.TemperatureReading(sensor=name, current_c=entry.current,
                                                  high_c=entry.high or None, critical_c=entry.critical or None))
    return readings


def _frequencies() -> tuple[float | None, float | None]:
    """(current, max) clock in MHz; None for what the platform does not report (psutil gives 0 for it)."""
    try:
        freq = psutil.cpu_freq()
    except (OSError, RuntimeError, NotImplementedError):
        freq = None
    if freq is None:
        return None, None
    return float(freq.current or 0) or None, float(freq.max or 0) or None


def _throttle_reasons(cpu_temps: list[pb.TemperatureReading]) -> list[str]:
    value = _firmware_bits()
    reasons = [f"firmware: {text}" for bit, text in RPI_NOW_BITS.items() if value & bit]
    for t in cpu_temps:
        limit = t.high_c if t.HasField("high_c") and t.high_c > 0 else DEFAULT_HOT_C
        if t.current_c >= limit:
            reasons.append(f"{t.sensor} at {t.current_c:.0f} °C (limit {limit:.0f} °C)")
    return reasons


def _firmware_bits() -> int:
    """Raspberry Pi firmware's throttle bits; 0 (nothing known) where there are none or they do not parse."""
    try:
        value = int(_read(RPI_THROTTLE_FILE).strip() or "0", 16)
    except ValueError:
        return 0
    return max(value, 0)  # "-1" parses, but is no set of bits


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return ""


def _lines(path: Path) -> list[str]:
    return _read(path).splitlines()
