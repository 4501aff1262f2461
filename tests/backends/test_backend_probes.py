"""The accelerator probes (cuda, rocm, metal) against recorded sysfs trees, a scripted NVML and faked platforms."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

import corral_backend_cuda
import corral_backend_metal
import corral_backend_rocm
from corral.errors import BackendUnavailable, BadRequest
from corral.hookspecs import LoadSpec, Probe
from corral.plugins import Plugins
from corral_backend_cpu import CpuBackend
from corral_backend_cuda import CudaBackend
from corral_backend_metal import MetalBackend
from corral_backend_rocm import RocmBackend, gfx_name

VISIBILITY_VARS = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")
GIB = 1024**3
SPEC = LoadSpec(model_path=Path("model.gguf"), num_ctx=2048, num_parallel=1)


@pytest.fixture(autouse=True)
def _no_visibility_masks(monkeypatch: pytest.MonkeyPatch) -> None:
    # The developer's or CI's own masks must not leak into these tests.
    for var in VISIBILITY_VARS:
        monkeypatch.delenv(var, raising=False)


# --- ROCm: recorded KFD topologies -------------------------------------------------------

# Trimmed from a real Radeon RX 7900 XTX (kernel 6.8); the probe must ignore keys it does not use.
RX7900XTX = """\
cpu_cores_count 0
simd_count 192
mem_banks_count 1
caches_count 206
io_links_count 1
p2p_links_count 0
cpu_core_id_base 0
simd_id_base 2147487744
max_waves_per_simd 16
lds_size_in_kb 64
wave_front_size 32
array_count 12
simd_per_cu 2
gfx_target_version 110000
vendor_id 4098
device_id 29772
location_id 768
domain 0
drm_render_minor 128
hive_id 0
num_sdma_engines 2
unique_id 10884336548473227558
num_xcc 1
max_engine_clk_ccompute 5881
"""
CPU_NODE = """\
cpu_cores_count 16
simd_count 0
mem_banks_count 1
gfx_target_version 0
vendor_id 0
device_id 0
location_id 0
domain 0
drm_render_minor 0
unique_id 0
"""


def gpu_props(gfx_target_version: int, location_id: int, render_minor: int, unique_id: int) -> str:
    return (
        f"cpu_cores_count 0\nsimd_count 480\ngfx_target_version {gfx_target_version}\nvendor_id 4098\n"
        f"device_id 29580\nlocation_id {location_id}\ndomain 0\ndrm_render_minor {render_minor}\n"
        f"unique_id {unique_id}\n"
    )


@dataclass
class RecordedNode:
    properties: str
    name: str = ""
    banks: list[tuple[int, int]] = field(default_factory=list)  # (heap_type, size_in_bytes)
    drm: dict[str, str] = field(default_factory=dict)  # files under renderD<minor>/device


def write_sysfs(root: Path, nodes: list[RecordedNode]) -> Path:
    """Lay out ``root`` like /sys: the KFD topology plus each GPU's DRM render node."""
    topology = root / "class/kfd/kfd/topology"
    for number, node in enumerate(nodes):
        node_dir = topology / "nodes" / str(number)
        node_dir.mkdir(parents=True)
        (node_dir / "properties").write_text(node.properties)
        (node_dir / "name").write_text(node.name + "\n")
        for bank, (heap_type, size) in enumerate(node.banks):
            bank_dir = node_dir / "mem_banks" / str(bank)
            bank_dir.mkdir(parents=True)
            (bank_dir / "properties").write_text(f"heap_type {heap_type}\nsize_in_bytes {size}\nflags 0\nwidth 4096\n")
        minor = next(line.split()[1] for line in node.properties.splitlines() if line.startswith("drm_render_minor"))
        if node.drm:
            device = root / f"class/drm/renderD{minor}/device"
            device.mkdir(parents=True)
            for file_name, text in node.drm.items():
                (device / file_name).write_text(text + "\n")
    (topology / "generation_id").write_text("1\n")
    return root


@pytest.fixture
def dev_root(tmp_path: Path) -> Path:
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "kfd").write_text("")
    return dev


def one_gpu_tree(root: Path) -> Path:
    return write_sysfs(
        root,
        [
            RecordedNode(CPU_NODE, name="AMD Ryzen 9 7950X 16-Core Processor"),
            RecordedNode(
                RX7900XTX,
                name="gfx1100",
                banks=[(1, 24 * GIB)],
                drm={"product_name": "Radeon RX 7900 XTX", "mem_info_vram_used": str(4 * GIB)},
            ),
        ],
    )


def two_gpu_tree(root: Path) -> Path:
    # An MI100 (gfx908) whose DRM files are absent, then an MI210 (gfx90a) with usage figures.
    return write_sysfs(
        root,
        [
            RecordedNode(CPU_NODE),
            RecordedNode(gpu_props(90008, 768, 128, 0x1111), name="gfx908", banks=[(2, 32 * GIB), (0, 4 * GIB)]),
            RecordedNode(
                gpu_props(90010, 0x8300, 129, 0x2222),
                name="gfx90a",
                banks=[(1, 64 * GIB)],
                drm={"product_name": "", "mem_info_vram_used": str(1 * GIB), "mem_info_vram_total": str(64 * GIB)},
            ),
        ],
    )


def test_rocm_one_gpu_next_to_a_cpu_node(tmp_path: Path, dev_root: Path) -> None:
    probe = RocmBackend(one_gpu_tree(tmp_path / "sys"), dev_root).probe()
    assert probe.available and probe.reason == ""
    (gpu,) = probe.devices
    assert (gpu.backend, gpu.index, gpu.kind, gpu.name) == ("rocm", 0, "gpu", "Radeon RX 7900 XTX")
    assert gpu.total_memory == 24 * GIB
    assert gpu.free_memory == 20 * GIB
    assert gpu.details == {
        "gfx": "gfx1100",
        "pci_bus": "0000:03:00.0",
        "kfd_node": "1",
        "uuid": "GPU-970cee6c538c4926",
    }


def test_rocm_two_gpus_fall_back_to_kfd_names_and_full_free_memory(tmp_path: Path, dev_root: Path) -> None:
    probe = RocmBackend(two_gpu_tree(tmp_path / "sys"), dev_root).probe()
    assert probe.available
    mi100, mi210 = probe.devices
    assert [d.index for d in probe.devices] == [0, 1]
    # No DRM usage file: the card is reported whole rather than guessed at; the system heap is not VRAM.
    assert (mi100.name, mi100.total_memory, mi100.free_memory) == ("gfx908", 32 * GIB, 32 * GIB)
    assert mi100.details["gfx"] == "gfx908" and mi100.details["kfd_node"] == "1"
    # An empty product_name falls through to the KFD node name.
    assert (mi210.name, mi210.total_memory, mi210.free_memory) == ("gfx90a", 64 * GIB, 63 * GIB)
    assert mi210.details["gfx"] == "gfx90a"
    assert mi210.details["pci_bus"] == "0000:83:00.0"


@pytest.mark.parametrize(
    ("env", "expected_nodes"),
    [
        ({"HIP_VISIBLE_DEVICES": "1"}, ["2"]),
        ({"HIP_VISIBLE_DEVICES": "1,0"}, ["2", "1"]),
        ({"HIP_VISIBLE_DEVICES": "0,5,1"}, ["1"]),  # parsing stops at the invalid index, as HIP does
        ({"HIP_VISIBLE_DEVICES": "0,0"}, ["1"]),
        ({"ROCR_VISIBLE_DEVICES": "GPU-0000000000002222"}, ["2"]),
        ({"ROCR_VISIBLE_DEVICES": "1,0", "HIP_VISIBLE_DEVICES": "0"}, ["2"]),  # HIP indexes ROCR's list
        ({"CUDA_VISIBLE_DEVICES": "1"}, ["2"]),  # HIP honours it when HIP_VISIBLE_DEVICES is unset
        ({"CUDA_VISIBLE_DEVICES": "1", "HIP_VISIBLE_DEVICES": "0"}, ["1"]),
    ],
)
def test_rocm_visibility_masks(
    tmp_path: Path, dev_root: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected_nodes: list[str]
) -> None:
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    probe = RocmBackend(two_gpu_tree(tmp_path / "sys"), dev_root).probe()
    assert [d.details["kfd_node"] for d in probe.devices] == expected_nodes
    assert [d.index for d in probe.devices] == list(range(len(expected_nodes)))


@pytest.mark.parametrize(
    ("var", "value"), [("HIP_VISIBLE_DEVICES", "-1"), ("HIP_VISIBLE_DEVICES", ""), ("ROCR_VISIBLE_DEVICES", "7")]
)
def test_rocm_mask_that_hides_everything(
    tmp_path: Path, dev_root: Path, monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    probe = RocmBackend(two_gpu_tree(tmp_path / "sys"), dev_root).probe()
    assert not probe.available and probe.devices == ()
    assert probe.reason == f"{var} hides every GPU (it is set to {value!r})"


def test_rocm_cpu_only_topology(tmp_path: Path, dev_root: Path) -> None:
    root = write_sysfs(tmp_path / "sys", [RecordedNode(CPU_NODE)])
    probe = RocmBackend(root, dev_root).probe()
    assert probe == Probe(available=False, reason="no AMD GPU found (the KFD topology lists only CPU nodes)")


def test_rocm_without_the_driver(tmp_path: Path, dev_root: Path) -> None:
    probe = RocmBackend(tmp_path, dev_root).probe()
    assert not probe.available
    assert probe.reason == (
        f"no AMD GPU found ({tmp_path}/class/kfd/kfd/topology does not exist: the amdgpu kernel driver is not loaded)"
    )


def test_rocm_driver_loaded_but_dev_kfd_missing(tmp_path: Path) -> None:
    empty_dev = tmp_path / "dev"
    empty_dev.mkdir()
    probe = RocmBackend(one_gpu_tree(tmp_path / "sys"), empty_dev).probe()
    assert not probe.available
    assert probe.reason.startswith(f"{empty_dev}/kfd is missing") and "--device /dev/kfd" in probe.reason


def test_rocm_dev_kfd_not_accessible(tmp_path: Path, dev_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # These tests may run as root, for whom every file is accessible; play an ordinary user.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    probe = RocmBackend(one_gpu_tree(tmp_path / "sys"), dev_root).probe()
    assert not probe.available
    assert probe.reason.startswith(f"permission denied on {dev_root}/kfd") and "'render'" in probe.reason


def test_rocm_amdsmi_adds_marketing_name_and_usage(
    tmp_path: Path, dev_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    fake = ModuleType("amdsmi")
    fake.amdsmi_init = lambda: calls.append("init")  # type: ignore[attr-defined]
    fake.amdsmi_shut_down = lambda: calls.append("shut_down")  # type: ignore[attr-defined]
    fake.amdsmi_get_processor_handles = lambda: ["h0"]  # type: ignore[attr-defined]
    fake.amdsmi_get_gpu_device_bdf = lambda h: "0000:83:00.0"  # type: ignore[attr-defined]
    fake.amdsmi_get_gpu_asic_info = lambda h: {"market_name": "AMD Instinct MI210"}  # type: ignore[attr-defined]
    fake.amdsmi_get_gpu_vram_usage = lambda h: {"vram_total": 65520, "vram_used": 2048}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "amdsmi", fake)
    probe = RocmBackend(two_gpu_tree(tmp_path / "sys"), dev_root, use_amdsmi=True).probe()
    mi100, mi210 = probe.devices
    assert mi100.name == "gfx908"  # amdsmi knew nothing about it
    assert (mi210.name, mi210.free_memory) == ("AMD Instinct MI210", 62 * GIB)
    assert calls == ["init", "shut_down"]


def test_rocm_broken_amdsmi_is_ignored(tmp_path: Path, dev_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = ModuleType("amdsmi")

    def fail() -> None:
        raise OSError("libamd_smi.so: cannot open shared object file")

    fake.amdsmi_init = fail  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "amdsmi", fake)
    probe = RocmBackend(one_gpu_tree(tmp_path / "sys"), dev_root, use_amdsmi=True).probe()
    assert probe.available and probe.devices[0].name == "Radeon RX 7900 XTX"


@pytest.mark.parametrize(
    ("version", "name"),
    [
        (90008, "gfx908"),
        (90010, "gfx90a"),
        (90012, "gfx90c"),
        (100300, "gfx1030"),
        (110000, "gfx1100"),
        (110501, "gfx1151"),
        (120001, "gfx1201"),
        (0, "unknown"),
    ],
)
def test_gfx_names(version: int, name: str) -> None:
    assert gfx_name(version) == name


# --- CUDA: a scripted NVML -------------------------------------------------------------


@dataclass
class FakeGpu:
    name: str
    uuid: str
    capability: tuple[int, int]
    total: int
    used: int
    broken: bool = False  # NVML answers with an error for this GPU


class FakeNvml(ModuleType):
    """Just enough of nvidia-ml-py; records whether init and shutdown were called."""

    def __init__(self, gpus: list[FakeGpu], init_error: type[Exception] | None = None) -> None:
        super().__init__("pynvml")
        self.gpus = gpus
        self.init_error = init_error
        self.calls: list[str] = []

        class NVMLError(Exception):
            pass

        class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801, N818 - pynvml's own names
            def __str__(self) -> str:
                return "NVML Shared Library Not Found"

        class NVMLError_DriverNotLoaded(NVMLError):  # noqa: N801, N818
            pass

        self.NVMLError = NVMLError
        self.NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
        self.NVMLError_DriverNotLoaded = NVMLError_DriverNotLoaded

    def nvmlInit(self) -> None:  # noqa: N802
        self.calls.append("init")
        if self.init_error is not None:
            raise self.init_error()

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.calls.append("shutdown")

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        return "550.54.15"

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:  # noqa: N802
        return self.gpus[index]

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> str:  # noqa: N802
        return handle.uuid

    def nvmlDeviceGetName(self, handle: FakeGpu) -> bytes:  # noqa: N802
        return handle.name.encode()  # old nvidia-ml-py returned bytes

    def nvmlDeviceGetCudaComputeCapability(self, handle: FakeGpu) -> tuple[int, int]:  # noqa: N802
        return handle.capability

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGpu) -> SimpleNamespace:  # noqa: N802
        if handle.broken:
            raise self.NVMLError("GPU is lost")
        return SimpleNamespace(total=handle.total, used=handle.used, free=handle.total - handle.used)


def two_gpus() -> list[FakeGpu]:
    return [
        FakeGpu("NVIDIA GeForce RTX 4090", "GPU-aaaa1111-0000-0000-0000-000000000000", (8, 9), 24 * GIB, 2 * GIB),
        FakeGpu("NVIDIA H100 80GB HBM3", "GPU-bbbb2222-0000-0000-0000-000000000000", (9, 0), 80 * GIB, 0),
    ]


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml(two_gpus())
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


def test_cuda_two_gpus(nvml: FakeNvml) -> None:
    probe = CudaBackend().probe()
    assert probe.available and probe.reason == ""
    rtx, h100 = probe.devices
    assert (rtx.backend, rtx.index, rtx.kind, rtx.name) == ("cuda", 0, "gpu", "NVIDIA GeForce RTX 4090")
    assert (rtx.total_memory, rtx.free_memory) == (24 * GIB, 22 * GIB)
    assert rtx.details == {
        "compute_capability": "8.9",
        "driver": "550.54.15",
        "uuid": "GPU-aaaa1111-0000-0000-0000-000000000000",
        "nvml_index": "0",
    }
    assert (h100.index, h100.name, h100.details["compute_capability"]) == (1, "NVIDIA H100 80GB HBM3", "9.0")
    assert nvml.calls == ["init", "shutdown"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", ["1"]),
        ("1,0", ["1", "0"]),
        (" 0 , 1 ", ["0", "1"]),
        ("0,7,1", ["0"]),  # CUDA stops at the first invalid entry
        ("GPU-bbbb", ["1"]),  # a unique UUID prefix
        ("GPU-BBBB2222-0000-0000-0000-000000000000,0", ["1", "0"]),
        ("0,GPU-", ["0"]),  # an ambiguous prefix is invalid
    ],
)
def test_cuda_visible_devices(nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch, value: str, expected: list[str]) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    probe = CudaBackend().probe()
    assert [d.details["nvml_index"] for d in probe.devices] == expected
    assert [d.index for d in probe.devices] == list(range(len(expected)))  # CUDA renumbers from 0


@pytest.mark.parametrize("value", ["", "-1", "GPU-ffff", "NoDevFiles"])
def test_cuda_visible_devices_hiding_everything(nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    probe = CudaBackend().probe()
    assert not probe.available and probe.devices == ()
    assert probe.reason.startswith("CUDA_VISIBLE_DEVICES hides every GPU")
    assert nvml.calls == ["init", "shutdown"]


def test_cuda_library_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml([], init_error=None)
    fake.init_error = fake.NVMLError_LibraryNotFound
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    probe = CudaBackend().probe()
    assert not probe.available
    prefix = "NVIDIA driver not found (libnvidia-ml.so could not be loaded: "
    assert probe.reason.startswith(prefix) and probe.reason.endswith(")")
    assert probe.reason[len(prefix) : -1].strip()  # the loader's own words, or NVML's
    assert fake.calls == ["init"]  # nothing to shut down after a failed init


def test_cuda_driver_not_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml([])
    fake.init_error = fake.NVMLError_DriverNotLoaded
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert CudaBackend().probe().reason.startswith("NVIDIA driver not loaded")


def test_cuda_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml([])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    probe = CudaBackend().probe()
    assert not probe.available and probe.reason.startswith("no NVIDIA GPU found")
    assert fake.calls == ["init", "shutdown"]


def test_cuda_one_lost_gpu_does_not_hide_the_other(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = two_gpus()
    gpus[0].broken = True
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(gpus))
    probe = CudaBackend().probe()
    assert [d.details["nvml_index"] for d in probe.devices] == ["1"]
    assert probe.devices[0].index == 0


def test_cuda_every_gpu_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = two_gpus()
    for gpu in gpus:
        gpu.broken = True
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(gpus))
    probe = CudaBackend().probe()
    assert not probe.available
    assert probe.reason == "no usable NVIDIA GPU (GPU 0: GPU is lost; GPU 1: GPU is lost)"


def test_cuda_shuts_nvml_down_when_listing_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml(two_gpus())

    def lost(index: int) -> FakeGpu:
        raise fake.NVMLError("Unknown Error")

    fake.nvmlDeviceGetHandleByIndex = lost  # type: ignore[method-assign]
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    probe = CudaBackend().probe()
    assert probe.reason == "NVML failed while listing GPUs: Unknown Error"
    assert fake.calls == ["init", "shutdown"]


def test_cuda_without_nvidia_ml_py(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    assert CudaBackend().probe().reason == "nvidia-ml-py is not installed (pip install nvidia-ml-py)"


# --- Metal: faked platforms and mlx ----------------------------------------------------


def fake_mlx(monkeypatch: pytest.MonkeyPatch, *, metal_available: bool) -> None:
    mlx = ModuleType("mlx")
    core = ModuleType("mlx.core")
    core.metal = SimpleNamespace(is_available=lambda: metal_available)  # type: ignore[attr-defined]
    mlx.core = core  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mlx", mlx)
    monkeypatch.setitem(sys.modules, "mlx.core", core)


@pytest.mark.parametrize(
    ("system", "machine", "reason"),
    [
        ("Linux", "x86_64", "not macOS (this is Linux)"),
        ("Windows", "AMD64", "not macOS (this is Windows)"),
        ("Darwin", "x86_64", "not Apple Silicon (x86_64)"),
    ],
)
def test_metal_platform_reasons(system: str, machine: str, reason: str) -> None:
    assert MetalBackend(system=system, machine=machine).probe() == Probe(available=False, reason=reason)


def test_metal_without_mlx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlx", None)
    monkeypatch.setitem(sys.modules, "mlx.core", None)
    probe = MetalBackend(system="Darwin", machine="arm64").probe()
    assert probe.reason == "mlx is not installed (pip install 'corral[metal]')"


def test_metal_unavailable_to_mlx(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_mlx(monkeypatch, metal_available=False)
    assert MetalBackend(system="Darwin", machine="arm64").probe().reason == "Metal is not available to mlx"


def test_metal_apple_silicon(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_mlx(monkeypatch, metal_available=True)
    sysctl = {"machdep.cpu.brand_string": "Apple M2 Max", "hw.memsize": str(64 * GIB)}
    monkeypatch.setattr(corral_backend_metal, "_sysctl", sysctl.get)
    probe = MetalBackend(system="Darwin", machine="arm64").probe()
    assert probe.available
    (gpu,) = probe.devices
    assert (gpu.backend, gpu.index, gpu.kind, gpu.name) == ("metal", 0, "gpu", "Apple M2 Max")
    assert gpu.total_memory == gpu.free_memory == 64 * GIB
    assert gpu.details == {"unified_memory": "true"}


def test_metal_survives_a_failing_sysctl(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_mlx(monkeypatch, metal_available=True)

    def missing(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError("sysctl")

    monkeypatch.setattr(subprocess, "run", missing)
    (gpu,) = MetalBackend(system="Darwin", machine="arm64").probe().devices
    assert (gpu.name, gpu.total_memory) == ("Apple Silicon GPU", 0)


# --- load(): the engine each backend picks, and precise refusals -------------------------


def fake_llama_cpp(monkeypatch: pytest.MonkeyPatch, *, offload: bool) -> None:
    llama_cpp = ModuleType("llama_cpp")
    llama_cpp.llama_supports_gpu_offload = lambda: offload  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "llama_cpp", llama_cpp)


@pytest.fixture(params=["cuda", "rocm", "metal"])
def available_backend(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dev_root: Path
) -> tuple[CudaBackend | RocmBackend | MetalBackend, str]:
    """Each backend with its hardware faked present, and the CMake flag of its llama.cpp build."""
    return faked_present(request.param, monkeypatch, tmp_path, dev_root)


def faked_present(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dev_root: Path
) -> tuple[CudaBackend | RocmBackend | MetalBackend, str]:
    if name == "cuda":
        monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(two_gpus()))
        return CudaBackend(), "-DGGML_CUDA=on"
    if name == "rocm":
        return RocmBackend(one_gpu_tree(tmp_path / "sys"), dev_root), "-DGGML_HIP=on"
    fake_mlx(monkeypatch, metal_available=True)
    return MetalBackend(system="Darwin", machine="arm64"), "-DGGML_METAL=on"


def test_load_without_a_gpu_build_says_how_to_install_one(
    available_backend: tuple[CudaBackend | RocmBackend | MetalBackend, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, flag = available_backend
    fake_llama_cpp(monkeypatch, offload=False)
    with pytest.raises(BackendUnavailable) as caught:
        backend.load(SPEC)
    message = str(caught.value)
    assert "built without GPU offload" in message
    assert f'CMAKE_ARGS="{flag}" pip install --force-reinstall --no-cache-dir llama-cpp-python' in message
    assert f"corral[{backend.name}]" in message


def test_load_without_llama_cpp_says_how_to_install_it(
    available_backend: tuple[CudaBackend | RocmBackend | MetalBackend, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, flag = available_backend
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(BackendUnavailable, match="llama-cpp-python is not installed") as caught:
        backend.load(SPEC)
    assert f'CMAKE_ARGS="{flag}"' in str(caught.value)


def test_load_with_a_gpu_build_offloads_the_planned_layers(
    available_backend: tuple[CudaBackend | RocmBackend | MetalBackend, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    import corral.engines.llamacpp.runner

    backend, _ = available_backend
    fake_llama_cpp(monkeypatch, offload=True)
    calls: list[tuple[LoadSpec, int]] = []
    monkeypatch.setattr(
        corral.engines.llamacpp.runner,
        "LlamaCppRunner",
        lambda spec, n_gpu_layers: calls.append((spec, n_gpu_layers)) or "runner",
    )
    assert backend.load(SPEC) == "runner"
    assert backend.load(dataclasses.replace(SPEC, num_gpu=12)) == "runner"
    assert [layers for _spec, layers in calls] == [-1, 12]


def fake_genai(monkeypatch: pytest.MonkeyPatch, *, cuda: bool) -> None:
    og = ModuleType("onnxruntime_genai")
    og.is_cuda_available = lambda: cuda  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "onnxruntime_genai", og)


def test_cuda_runs_an_onnx_folder_on_onnxruntime_genais_cuda_build(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import dataclasses

    import corral.engines.onnx.runner

    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(two_gpus()))
    (tmp_path / "genai_config.json").write_text("{}")
    backend = CudaBackend()
    gpus = backend.probe().devices
    spec = dataclasses.replace(SPEC, model_path=tmp_path, devices=(gpus[1],))
    fake_genai(monkeypatch, cuda=False)  # the CPU build lists no CUDA; the GPU is real (NVML found it)
    with pytest.raises(
        BackendUnavailable, match="onnxruntime-genai is a CPU build .pip install onnxruntime-genai-cuda"
    ):
        backend.load(spec)
    fake_genai(monkeypatch, cuda=True)
    calls: list[tuple[Path, str, int]] = []
    monkeypatch.setattr(
        corral.engines.onnx.runner, "OnnxRunner",
        lambda spec, provider, device_id: calls.append((spec.model_path, provider, device_id)) or "runner",
    )  # fmt: skip
    assert backend.load(spec) == "runner"
    assert calls == [(tmp_path, "cuda", gpus[1].index)]


@pytest.mark.parametrize("name", ["rocm", "metal"])
def test_an_onnx_folder_runs_on_the_cpu_where_genai_has_no_gpu_build(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dev_root: Path
) -> None:
    import dataclasses

    import corral.engines.onnx.runner

    backend, _ = faked_present(name, monkeypatch, tmp_path, dev_root)
    (tmp_path / "genai_config.json").write_text("{}")
    calls: list[LoadSpec] = []
    monkeypatch.setattr(corral.engines.onnx.runner, "OnnxRunner", lambda spec: calls.append(spec) or "runner")
    spec = dataclasses.replace(SPEC, model_path=tmp_path)
    assert backend.load(spec) == "runner" and calls == [spec]


def test_load_without_the_hardware_names_the_probe_reason(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable) as caught:
        RocmBackend(tmp_path).load(SPEC)
    assert str(caught.value).startswith("the rocm backend cannot run here: no AMD GPU found")
    assert caught.value.status_code == 400


# --- The real thing ---------------------------------------------------------------------


def real_backends() -> list[CudaBackend | RocmBackend | MetalBackend]:
    return [CudaBackend(), RocmBackend(), MetalBackend()]


def test_real_probes_never_raise_and_explain_themselves() -> None:
    for backend in real_backends():
        probe = backend.probe()
        assert probe == backend.probe()  # idempotent
        if probe.available:
            assert probe.devices and probe.reason == ""
            assert all(d.backend == backend.name and d.kind == "gpu" for d in probe.devices)
        else:
            assert probe.devices == () and probe.reason.strip()


@pytest.mark.skipif(
    platform.system() == "Darwin" or Path("/sys/class/kfd").exists() or any(Path("/dev").glob("nvidia[0-9]*")),
    reason="this host has an accelerator",
)
def test_this_gpu_less_linux_host_has_no_accelerator() -> None:
    probes = {b.name: b.probe() for b in real_backends()}
    assert not any(p.available for p in probes.values())
    assert probes["cuda"].reason.startswith(("NVIDIA driver not found (", "no NVIDIA GPU found"))
    assert probes["rocm"].reason == (
        "no AMD GPU found (/sys/class/kfd/kfd/topology does not exist: the amdgpu kernel driver is not loaded)"
    )
    assert probes["metal"].reason == f"not macOS (this is {platform.system()})"


def test_registration_through_the_hook_in_priority_order() -> None:
    plugins = Plugins(load_entry_points=False, modules=[corral_backend_metal, corral_backend_cuda, corral_backend_rocm])
    assert plugins.names() == ["cuda", "rocm", "metal"]
    assert [e.backend.priority for e in plugins.backends] == [40, 30, 20]
    assert plugins.failures == []


def test_importing_the_backends_stays_cheap() -> None:
    # The heavy libraries load inside probe()/load(), never when Corral discovers the plugins.
    code = (
        "import sys, corral_backend_cuda, corral_backend_rocm, corral_backend_metal\n"
        "heavy = {'pynvml', 'amdsmi', 'mlx', 'llama_cpp'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy())


# --- estimate(): the GPU backends plan over their GPUs and the host's memory -------------------


def test_cuda_estimates_a_split_over_its_gpus_and_the_host(nvml: FakeNvml, tiny_gguf: Path) -> None:
    import dataclasses

    backend = CudaBackend()
    gpus = backend.probe().devices
    estimate = backend.estimate(dataclasses.replace(SPEC, model_path=tiny_gguf, num_ctx=256), gpus)
    assert estimate is not None
    assert estimate.spec.num_gpu == 3 and len(estimate.spec.tensor_split) == 2  # 2 layers + output, 2 GPUs
    assert estimate.processor_label == "100% GPU"


def test_the_cpu_backend_refuses_main_gpu(tiny_gguf: Path) -> None:
    import dataclasses

    backend = CpuBackend()
    with pytest.raises(BadRequest, match="main_gpu=0 needs a GPU"):
        backend.estimate(dataclasses.replace(SPEC, model_path=tiny_gguf, main_gpu=0), backend.probe().devices)
