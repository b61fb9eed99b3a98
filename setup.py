"""Which packages go into a build: found on disk, so none can be left out (the rest is in pyproject.toml).

Every package under `rodpo_dist/`, and `kernels/` with its subpackages installed as `rodpo_kernels` (a
top-level `kernels` package would shadow the Hugging Face `kernels` package that transformers probes for).
`.ci/wheel_check.sh` installs the built wheel without `-e` and runs the command line from it.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["rodpo_dist", "rodpo_dist.*"]),
              "rodpo_kernels", *(f"rodpo_kernels.{name}" for name in find_packages("kernels"))],
    package_dir={"rodpo_kernels": "kernels"},
)
