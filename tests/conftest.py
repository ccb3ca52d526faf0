import contextlib
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Without a GPU, tests/test_triton_kernels.py runs the Triton kernels in Triton's interpreter, which
# must be chosen before anything imports triton (pytorch_lightning and diffusers do, through
# torch._dynamo). It changes nothing else: CPU tensors reach the kernels only where a test also
# sets LIFT3D_TRITON_ON_CPU=1 (lift3d.ops.fast_path).
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# scripts/test.sh runs the suite on pytest-xdist workers (one per core by default): each worker and the
# processes it starts (launch.py runs, DDP ranks, Ray jobs) use one torch thread unless a test says
# otherwise, so that the workers do not oversubscribe the cores.
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture
def repo_root() -> Path:
    return REPO


# ---------------------------------------------------------------- tiny diffusion models (built once per session)
@pytest.fixture(scope="session")
def tiny_sd_path(tmp_path_factory) -> Path:
    """A Stable-Diffusion-2.1-base-shaped folder with tiny random weights (lift3d.models.tiny_factory):
    64² images <-> 4×8×8 latents, [B, 77, 32] text embeddings. Load it like the real model."""
    from lift3d.models.tiny_factory import make_tiny_sd

    return make_tiny_sd(tmp_path_factory.mktemp("tiny-models") / "tiny-sd", seed=0)


@pytest.fixture(scope="session")
def tiny_zero123_path(tmp_path_factory) -> Path:
    """A zero123-xl-diffusers-shaped folder with tiny random weights (64² images, 8-channel UNet)."""
    from lift3d.models.tiny_factory import make_tiny_zero123

    return make_tiny_zero123(tmp_path_factory.mktemp("tiny-models") / "tiny-zero123", seed=0)


@contextlib.contextmanager
def _torch_threads(n: int):
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_torch_thread():
    """Tiny models run fastest on one thread (two threads on a busy 2-core machine spin-wait)."""
    with _torch_threads(1):
        yield


@pytest.fixture(scope="module")
def one_torch_thread_per_module():
    """one_torch_thread for every test of a module: `pytestmark = pytest.mark.usefixtures(...)`."""
    with _torch_threads(1):
        yield


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a long end-to-end test (minutes on 2 CPU cores); skip with -m 'not slow'")
