"""AMD GPUs for Corral: finds them in the KFD topology in sysfs; the HIP engine is not written yet.

The probe reads the files the amdgpu driver publishes for the ROCm runtime
(/sys/class/kfd/kfd/topology) instead of starting the HIP runtime, which is slow to
initialise and needs a ROCm install; amdsmi, when installed, only adds the marketing name
and live VRAM use.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from corral.engines import dispatch
from corral.errors import BackendUnavailable
from corral.hookspecs import Backend, Device, Estimate, LoadSpec, Probe, Runner, hookimpl

INSTALL_HINT = (
    'CMAKE_ARGS="-DGGML_HIP=on" pip install --force-reinstall --no-cache-dir llama-cpp-python'
    " (or pip install 'corral[rocm]')"
)
BUILD = dispatch.GpuBuild("rocm", "ROCm", INSTALL_HINT)
VRAM_HEAPS = (1, 2)  # KFD heap_type: 1 = frame buffer visible to the host, 2 = private frame buffer


@dataclass(frozen=True)
class KfdNode:
    """One GPU node of the KFD topology."""

    node: int
    path: Path
    props: dict[str, int]

    @property
    def gfx(self) -> str:
        return gfx_name(self.props.get("gfx_target_version", 0))

    @property
    def uuid(self) -> str:
        # The form ROCR_VISIBLE_DEVICES and rocminfo use: unique_id as 16 hex digits.
        unique_id = self.props.get("unique_id", 0)
        return f"GPU-{unique_id:016x}" if unique_id else ""

    @property
    def bdf(self) -> str:
        location = self.props.get("location_id", 0)  # PCI bus << 8 | device << 3 | function
        domain = self.props.get("domain", 0)
        return f"{domain:04x}:{location >> 8:02x}:{(location >> 3) & 0x1F:02x}.{location & 7}"


class RocmBackend:
    name = "rocm"
    priority = 30
    description = "AMD GPUs through ROCm/HIP (llama.cpp HIP build)"

    def __init__(
        self, sysfs_root: Path = Path("/sys"), dev_root: Path = Path("/dev"), use_amdsmi: bool | None = None
    ) -> None:
        self.sysfs_root = sysfs_root
        self.dev_root = dev_root
        # amdsmi describes the live machine, so by default it is consulted only with the live sysfs.
        self.use_amdsmi = sysfs_root == Path("/sys") if use_amdsmi is None else use_amdsmi

    def probe(self) -> Probe:
        topology = self.sysfs_root / "class/kfd/kfd/topology"
        if self.sysfs_root == Path("/sys") and not sys.platform.startswith("linux"):
            return Probe(available=False, reason=f"ROCm is supported on Linux only (this is {sys.platform})")
        if not topology.is_dir():
            return Probe(
                available=False,
                reason=f"no AMD GPU found ({topology} does not exist: the amdgpu kernel driver is not loaded)",
            )
        nodes = gpu_nodes(topology / "nodes")
        if not nodes:
            return Probe(available=False, reason="no AMD GPU found (the KFD topology lists only CPU nodes)")
        # The driver can be loaded while this process still cannot use it; both cases are common.
        kfd = self.dev_root / "kfd"
        if not kfd.exists():
            return Probe(
                available=False,
                reason=f"{kfd} is missing although the amdgpu driver is loaded"
                " (in a container, pass --device /dev/kfd --device /dev/dri)",
            )
        if not os.access(kfd, os.R_OK | os.W_OK):
            return Probe(
                available=False,
                reason=f"permission denied on {kfd}"
                " (add your user to the 'render' and 'video' groups and log in again)",
            )
        visible, hidden_by = visible_nodes(nodes, os.environ)
        if not visible:
            return Probe(available=False, reason=hidden_by)
        facts = amdsmi_facts() if self.use_amdsmi else {}
        return Probe(
            available=True,
            devices=tuple(self._device(i, node, facts.get(node.bdf)) for i, node in enumerate(visible)),
        )

    def _device(self, index: int, node: KfdNode, smi: tuple[str, int] | None) -> Device:
        drm = self.sysfs_root / f"class/drm/renderD{node.props.get('drm_render_minor', -1)}/device"
        total = vram_total(node.path) or _read_int(drm / "mem_info_vram_total") or 0
        used = smi[1] if smi else _read_int(drm / "mem_info_vram_used")
        name = (smi[0] if smi else "") or _read(drm / "product_name") or _read(node.path / "name")
        details = {"gfx": node.gfx, "pci_bus": node.bdf, "kfd_node": str(node.node)}
        if node.uuid:
            details["uuid"] = node.uuid
        if driver := _read(self.sysfs_root / "module/amdgpu/version"):
            details["driver"] = driver  # present only for AMD's out-of-tree (DKMS) driver
        return Device(
            backend="rocm",
            index=index,  # the HIP ordinal after HIP_VISIBLE_DEVICES renumbering
            name=name or f"AMD GPU ({node.gfx})",
            kind="gpu",
            total_memory=total,
            # Without a usage figure the whole card is assumed free rather than guessed at.
            free_memory=max(total - used, 0) if used is not None else total,
            details=details,
        )

    def estimate(self, spec: LoadSpec, devices: Sequence[Device]) -> Estimate | None:
        from corral.engines.host import host_device

        return dispatch.estimate(spec, [*devices, host_device()])

    def explain(self, spec: LoadSpec, devices: Sequence[Device]) -> str:
        from corral.engines.host import host_device

        return dispatch.explain(spec, [*devices, host_device()])

    def prepare(self) -> None:
        dispatch.prepare()

    def load(self, spec: LoadSpec) -> Runner:
        probe = self.probe()
        if not probe.available:
            raise BackendUnavailable(f"the rocm backend cannot run here: {probe.reason}")
        # onnxruntime-genai has no ROCm build: an ONNX folder runs on the CPU.
        return dispatch.load(spec, BUILD)


def gfx_name(target_version: int) -> str:
    """KFD's gfx_target_version (major*10000 + minor*100 + stepping) as LLVM's name: 90010 -> gfx90a."""
    if target_version <= 0:
        return "unknown"
    major, rest = divmod(target_version, 10000)
    minor, stepping = divmod(rest, 100)
    return f"gfx{major}{minor:x}{stepping:x}"


def gpu_nodes(nodes_dir: Path) -> list[KfdNode]:
    """GPU nodes in node order (the order ROCR numbers them); CPU nodes have no SIMDs."""
    found: list[KfdNode] = []
    numbered = sorted((int(p.name), p) for p in _listdir(nodes_dir) if p.name.isdigit())
    for number, path in numbered:
        props = read_properties(path / "properties")
        if props.get("simd_count", 0) > 0:
            found.append(KfdNode(number, path, props))
    return found


def vram_total(node_dir: Path) -> int:
    banks = (read_properties(p / "properties") for p in _listdir(node_dir / "mem_banks"))
    return sum(b.get("size_in_bytes", 0) for b in banks if b.get("heap_type") in VRAM_HEAPS)


def visible_nodes(nodes: list[KfdNode], environ: Mapping[str, str]) -> tuple[list[KfdNode], str]:
    """Apply ROCR_VISIBLE_DEVICES, then HIP_VISIBLE_DEVICES; return the survivors or why none did.

    ROCR masks first and HIP indexes into what ROCR left. HIP also honours
    CUDA_VISIBLE_DEVICES when HIP_VISIBLE_DEVICES is unset (ROCm's GPU isolation docs), so a
    llama.cpp HIP build obeys it too. An empty value hides everything, as with CUDA.
    """
    hip_var = "HIP_VISIBLE_DEVICES" if "HIP_VISIBLE_DEVICES" in environ else "CUDA_VISIBLE_DEVICES"
    for var in ("ROCR_VISIBLE_DEVICES", hip_var):
        value = environ.get(var)
        if value is None:
            continue
        nodes = _select(value, nodes)
        if not nodes:
            return [], f"{var} hides every GPU (it is set to {value!r})"
    return nodes, ""


def _select(value: str, nodes: list[KfdNode]) -> list[KfdNode]:
    # Like the runtimes, stop at the first entry that names no GPU ("-1", "", a bad index).
    chosen: list[KfdNode] = []
    for entry in (part.strip() for part in value.split(",")):
        if entry.isdigit() and int(entry) < len(nodes):
            node: KfdNode | None = nodes[int(entry)]
        else:
            node = next((n for n in nodes if n.uuid and n.uuid.lower() == entry.lower()), None)
        if node is None or node in chosen:
            break
        chosen.append(node)
    return chosen


def amdsmi_facts() -> dict[str, tuple[str, int]]:
    """Marketing name and VRAM bytes in use per PCI address, when amdsmi is installed."""
    facts: dict[str, tuple[str, int]] = {}
    try:
        import amdsmi

        amdsmi.amdsmi_init()
        try:
            for handle in amdsmi.amdsmi_get_processor_handles():
                bdf = str(amdsmi.amdsmi_get_gpu_device_bdf(handle)).lower()
                name = str(amdsmi.amdsmi_get_gpu_asic_info(handle).get("market_name", ""))
                used_mb = int(amdsmi.amdsmi_get_gpu_vram_usage(handle)["vram_used"])
                facts[bdf] = (name, used_mb * 1024 * 1024)
        finally:
            amdsmi.amdsmi_shut_down()
    except Exception:  # absent, or its native library is missing or broken: sysfs is enough
        pass
    return facts


def read_properties(path: Path) -> dict[str, int]:
    """A KFD ``properties`` file: one ``key value`` pair per line, every value an integer."""
    props: dict[str, int] = {}
    for line in (_read(path) or "").splitlines():
        key, _, value = line.partition(" ")
        try:
            props[key] = int(value)
        except ValueError:
            continue
    return props


def _listdir(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except OSError:
        return []


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:  # sysfs files vanish with hot-unplug and some are root-only
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    return int(text) if text and text.isdigit() else None


@hookimpl
def corral_register_backends(register: Callable[[Backend], None]) -> None:
    register(RocmBackend())
