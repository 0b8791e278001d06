import os
import sys

# tests import helpers next to them (reference_focalnet) and the tools as modules
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tools"))
