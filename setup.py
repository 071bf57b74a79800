"""Maps the design card's folders to distinctive import names (agent/ -> fleetnas_agent, host/ -> fleetnas).

pyproject.toml holds all metadata; this file only lists the packages, because setuptools' automatic
discovery cannot rename a folder.
"""
from setuptools import find_packages, setup

ROOTS = {"fleetnas_agent": "agent", "fleetnas": "host"}

packages = []
for name, folder in ROOTS.items():
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=ROOTS)
