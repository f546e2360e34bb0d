"""The bundled sets' shapes that sites use without loading the sets agree with the sets."""

import subprocess
import sys

import pytest

from fedinfra.config.job import Dataset
from fedinfra.data.shapes import BUNDLED_SHAPES, bundled_shape
from fedinfra.errors import DataError
from fedinfra.site.data import _load_split


@pytest.mark.parametrize("name", sorted(BUNDLED_SHAPES))
def test_each_static_shape_is_the_loaded_sets_shape(name):
    split = _load_split(name, 0.2, 0)
    assert bundled_shape(name) == (split.num_features, split.num_classes)


def test_every_dataset_the_job_accepts_has_a_shape():
    assert set(Dataset.__args__) == set(BUNDLED_SHAPES)


def test_an_unknown_set_is_one_line_naming_the_known_ones():
    with pytest.raises(DataError, match="breast_cancer"):
        bundled_shape("mnist")


def test_the_builtin_task_is_built_without_scikit_learn():
    """A slim edge install has no scikit-learn: building the job's task must not import it."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'sklearn' or name.startswith('sklearn.'):\n"
        "            raise ImportError('sklearn blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from fedinfra.config import JobSpec\n"
        "from fedinfra.site.tasks import job_model, job_task\n"
        "job = JobSpec.model_validate({'data': {'dataset': 'wine'}})\n"
        "model, _ = job_model(job, job_task(job))\n"
        "print(sum(p.numel() for p in model.parameters()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip()) > 0
