"""Minimal shim so that `python setup.py develop` and old pip versions work; metadata is in pyproject.toml."""

from setuptools import setup

setup()
