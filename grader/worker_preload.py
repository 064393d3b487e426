"""Everything a grading worker imports before its first task; trusted side only (learner code never runs here).

Imported once by the process that a LocalCluster's grading workers are forked from (multiprocessing's forkserver,
set up by grader.cluster.connect), so N workers on one machine pay these imports (~3 core-s: torch, transformers'
model and loading modules, pytest, the graders' helpers and the references) once instead of N times; a remote
`dask worker` imports them itself when GradingSetup starts (grader.cluster). Before importing, the forkserver starts
a template for its workers' sandbox zygotes (grader/sandbox/launch.py), which imports beside it. Otherwise
importing is all it does: no model, no thread, no CUDA. A process forked after CUDA's driver was initialised can't
use CUDA, so should anything here ask whether a GPU exists, torch asks NVML instead (PYTORCH_NVML_BASED_CUDA_CHECK),
which initialises nothing.
"""
import importlib
import os

from llmstudy.grader.cluster import OWN_GROUP_ENV
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

from llmstudy.grader import model_server, runner  # noqa: E402,F401
from llmstudy.grader.batch import graded_exercises  # noqa: E402
from llmstudy.grader.sandbox import client  # noqa: E402,F401

for _exercise in graded_exercises():
    importlib.import_module(f"llmstudy.solutions.{_exercise.id}")

from llmstudy.grader.cluster import code_digest  # noqa: E402

IMPORTED_CODE = code_digest()        # what these imports were: an existing cluster's client checks it (check_code)
