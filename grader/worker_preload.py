"""Everything a grading worker imports before its first task; trusted side only (learner code never runs here).

Imported once by the process that a LocalCluster's grading workers are forked from (multiprocessing's forkserver,
set up by grader.cluster.connect), so N workers on one machine pay these imports (~3 core-s: torch, transformers'
model and loading modules, pytest, the graders' helpers and the references) once instead of N times; a remote
`dask worker` imports them itself when GradingSetup starts (grader.worker). Before importing, the forkserver starts
a template for its workers' sandbox zygotes (grader/sandbox/launch.py), which imports beside it.

When its workers grade on the CPU (grader.cluster.MODELS_ENV names the batch's device), it then loads the bundled
models and this machine's forward memo (grader.reference_cache.warm_memo) for all of them: each worker used to load
them in its first grade (~1.5 core-s each: the SmolLM2 tokenizer twice, the weights, transformers' loading
machinery; about 2.3 s on a busy 2-core VM), and forked workers now share the weights' pages copy-on-write (never
written: inference only) instead of holding a copy each. Only what is ready: SmolLM2 before its fp32 cache exists
and a memo not yet computed are left to the workers, as before. Nothing for a GPU, and no thread, no CUDA: a process
forked after CUDA's driver was initialised can't use CUDA, so torch asks NVML whether a GPU exists
(PYTORCH_NVML_BASED_CUDA_CHECK), which initialises nothing, and the loads run on the one thread the workers use.
"""
import gc
import importlib
import os

from llmstudy.grader.cluster import MODELS_ENV, OWN_GROUP_ENV
from llmstudy.grader.sandbox import launch

if os.environ.get(OWN_GROUP_ENV) == "1":
    os.setpgid(0, 0)                 # this forkserver, the template and every worker forked from it

if os.environ.get(launch.TEMPLATE_ENV) == "1":
    launch.start_template()          # the workers' zygote template imports beside us, on the other core

os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

import torch  # noqa: E402,F401
import transformers  # noqa: E402,F401
import transformers.models.bert.modeling_bert  # noqa: E402,F401  all-MiniLM-L6-v2
import transformers.models.distilbert.modeling_distilbert  # noqa: E402,F401  the positional-encoding oracle
import transformers.models.llama.modeling_llama  # noqa: E402,F401  SmolLM2

from llmstudy.grader import model_server, runner, worker  # noqa: E402,F401
from llmstudy.grader.batch import graded_exercises  # noqa: E402
from llmstudy.grader.sandbox import client  # noqa: E402,F401

for _exercise in graded_exercises():
    importlib.import_module(f"llmstudy.solutions.{_exercise.id}")

from llmstudy.grader.cluster import code_digest  # noqa: E402

IMPORTED_CODE = code_digest()        # what these imports were: an existing cluster's client checks it (check_code)


def _load_models(device: str) -> None:
    """The models and the memo for workers grading on `device`, if that is the CPU (see the module docstring)."""
    from llmstudy import models
    from llmstudy.grader.reference_cache import warm_memo
    if models.resolve_device(device) != "cpu":
        return
    torch.set_num_threads(1)         # the workers' setting: the memo's keys and the references name the thread count
    transformers.utils.logging.disable_progress_bar()   # no "Loading weights" bars in the grading terminal, no tqdm thread
    for name in models.ready():
        models.load(name, "cpu")
    warm_memo(build=False)


if os.environ.get(MODELS_ENV):
    _load_models(os.environ[MODELS_ENV])

# Everything above lives as long as the workers: out of the collector's sight (gc.freeze), a worker's full collections
# no longer walk these ~490k objects (0.55-1.06 s -> 0.32-0.64 s of collection per worker over a 16-student class,
# gc.callbacks, 4 alternating runs), nor write to the pages it shares with this process.
gc.freeze()
FROZEN = gc.get_freeze_count()   # all a worker ever freezes while it goes on (tests/test_cluster.py checks it)
