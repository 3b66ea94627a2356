"""pytest setup for the simulator's own tests: make tests/e2e (the azsim harness) importable
and locate the shared test data ($AZS_SOURCE_DIR/../shared/testdata)."""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("AZS_SOURCE_DIR", os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "e2e"))
TESTDATA = os.path.join(SOURCE_DIR, "..", "shared", "testdata")


def load_testdata(name):
    """Load one JSON file of the shared test data."""
    with open(os.path.join(TESTDATA, name)) as f:
        return json.load(f)
