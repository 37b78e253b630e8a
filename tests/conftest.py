import os

# Everything in the tests runs offline: the text tower is the MiniLM copy shipped on PyPI.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

# Two cores (the CI machine's) shared by the suite's workers (README command 2: pytest -n 2): one
# intra-op thread per worker there, and one in each child process a test starts (OMP_NUM_THREADS,
# read by torch at start): two training runs side by side, each with torch's default of a thread
# per core, took about three times as long as one alone. In a single process: two threads, and
# children keep torch's default, as a user's run does.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, 2 // _WORKERS))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(session, config, items):
    """On several workers, the files with end-to-end runs (marked slow) first: the long runs then share
    the cores with each other and the short tests fill the end, instead of the last two long runs
    ending the suite side by side. Within a file, and among the other files, the order is pytest's;
    in a single process (a developer's run, tools/mutants.py's) nothing moves."""
    if _WORKERS == 1:
        return
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: False (a slow file) first


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of small tensor work: on a loaded 2-core machine a second
    thread only adds contention (20x slower measured on [2000, 32] element-wise masking)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tokenizer():
    import open_clip

    return open_clip.get_tokenizer("unimlip-tiny")


@pytest.fixture
def tiny_model():
    import open_clip

    torch.manual_seed(0)
    return open_clip.create_model("unimlip-tiny", output_dict=True)


@pytest.fixture
def captions(tokenizer):
    texts = [
        "CT of the head showing a small round hyperdense lesion in the left upper region",
        "chest radiograph with a large oval hypodense opacity in the right lower zone",
        "MR slice of the brain without focal findings",
        "ultrasound image showing an irregular bright nodule near the centre",
    ]
    return tokenizer(texts)


@pytest.fixture(autouse=True)
def _plugin_run_state_cleared():
    """A test that parses trainer arguments in-process leaves the plugin's per-run state set
    (``seam.patches``: the parsed run's args, with its ``--unimlip-*`` values); clear it so that the
    next test's ``create_model_and_transforms`` does not apply another run's flags."""
    yield
    import sys

    patches = sys.modules.get("openclip_unimlip.seam.patches")
    if patches is not None:
        patches._training_run = None
