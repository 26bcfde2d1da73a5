"""The service image installs docker/requirements.lock and docker/torch.txt, not pyproject.toml: a
dependency added or re-pinned in pyproject.toml without `sh docker/lock.sh` would build an image
that lacks it, so these checks fail until the lock is regenerated."""
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import ROOT

DOCKER = ROOT / "docker"
TORCH = {"torch", "torchvision"}  # installed from the torch index by the Dockerfile
SWAPS = {"opencv-python": "opencv-python-headless"}  # the image's headless OpenCV


def pins(path) -> dict[str, str | None]:
    """Package name -> pinned version (None when unpinned) of a requirements file."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, ver = line.partition("==")
            out[canonicalize_name(name)] = ver.split(";")[0].strip() or None
    return out


def image_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["serve"]]


def test_lock_pins_every_core_and_serve_dependency():
    lock = pins(DOCKER / "requirements.lock")
    missing = []
    for req in image_requirements():
        if req.name in TORCH:
            continue
        name = canonicalize_name(SWAPS.get(req.name, req.name))
        if name not in lock or not req.specifier.contains(lock[name], prereleases=True):
            missing.append(f"{req} (lock: {lock.get(name)})")
    assert not missing, f"run `sh docker/lock.sh`: the lock does not satisfy {missing}"


def test_lock_leaves_out_torch_its_cuda_packages_and_opencv_python():
    lock = pins(DOCKER / "requirements.lock")
    excluded = set(pins(DOCKER / "excludes.txt"))
    assert "opencv-python" in excluded and "triton" in excluded
    assert not (set(lock) & (excluded | TORCH))


def test_torch_pins_match_pyproject():
    wanted = {r.name: str(r.specifier) for r in image_requirements() if r.name in TORCH}
    assert {n: f"=={v}" for n, v in pins(DOCKER / "torch.txt").items()} == wanted
